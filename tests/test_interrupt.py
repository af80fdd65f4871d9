"""Issue 25, item 2 (its Ctrl-C half): every long-running command answers SIGINT with one line ``bbh: interrupted...``
on stderr, no traceback, exit status 130, and no half-written file."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from fake_task import FakeTask, fake_config

import bbh.data
import bbh.experiments.reproduce as reproduce_mod
import bbh.experiments.toy as toy_mod
import bbh.experiments.uci as uci_mod
import bbh.reports.runs as runs_mod
from bbh.cli import main
from bbh.experiments.config import dumps, validate


def one_interrupted_line(err: str) -> str:
    """The single line the CLI printed on Ctrl-C, last, after nothing but the thread line (no traceback)."""
    lines = err.splitlines()
    assert err.endswith("\n") and lines[-1].startswith("bbh: interrupted") and "Traceback" not in err, err
    assert all(line.startswith("bbh: ") and " thread" in line for line in lines[:-1]), err
    return lines[-1][len("bbh: "):]


def _interrupt(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


class _Repro:
    """A Reproduction whose plan or make is interrupted."""

    @classmethod
    def open(cls, *args: Any, **kwargs: Any) -> _Repro:
        return cls()

    plan = plan_lines = make = staticmethod(_interrupt)


@pytest.mark.parametrize("command", ["toy", "uci", "reproduce", "reproduce --plan", "evaluate"])
def test_every_long_command_answers_ctrl_c_with_one_line_and_130(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setattr(toy_mod, "run_toy", _interrupt)
    monkeypatch.setattr(uci_mod, "run_uci", _interrupt)
    monkeypatch.setattr(reproduce_mod, "Reproduction", _Repro)
    monkeypatch.setattr(runs_mod, "evaluate_run", _interrupt)
    argv = {"toy": ["toy", "--out", str(tmp_path / "toy")],
            "uci": ["uci", "--data-dir", str(tmp_path), "--out", str(tmp_path / "uci")],
            "reproduce": ["reproduce", "table1", "--budget", "smoke", "--out", str(tmp_path / "rep")],
            "reproduce --plan": ["reproduce", "all", "--budget", "paper", "--plan", "--out", str(tmp_path / "rep")],
            "evaluate": ["evaluate", str(tmp_path)]}[command]
    assert main(argv) == 130
    line = one_interrupted_line(capsys.readouterr().err)
    if command == "toy":
        assert line.endswith("toy.png and toy.json are written only once every method has trained: rerun the same "
                             "command")
    if command == "uci":
        assert "finished cells are kept in" in line


def test_bbh_train_interrupted_says_how_to_continue_in_one_line(tmp_path, monkeypatch, capsys):
    task = FakeTask()
    task.interrupt_at_call = 3
    monkeypatch.setattr(bbh.data, "load_task", lambda name, data_dir=None, **kwargs: task)
    config = tmp_path / "map.toml"
    config.write_text(dumps(validate(fake_config("map", 2))))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--no-progress"]) == 130
    line = one_interrupted_line(capsys.readouterr().err)
    assert line.endswith(f"continue with: bbh train --resume {run}")
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_an_interrupted_toy_writes_nothing(tmp_path, monkeypatch, capsys):
    real = toy_mod.train_toy_method

    def train(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "bbh":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(toy_mod, "train_toy_method", train)
    out = tmp_path / "toy"
    assert main(["toy", "--out", str(out), "--methods", "map,bbh", "--no-hmc", "--no-progress"]) == 130
    one_interrupted_line(capsys.readouterr().err)
    assert list(out.iterdir()) == []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_stops_a_real_bbh_toy_in_one_line(tmp_path):
    """A real ``bbh toy`` in a subprocess: once BbH's training has started (its plan line, printed because stderr is
    a pipe), SIGINT; the command stops at the end of the step with one line, exit status 130, no files."""
    out = tmp_path / "toy"
    env = {**os.environ, "BBH_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.Popen([sys.executable, "-m", "bbh.cli", "toy", "--methods", "bbh", "--no-hmc", "--out",
                             str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                            preexec_fn=_default_sigint)  # a background job's children start with SIGINT ignored
    assert proc.stderr is not None
    seen = b""
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while b"train bbh: plan" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen.decode()
            if selector.select(timeout=1.0):
                seen += os.read(proc.stderr.fileno(), 65536)
        proc.send_signal(signal.SIGINT)
        _, tail = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (seen + tail).decode().splitlines(keepends=True)
    assert proc.returncode == 130, "".join(err)
    assert err[0].startswith("bbh: 1 thread (small networks") and err[1].startswith("train bbh: plan")
    progress = [line for line in err[2:] if line.startswith("train bbh: step")]  # at most one every 30 s
    assert one_interrupted_line("".join(line for line in err[2:] if line not in progress)).startswith("interrupted;")
    assert list(out.iterdir()) == []
