"""Issue 25, item 1: one owner of the thread policy (``bbh.threads``), ``--threads`` on every command that trains,
and an explicit choice of the user (``OMP_NUM_THREADS``, ``torch.set_num_threads``) respected."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

import bbh.experiments.reproduce as reproduce_mod
import bbh.experiments.toy as toy_mod
import bbh.experiments.uci as uci_mod
from bbh import threads
from bbh.cli import main
from bbh.core.threads import ThreadChoice, available_cores, choose_threads, parse_threads, use_threads

CORES = available_cores()


@pytest.fixture(autouse=True)
def _no_omp(monkeypatch: pytest.MonkeyPatch):
    """Every test starts without OMP_NUM_THREADS and leaves torch's count as it found it."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- the policy, pure -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, requested, cores, environ, expected", [
    ("small", None, 8, {}, 1),                         # small networks: one thread per process
    ("large", None, 8, {}, 8),                         # large ones: every core this process may use
    ("large", None, 1, {}, 1),
    ("small", 3, 8, {}, 3),                            # --threads wins
    ("large", 2, 8, {"OMP_NUM_THREADS": "4"}, 2),      # ... also over OMP_NUM_THREADS
    ("large", 16, 4, {}, 4),                           # ... but never more busy threads than cores
    ("small", None, 8, {"OMP_NUM_THREADS": "4"}, 4),   # the user's environment wins over the policy
    ("large", None, 8, {"OMP_NUM_THREADS": "2,1"}, 2),  # nested OpenMP: the first level
    ("small", None, 8, {"OMP_NUM_THREADS": "many"}, 1),  # not a count: the policy
])
def test_choose_threads_follows_the_documented_precedence(kind, requested, cores, environ, expected):
    choice = choose_threads(kind, requested, cores=cores, environ=environ)
    assert choice.threads == expected
    assert choice.explicit == (requested is not None or choice.reason.startswith("OMP_NUM_THREADS"))


def test_choose_threads_says_why():
    assert choose_threads("small", cores=2, environ={}).line() == (
        "bbh: 1 thread (small networks; --threads N to change)")
    assert choose_threads("large", cores=2, environ={}).line() == (
        "bbh: 2 threads (the 2 cores this process may use; --threads N to change)")
    assert choose_threads("large", 8, cores=2, environ={}).line() == (
        "bbh: 2 threads (--threads 8, capped at the 2 cores this process may use)")
    assert choose_threads("small", cores=2, environ={"OMP_NUM_THREADS": "2"}).line() == (
        "bbh: 2 threads (OMP_NUM_THREADS=2)")


@pytest.mark.parametrize("bad", [0, -1, "0", "-3", "two", "1.5", "", 1.0, True, None])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        parse_threads(bad)
    if bad is not None:
        with pytest.raises(ValueError):
            choose_threads("small", bad, cores=2, environ={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown kind"):
        choose_threads("medium", cores=2, environ={})  # type: ignore[arg-type]


def test_parse_threads_accepts_counts():
    assert parse_threads("3") == 3 and parse_threads(" 2 ") == 2 and parse_threads(1) == 1


# ---- the scope: set, restore, nest, respect the user ----------------------------------------------------------
def test_use_threads_sets_and_restores(monkeypatch):
    torch.set_num_threads(CORES)
    monkeypatch.setattr(threads, "_baseline", CORES)
    with use_threads("small") as choice:
        assert choice.threads == 1 and torch.get_num_threads() == 1
        with use_threads("large") as inner:  # a policy choice outside does not bind the scope inside
            assert inner.threads == CORES and torch.get_num_threads() == CORES
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == CORES


def test_an_explicit_outer_choice_binds_the_scopes_inside(monkeypatch):
    monkeypatch.setattr(threads, "_baseline", torch.get_num_threads())
    with use_threads("large", 1):  # bbh reproduce --threads 1: its toy (small) keeps 1, a "large" inside too
        with use_threads("small") as inner:
            assert inner == ThreadChoice(1, "--threads 1", explicit=True)
        with use_threads("large") as inner:
            assert inner.threads == 1 and torch.get_num_threads() == 1


def test_a_torch_set_num_threads_call_of_the_user_is_respected(monkeypatch):
    monkeypatch.setattr(threads, "_baseline", 1)  # torch's count at import bbh
    torch.set_num_threads(2)  # the user's call, after import bbh
    with use_threads("small") as choice:
        assert choice.threads == 2 and choice.reason == "set with torch.set_num_threads"
        assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the environment says 1, torch is at 2: the environment wins
    with use_threads("small") as choice:
        assert choice.threads == 1 and torch.get_num_threads() == 1


def test_announce_prints_each_choice_once_and_only_when_announcing(monkeypatch):
    monkeypatch.setattr(threads, "_baseline", torch.get_num_threads())
    out = io.StringIO()
    with use_threads("small"):
        threads.announce()  # the library says nothing
    assert out.getvalue() == ""
    with threads.announcing(out), use_threads("small"):
        threads.announce()
        threads.announce()
        with use_threads("large", 1):
            threads.announce()  # the same count: said already
        with use_threads("large", 2):
            threads.announce()  # another count (on 2 cores or more): said
        threads.announce()  # back to 1: said again
    small = "bbh: 1 thread (small networks; --threads N to change)"
    assert out.getvalue().splitlines() == ([small, "bbh: 2 threads (--threads 2)", small] if CORES > 1 else [small])


# ---- the command line -------------------------------------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch) -> list[int]:
    """torch.set_num_threads, recording every count it is called with (and still setting it)."""
    calls: list[int] = []
    real = torch.set_num_threads

    def record(n: int) -> None:
        calls.append(n)
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", record)
    return calls


def _stub_runners(monkeypatch, seen: dict[str, int]) -> None:
    """The inner runner of every command that trains records the thread count it runs with (and announces,
    as the real ones do when work starts)."""

    def run_toy(out: Any, **kwargs: Any) -> dict[str, Any]:
        threads.announce()
        seen["toy"] = torch.get_num_threads()
        return {"methods": {}}

    def run_uci(root: Any, out: Any, **kwargs: Any) -> dict[str, Any]:
        threads.announce()
        seen["uci"] = torch.get_num_threads()
        raise FileNotFoundError("stop here")

    class Repro:
        @classmethod
        def open(cls, *args: Any, **kwargs: Any) -> Repro:
            return cls()

        def make(self, name: str) -> list[Path]:
            threads.announce()
            seen["reproduce"] = torch.get_num_threads()
            return []

    def train(self: Any) -> dict[str, Any]:
        threads.announce()
        seen["train"] = torch.get_num_threads()
        raise ValueError("stop here")

    import bbh.experiments.run as run_mod

    monkeypatch.setattr(toy_mod, "run_toy", run_toy)
    monkeypatch.setattr(uci_mod, "run_uci", run_uci)
    monkeypatch.setattr(reproduce_mod, "Reproduction", Repro)
    monkeypatch.setattr(run_mod.Run, "__init__", lambda self, *a, **k: setattr(self, "run_dir", Path("x")))
    monkeypatch.setattr(run_mod.Run, "train", train)


def _argv(command: str, tmp_path: Path) -> list[str]:
    return {"toy": ["toy", "--out", str(tmp_path / "toy"), "--no-hmc"],
            "uci": ["uci", "--data-dir", str(tmp_path), "--out", str(tmp_path / "uci")],
            "train": ["train", "--task", "mnist", "--method", "map", "--run-dir", str(tmp_path / "run")],
            "reproduce": ["reproduce", "table1", "--budget", "smoke", "--out", str(tmp_path / "rep")]}[command]


@pytest.mark.parametrize("command, default", [("toy", 1), ("uci", 1), ("train", CORES), ("reproduce", CORES)])
def test_every_command_that_trains_chooses_its_threads_and_takes_threads(tmp_path, monkeypatch, recorded, capsys,
                                                                          command, default):
    monkeypatch.setattr(threads, "_baseline", torch.get_num_threads())
    before = torch.get_num_threads()
    seen: dict[str, int] = {}
    _stub_runners(monkeypatch, seen)
    main(_argv(command, tmp_path) + ["--no-progress"])
    assert seen[command] == default
    reason = "small networks" if command in ("toy", "uci") else f"the {CORES} core"
    assert f"bbh: {default} thread{'' if default == 1 else 's'} ({reason}" in capsys.readouterr().err
    assert torch.get_num_threads() == before  # restored when the command ends
    recorded.clear()
    main(_argv(command, tmp_path) + ["--no-progress", "--threads", "1"])
    assert seen[command] == 1 and (1 in recorded or before == 1)
    assert "bbh: 1 thread (--threads 1)" in capsys.readouterr().err
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen.clear()
    main(_argv(command, tmp_path) + ["--no-progress"])
    assert seen[command] == 1 and "bbh: 1 thread (OMP_NUM_THREADS=1)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["toy", "uci", "train", "reproduce"])
@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_a_bad_threads_value_is_one_line_before_anything_runs(tmp_path, monkeypatch, recorded, capsys, command, bad):
    seen: dict[str, int] = {}
    _stub_runners(monkeypatch, seen)
    assert main(_argv(command, tmp_path) + ["--threads", bad]) == 2
    assert capsys.readouterr().err == f"bbh: --threads must be a whole number >= 1, got {bad!r}\n"
    assert seen == {} and recorded == []
    assert list(tmp_path.iterdir()) == []  # no output folder made
