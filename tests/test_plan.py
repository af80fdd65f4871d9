"""``bbh reproduce ... --plan``: estimates from stored full-size step times (and a probe of one small run where the
machine differs), in seconds, without building a full-size run or reading a data set; one line per run as it
goes, a total, what the estimate rests on; and the estimate of a small row against its measured training time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_data import make_fake_mnist

import bbh.experiments.costs as costs
import bbh.experiments.run as run_mod
import bbh.models.registry as registry
import bbh.posteriors as posteriors
from bbh.cli import main
from bbh.data import load_task
from bbh.experiments.paper_tables import NAMES, TABLES
from bbh.experiments.reproduce import (
    BUDGETS,
    ReproBudget,
    Reproduction,
    _laplace_tables,
    _plan_rows,
    duration,
    row_config,
)

ESTIMATE_FACTOR = 3.0
"""How far the plan's estimate of a small run's training time may be from the time measured: the estimate is the
stored step time (measured idle, synthetic images, the Trainer alone) at two other batch sizes, scaled by a probe
timed a moment earlier, and the run is a real one (files, the Run's bookkeeping) on cores other jobs may share."""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache: the plan reads only the measurements shipped with bbh."""
    monkeypatch.setenv("BBH_CACHE_DIR", str(tmp_path / "cache"))
    costs._PROBES.clear()
    return tmp_path / "cache"


@pytest.fixture
def no_full_size(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """Fails the test if a run, a data set or any model but the probe's (MAP on LeNet-5, 431,080 parameters) is
    built; returns what was built."""
    built: list[tuple[str, str, int]] = []
    create, build_model = posteriors.create, registry.build_model

    def guarded_build(options: Any, num_classes: int) -> Any:
        assert options["name"] == "lenet5", f"the plan built a {options['name']}"
        return build_model(options, num_classes)

    def guarded_create(method: str, model: Any, **options: Any) -> Any:
        assert method == "map", f"the plan built a full-size {method}"
        out = create(method, model, **options)
        built.append((method, type(model).__name__, sum(p.numel() for p in out.parameters())))
        return out

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the plan built a run or loaded a data set")

    monkeypatch.setattr(posteriors, "create", guarded_create)
    monkeypatch.setattr(registry, "build_model", guarded_build)
    monkeypatch.setattr(run_mod.Run, "__init__", refuse)
    monkeypatch.setattr(Reproduction, "task", refuse)
    monkeypatch.setattr("bbh.data.load_task", refuse)
    return built


def _lines(repro: Reproduction, name: str) -> list[str]:
    return list(repro.plan_lines(name))


@pytest.mark.parametrize("cpu", ["same", "other"])
def test_every_plan_is_quick_on_an_empty_data_dir_and_builds_nothing_full_size(
        tmp_path: Path, cache: Path, no_full_size: list[tuple[str, str, int]], monkeypatch: pytest.MonkeyPatch,
        cpu: str) -> None:
    """Every table and figure: one line per run (as it goes: a generator), the Laplace rows and the toy named, a
    total, what the estimates rest on, the data said to be missing; on another CPU the stored times are scaled by a
    probe of MAP on LeNet-5, the only model built."""
    stored = json.loads(costs.STORED_FILE.read_text())["machines"][0]["machine"]
    if cpu == "other":
        monkeypatch.setattr(costs, "cpu_name", lambda: "Some Other CPU")
    else:  # this machine as the one measured: stored times used as they are, nothing built
        monkeypatch.setattr(costs, "cpu_name", lambda: stored["name"])
        monkeypatch.setattr("torch.get_num_threads", lambda: stored["threads"])
    empty = tmp_path / "no-data"
    repro = Reproduction.open(tmp_path / "out", "paper", data_dir=empty, device="cpu")
    start = time.perf_counter()
    for name in ("all", *NAMES):
        lines = _lines(repro, name)
        runs = _plan_rows(name)
        header = next(i for i, line in enumerate(lines) if line.startswith("run "))
        body = lines[header + 1:]
        assert [line.split()[0] for line in body[:len(runs)]] == [row_config(r, BUDGETS["paper"])["experiment"]
                                                                   ["name"] for r in runs]
        notes = body[len(runs):-1]
        assert len(notes) == len(_laplace_tables(name)) + (name in ("all", "fig1")), notes
        assert body[-1].startswith("total: ")
        if runs:
            assert f"total: {len(runs)} of {len(runs)} runs to train, estimated " in body[-1]
            assert "not estimated" not in body[-1]
            assert lines[0].startswith("data: ") and "missing" in lines[0] and "(no such folder)" in lines[0]
            assert any(line.startswith("estimates: training steps") and "measured at full size" in line
                       for line in lines)
            for line in body[:len(runs)]:
                assert (" stored " if cpu == "same" else " scaled ") in line, line
                assert line.split()[-2:] == ["not", "started"]
    assert time.perf_counter() - start < 30.0
    assert not empty.exists()  # nothing created where the data should be
    if cpu == "same":
        assert no_full_size == []
    else:  # one probe in all (kept for the process), of the cheapest run
        assert no_full_size == [("map", "LeNet5", 431_080)]


def test_the_paper_plan_estimates_every_run_and_a_total_in_hours(cache: Path, tmp_path: Path,
                                                                 no_full_size: list[tuple[str, str, int]]) -> None:
    repro = Reproduction.open(tmp_path / "out", "paper", data_dir=tmp_path / "none", device="cpu")
    plan = repro.plan("all", estimate=True)
    assert len(plan) == 21 and all(p["steps_left"] == p["steps"] > 0 for p in plan)
    assert all(p["estimated_seconds"] > p["seconds_per_step"] * p["steps"] > 0 for p in plan)
    by_run = {p["run"]: p for p in plan}
    # the layer-wise hypernet costs more per step than MAP on the same network
    assert by_run["mnist-bbh"]["seconds_per_step"] > 5 * by_run["mnist-map"]["seconds_per_step"]


@pytest.mark.parametrize("key", ["map", "mc-dropout"])
def test_a_small_rows_estimate_is_within_a_factor_of_its_measured_training_time(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, key: str
) -> None:
    """Table 3's MAP row (the cheapest run, also the probe) and MC-Dropout row (scaled by MAP's probe) at a tiny
    budget, on fake MNIST files: 1 epoch of 2,560 images in batches of 64 (40 steps; the stored times are at 25 and
    100). The estimate is made first, then the row is trained as ``bbh reproduce`` trains it, and the Trainer's
    time compared. The machine is taken for another one, so that the stored (idle) times are scaled by the probe
    timed now: on a busy machine steps take many times as long as idle, and the probe sees that load. One thread,
    so that other jobs on the cores slow the probe and the run alike (with two, torch's threads wait for each other
    by turns that vary from one second to the next)."""
    monkeypatch.setattr(costs, "cpu_name", lambda: "Some Other CPU")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    root = tmp_path / "data"
    make_fake_mnist(root, n_train=2560, n_test=64, n_outliers=64)
    task = load_task("mnist", root, download=False, validation=False)
    tiny = ReproBudget("tiny", epochs={"mnist": 1, "cifar5": 1}, train={"mnist": 2560, "cifar5": 128},
                       test={"mnist": 64, "cifar5": 64}, samples=2, adv_images=8, ensemble_members=2,
                       weight_samples=10, batch_size=64)
    repro = Reproduction.open(tmp_path / "out", tiny, tasks={"mnist": task}, device="cpu", log=lambda _: None)
    row = next(r for r in TABLES["table3"].rows if r.key == key)
    (entry,) = [p for p in repro.plan("table3", estimate=True) if p["run"] == f"mnist-{key}"]
    assert entry["steps"] == 40 and entry["batch_size"] == 64 and entry["basis"] == "scaled"
    run_dir = repro.ensure_trained(row)
    measured = json.loads((run_dir / "final.json").read_text())["train_seconds"]
    ratio = entry["estimated_seconds"] / measured
    print(f"{entry['run']}: estimated {entry['estimated_seconds']:.2f} s, measured {measured:.2f} s")
    assert 1 / ESTIMATE_FACTOR < ratio < ESTIMATE_FACTOR, (entry, measured)


def test_step_costs_are_affine_in_the_batch_and_proportional_to_ensemble_members() -> None:
    cost = costs.StepCost((25, 100), (0.5, 2.0), 3.0, "d", members=10)
    assert cost.seconds_per_step(100) == pytest.approx(2.0)
    assert cost.seconds_per_step(64) == pytest.approx(0.5 + 0.02 * 39)
    assert cost.seconds_per_step(100, members=5) == pytest.approx(1.0)
    flat = costs.StepCost((25, 100), (2.0, 1.9), 0.0, "d")  # noise: never cheaper per step at larger batches
    assert flat.seconds_per_step(400) == pytest.approx(2.0)
    assert costs.StepCost((100,), (1.0,), 0.0, "d").seconds_per_step(50) == pytest.approx(0.5)


def test_a_changed_configuration_is_not_estimated_from_its_old_measurement() -> None:
    config = row_config(next(r for r in TABLES["table3"].rows if r.key == "bbb"), BUDGETS["paper"])
    basis = costs.Basis(costs.Machine("cpu", "x", 1),
                        runs={"mnist-bbb": costs.StepCost((100,), (1.0,), 0.0, costs.cost_digest(config))})
    assert basis.cost("mnist-bbb", config)[2] == "stored"
    changed = {**config, "method": {**config["method"], "kl": "nn-full"}}
    assert basis.cost("mnist-bbb", changed) == (None, 1.0, "changed")
    longer = {**config, "train": {**config["train"], "epochs": 3, "lr": 0.1}}  # epochs and lr change no step
    assert basis.cost("mnist-bbb", longer)[2] == "stored"
    assert basis.cost("mnist-map", config) == (None, 1.0, "not measured")


def test_measure_stores_per_machine_and_a_later_plan_uses_it(tmp_path: Path, cache: Path) -> None:
    """--measure's building block on the cheapest run (one timed step per batch size), stored in the user's file
    beside another machine's entry; the plan then says 'stored' for this machine."""
    config = row_config(next(r for r in TABLES["table3"].rows if r.key == "map"), BUDGETS["paper"])
    cost = costs.measure(config, "cpu", steps=1)
    assert cost.batches == (25, 100) and all(s > 0 for s in cost.seconds) and cost.params == 431_080
    path = costs.user_file()
    costs.store(path, costs.Machine("cpu", "elsewhere", 8), {"mnist-map": cost})
    costs.store(path, costs.this_machine("cpu"), {"mnist-map": cost}, {"load_average": 1.5})
    assert len(json.loads(path.read_text())["machines"]) == 2
    basis = costs.load_basis("cpu", files=(path,))
    assert basis.ratio == 1.0 and "on this machine" in basis.lines[0] and "load average 1.5" in basis.lines[0]
    assert basis.cost("mnist-map", config)[:2] == (costs.StepCost.from_record(cost.record()), 1.0)


def test_no_stored_times_for_the_device_says_how_to_measure(tmp_path: Path, cache: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(costs, "this_machine", lambda device: costs.Machine("cuda", "Some GPU", 2))
    basis = costs.load_basis("cpu")
    assert basis.runs == {} and "--measure" in basis.lines[0]
    repro = Reproduction.open(tmp_path / "out", "paper", data_dir=tmp_path / "none", device="cpu")
    lines = _lines(repro, "table1")
    assert "none estimated" in lines[-1] and all(" not measured " in line for line in lines[-4:-1])


def test_the_command_prints_the_plan_and_ctrl_c_is_one_line(tmp_path: Path, cache: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            no_full_size: list[tuple[str, str, int]],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["reproduce", "table3", "--budget", "paper", "--plan", "--out", str(tmp_path / "out"), "--data-dir",
            str(tmp_path / "none"), "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bbh reproduce table3 --budget paper: planned runs")
    assert out[1].startswith("data: mnist missing") and out[-1].startswith("total: 7 of 7 runs to train, estimated")

    def interrupted(self: Any, name: str, measure: bool = False) -> Any:
        yield "data: ..."
        raise KeyboardInterrupt

    monkeypatch.setattr(Reproduction, "plan_lines", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bbh: interrupted while planning; nothing was trained"]


def test_durations_read_as_a_person_would_say_them() -> None:
    assert [duration(s) for s in (0.2, 45, 600, 5 * 3600, 100 * 3600)] == ["< 1 s", "45 s", "10 min", "5.0 h",
                                                                            "100 h"]
    assert duration(1310 * 3600, days=True) == "1,310 h (55 days)"
