"""``bbh reproduce``: the paper's tables and figures at the smoke budget on fake data, resume after a kill, the
budget's configurations (KL schedule compressed with the epochs), and the plan."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from test_data import make_fake_cifar, make_fake_mnist

import bbh.experiments.run as run_mod
from bbh.core.elbo import scale_schedule_spec
from bbh.data import load_task
from bbh.experiments.paper_tables import NAMES, TABLES
from bbh.experiments.reproduce import (
    BUDGETS,
    Reproduction,
    budget_statement,
    row_config,
    run_name,
)


def _row(table: str, key: str) -> Any:
    return next(r for r in TABLES[table].rows if r.key == key)


def test_kl_schedule_is_compressed_with_the_epochs() -> None:
    """3 of MNIST's 100 epochs: 'weight 0 until epoch 5, 1 from 20' becomes 0 until 0.15, 1 from 0.6."""
    assert scale_schedule_spec({"kind": "linear", "start": 5, "length": 15, "unit": "epoch"}, 0.03) == {
        "kind": "linear", "start": pytest.approx(0.15), "length": pytest.approx(0.45), "unit": "epoch"}
    assert scale_schedule_spec("none", 0.03) == "none" and scale_schedule_spec(0.5, 0.03) == 0.5
    cpu = row_config(_row("table3", "bbh"), BUDGETS["cpu"])
    assert cpu["train"]["epochs"] == 3 and cpu["eval"]["samples"] == 30
    assert cpu["train"]["kl_anneal"]["start"] == pytest.approx(0.15)
    assert cpu["train"]["kl_anneal"]["length"] == pytest.approx(0.45)
    assert cpu["method"]["noise"] == "independent" and cpu["method"]["layout"] == "layerwise"
    paper = row_config(_row("table4", "mnf"), BUDGETS["paper"])
    assert paper["train"]["epochs"] == 200 and paper["train"]["kl_anneal"]["start"] == pytest.approx(20)
    assert row_config(_row("table3", "ensemble"), BUDGETS["cpu"])["method"]["members"] == 5
    assert row_config(_row("table3", "ensemble"), BUDGETS["paper"])["method"]["members"] == 10
    assert "weight 0 until epoch 0.15, 1 from epoch 0.6" in budget_statement("mnist", BUDGETS["cpu"])


def test_rows_with_one_configuration_share_one_run() -> None:
    """Table 2's 'independent, d = 1' is Table 3's BbH (the shipped mnist-bbh), Table 1's layer-wise is Table 2's
    'shared, d = 1', Table 5's analytic row is Table 3's BbB."""
    assert run_name(_row("table2", "independent-d1")) == run_name(_row("table3", "bbh")) == "mnist-bbh"
    assert run_name(_row("table5", "analytic")) == run_name(_row("table3", "bbb")) == "mnist-bbb"
    assert run_name(_row("table1", "single")) == "mnist-bbh_layout=single_noise=shared"
    assert run_name(_row("table1", "layerwise")) == run_name(_row("table2", "shared-d1"))
    names = [run_name(r) for t in ("table1", "table2", "table5") for r in TABLES[t].rows]
    assert len(set(names)) == len(names) - 1  # only the layer-wise / shared-d1 pair coincides


def test_another_budget_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    Reproduction.open(tmp_path / "out", "smoke")
    with pytest.raises(ValueError, match="made with budget 'smoke'; choose another --out for budget 'cpu'"):
        Reproduction.open(tmp_path / "out", "cpu")
    with pytest.raises(ValueError, match="unknown budget"):
        Reproduction.open(tmp_path / "other", "huge")


@pytest.fixture(scope="module")
def fake_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("data")
    make_fake_mnist(root, n_train=128, n_test=64, n_outliers=64)
    make_fake_cifar(root, per_batch=52, n_test=128)
    return {"mnist": load_task("mnist", root, download=False, validation=False),
            "cifar5": load_task("cifar5", root, download=False)}


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory: pytest.TempPathFactory, fake_tasks: dict[str, Any]) -> dict[str, Any]:
    """Table 3 killed in its third run, resumed, then ``all``: what every test below reads."""
    out = tmp_path_factory.mktemp("reproduce")
    trained: list[str] = []
    kill = [True]
    original = run_mod.Run.train

    def train(self: Any) -> Any:  # counts trainings; the third of the first pass is killed after its first step
        trained.append(self.run_dir.name)
        if len(trained) == 3 and kill[0]:
            kill[0] = False
            def stop(record: dict[str, Any]) -> None:
                if record.get("event") == "step":
                    raise KeyboardInterrupt
            self.trainer.callbacks.append(stop)
        return original(self)

    mp = pytest.MonkeyPatch()
    mp.setattr(run_mod.Run, "train", train)
    logs: list[str] = []
    repro = Reproduction.open(out, "smoke", tasks=fake_tasks, log=logs.append)
    with pytest.raises(KeyboardInterrupt):
        repro.make("table3")
    killed = trained[2]
    first_two = {name: (out / "runs" / name / "model.pt").stat().st_mtime_ns for name in trained[:2]}
    status = json.loads((out / "runs" / killed / "status.json").read_text())
    trained.clear()
    repro = Reproduction.open(out, "smoke", tasks=fake_tasks, log=logs.append)
    repro.make("table3")
    resumed = list(trained)
    written = repro.make("all")
    mp.undo()
    return {"out": out, "killed": killed, "first_two": first_two, "status": status, "resumed": resumed,
            "logs": logs, "written": written}


def test_a_killed_reproduction_resumes_without_redoing_finished_runs(smoke_out: dict[str, Any]) -> None:
    out, killed = smoke_out["out"], smoke_out["killed"]
    assert smoke_out["status"]["status"] == "interrupted"
    assert smoke_out["resumed"][0] == killed  # the killed run is the first one trained again ...
    assert not set(smoke_out["first_two"]) & set(smoke_out["resumed"])  # ... the finished ones are not
    for name, mtime in smoke_out["first_two"].items():
        assert (out / "runs" / name / "model.pt").stat().st_mtime_ns == mtime
    assert f"  continuing {killed} (done: 0 epochs and 1 steps)" in smoke_out["logs"]  # killed after step 1
    metrics = [json.loads(line) for line in (out / "runs" / killed / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["epoch"] == 0  # one epoch in all, not two
    assert json.loads((out / "runs" / killed / "final.json").read_text())["steps"] == 2  # 128 images, batch 64


def test_all_writes_every_table_and_figure(smoke_out: dict[str, Any]) -> None:
    out = smoke_out["out"]
    for name in NAMES:
        if name.startswith("table"):
            text = (out / f"{name}.md").read_text()
            table = TABLES[name]
            assert all(f"| {row.label} |" in text for row in table.rows)
            assert "Budget `smoke`" in text and "## The paper's claims at this budget" in text
            rows = list(csv.DictReader((out / f"{name}.csv").open()))
            assert [r["row"] for r in rows] == [r.key for r in table.rows]
            for r, row in zip(rows, table.rows):
                assert 0.0 <= float(r["error_percent"]) <= 100.0
                if row.paper is not None:
                    assert float(r["paper_error_percent"]) == row.paper[0]
    for png in ("fig3.png", "fig4.png", "fig1/toy.png", "fig6a-mnf.png", "fig6b-bbh.png", "fig7a-mnf.png",
                "fig7b-bbh.png", "fig8a-mnf.png", "fig8b-bbh.png", "fig9a-mnf.png", "fig9b-bbh.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    assert "| Last-layer Laplace (not in the paper) |" in (out / "table4.md").read_text()
    laplace = json.loads((out / "runs" / "cifar5-laplace" / "eval" / "results.json").read_text())
    assert laplace["prior_precision"] > 0 and laplace["test"]["n"] == 64  # the test set cut to the budget


def test_the_plan_names_each_run_once_with_its_steps(smoke_out: dict[str, Any], fake_tasks: dict[str, Any]) -> None:
    repro = Reproduction.open(smoke_out["out"], "smoke", tasks=fake_tasks)
    plan = repro.plan("table2")
    assert [p["run"] for p in plan] == [run_name(r) for r in TABLES["table2"].rows]
    assert all(p["status"] == "finished" and p["steps"] == 2 for p in plan)  # 128 images, batch 64, 1 epoch
    paper = Reproduction.open(smoke_out["out"] / "paper", "paper").plan("table3")  # no data needed for a plan
    assert {p["method"] for p in paper} == {"map", "ensemble", "bbb", "mc-dropout", "mnf", "bbh"}
    assert all(p["epochs"] == 100 and p["steps"] == 100 * 550 and p["status"] == "not started" for p in paper)
    given = Reproduction.open(smoke_out["out"] / "paper-given", "paper", tasks=fake_tasks).plan("table3")
    assert all(p["steps"] == 100 * 1 for p in given)  # the steps of the data given: 128 images, batch 100
