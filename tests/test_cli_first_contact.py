"""Issue "first contact": what a new user met in the first hour, each reproduced and fixed.

* an unwritable output folder: every command stops before computing, in one line, exit status 2;
* ``--resume`` with ``--set``: what may change is applied, the rest refused by name;
* training MNIST needs no notMNIST;
* ``bbh evaluate`` tells a folder that is not a run from a run that has not finished;
* runtime errors are one line ``bbh: ...`` without the usage;
* ``--resume`` uses the run's own data directory; a run killed before its first checkpoint starts again;
* progress bars by default on a terminal only;
* ``model.pt`` without optimizer state, optionally in bfloat16; ``checkpoint.pt`` optionally deleted at the end.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fake_task import FakeTask, fake_config

import bbh.data
import bbh.experiments.run as run_mod
import bbh.experiments.toy as toy_mod
import bbh.reports.runs as runs_mod
from bbh.cli import main
from bbh.core.io import OutputNotWritableError, ensure_writable
from bbh.experiments.config import dumps, load_config, validate
from bbh.experiments.run import Run
from bbh.reports.runs import evaluate_run, load_run

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
root_ignores_permissions = pytest.mark.skipif(ROOT, reason="root ignores file permissions (tested with a mock too)")


# ---- helpers ------------------------------------------------------------------------------------------------
@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):
    """``block(path)``: from now on creating a file below ``path`` fails as on a read-only file system."""
    blocked: list[Path] = []
    real = tempfile.mkstemp

    def mkstemp(*args: Any, dir: Any = None, **kwargs: Any) -> tuple[int, str]:  # noqa: A002
        if dir is not None and any(Path(dir).resolve().is_relative_to(b) for b in blocked):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return lambda path: blocked.append(Path(path).resolve())


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """``bbh.data.load_task`` hands out FakeTasks (``tasks`` first, in order) and records its calls."""
    calls: list[dict[str, Any]] = []
    tasks: list[FakeTask] = []

    def load_task(name: str, data_dir: Any = None, **kwargs: Any) -> FakeTask:
        calls.append({"name": name, "data_dir": data_dir, **kwargs})
        return tasks.pop(0) if tasks else FakeTask()

    monkeypatch.setattr(bbh.data, "load_task", load_task)
    return SimpleNamespace(calls=calls, tasks=tasks)


def config_file(tmp_path: Path, method: str = "map", epochs: int = 2, **options: Any) -> str:
    path = tmp_path / f"{method}-{epochs}.toml"
    path.write_text(dumps(validate(fake_config(method, epochs, **options))))
    return str(path)


def one_line_error(err: str) -> str:
    """The single line ``bbh: ...`` the CLI printed (and nothing else: no usage, no traceback)."""
    assert err.startswith("bbh: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "usage:" not in err and "Traceback" not in err
    return err[len("bbh: "):-1]


def finished_run(path: Path, method: str = "map", epochs: int = 2, **options: Any) -> Path:
    Run(fake_config(method, epochs, **options), path, task=FakeTask(), progress=False).train()
    return path


def interrupted_run(path: Path, method: str = "map", at_call: int = 9) -> Path:
    task = FakeTask()
    task.interrupt_at_call = at_call
    with pytest.raises(KeyboardInterrupt):
        Run(fake_config(method, 3), path, task=task, progress=False).train()
    return path


def params(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


# ---- 3. unwritable output -----------------------------------------------------------------------------------
def test_ensure_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    out = ensure_writable(tmp_path / "a" / "b")
    assert out == tmp_path / "a" / "b" and out.is_dir() and not list(out.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputNotWritableError, match="cannot write to .*file: it exists and is not a directory"):
        ensure_writable(tmp_path / "file")


def test_ensure_writable_names_the_folder_and_the_reason(tmp_path, read_only):
    read_only(tmp_path / "ro")
    with pytest.raises(OutputNotWritableError) as info:
        ensure_writable(tmp_path / "ro" / "x")
    assert str(info.value) == f"cannot write to {tmp_path / 'ro' / 'x'}: Read-only file system"
    assert isinstance(info.value, OSError) and info.value.errno == errno.EROFS


@root_ignores_permissions
def test_ensure_writable_on_a_real_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for target in (ro, ro / "sub"):
            with pytest.raises(OutputNotWritableError, match=f"cannot write to {target}: Permission denied"):
                ensure_writable(target)
    finally:
        ro.chmod(0o700)


def _record(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    """Replace ``module.name`` by a function that records its calls and raises (it must not be reached)."""
    calls: list[Any] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError(f"{name} ran although the output is not writable")

    monkeypatch.setattr(module, name, record)
    return calls


def test_train_with_unwritable_run_dir_stops_before_loading_data(tmp_path, read_only, fake_data, capsys):
    read_only(tmp_path / "ro")
    run_dir = tmp_path / "ro" / "x"
    assert main(["train", "--config", config_file(tmp_path), "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert one_line_error(capsys.readouterr().err) == f"cannot write to {run_dir}: Read-only file system"
    assert fake_data.calls == []  # no data loaded, no model built


def test_toy_with_unwritable_out_stops_before_training(tmp_path, read_only, monkeypatch, capsys):
    calls = _record(monkeypatch, toy_mod, "train_toy_method")
    read_only(tmp_path / "ro")
    out = tmp_path / "ro" / "toy"
    assert main(["toy", "--out", str(out), "--no-hmc"]) == 2
    assert one_line_error(capsys.readouterr().err) == f"cannot write to {out}: Read-only file system"
    assert calls == []


@pytest.mark.parametrize("all_runs", [False, True])
def test_evaluate_of_an_unwritable_run_stops_before_evaluating(tmp_path, read_only, fake_data, monkeypatch, capsys,
                                                               all_runs):
    run = finished_run(tmp_path / "runs" / "a")
    calls = _record(monkeypatch, runs_mod, "evaluate")
    read_only(run)
    assert main(["evaluate", *([str(run.parent), "--all"] if all_runs else [str(run)]), "--no-progress"]) == 2
    assert one_line_error(capsys.readouterr().err) == f"cannot write to {run}: Read-only file system"
    assert calls == [] and fake_data.calls == []
    assert not (run / "eval").exists()


def test_compare_into_an_unwritable_folder(tmp_path, read_only, capsys):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text(json.dumps(
        {"run": "fake-map", "task": "fake", "method": "map",
         "test": {"error_percent": 1.0, "entropy_auc": 0.9, "ece": 0.01, "nll": 0.1}}))
    read_only(tmp_path / "ro")
    out = tmp_path / "ro" / "cmp"
    assert main(["compare", str(run), "--out", str(out)]) == 2
    assert one_line_error(capsys.readouterr().err) == f"cannot write to {out}: Read-only file system"
    assert not list(out.iterdir())


def test_resume_of_an_unwritable_run_stops_before_reading_the_checkpoint(tmp_path, read_only, fake_data,
                                                                         monkeypatch, capsys):
    run = interrupted_run(tmp_path / "run")
    calls = _record(monkeypatch, run_mod, "read_checkpoint")
    read_only(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert one_line_error(capsys.readouterr().err) == f"cannot write to {run}: Read-only file system"
    assert calls == [] and fake_data.calls == []


@root_ignores_permissions
def test_train_and_toy_on_a_real_read_only_directory(tmp_path, fake_data, monkeypatch, capsys):
    calls = _record(monkeypatch, toy_mod, "train_toy_method")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["train", "--config", config_file(tmp_path), "--run-dir", str(ro / "x"), "--no-progress"]) == 2
        assert one_line_error(capsys.readouterr().err) == f"cannot write to {ro / 'x'}: Permission denied"
        assert main(["toy", "--out", str(ro), "--no-hmc"]) == 2
        assert one_line_error(capsys.readouterr().err) == f"cannot write to {ro}: Permission denied"
    finally:
        ro.chmod(0o700)
    assert fake_data.calls == [] and calls == []


def test_toy_runs_when_the_hmc_cache_is_not_writable(tmp_path, read_only, monkeypatch, capsys):
    seen: list[Path] = []

    def toy_hmc(seed: int = 0, cache_dir: Any = None) -> dict[str, Any]:
        seen.append(Path(cache_dir))
        ensure_writable(cache_dir)
        summary = {"rmse": 60.0, "std_inside": 4.0, "std_outside": 10.0, "seconds": 0.1}
        return {"summary": summary, "settings": {}, "cached": True, "samples": [[0.0] * 500] * 3}

    monkeypatch.setattr(toy_mod, "toy_hmc", toy_hmc)
    read_only(tmp_path / "cache")
    report = toy_mod.run_toy(tmp_path / "toy", methods=("map",), hmc_cache_dir=tmp_path / "cache")
    assert "hmc" in report and seen and seen[0] != tmp_path / "cache"
    assert "the HMC reference is not cached" in capsys.readouterr().err


# ---- 4. resume with --set -----------------------------------------------------------------------------------
def test_resume_with_more_epochs_continues_exactly(tmp_path):
    reference = finished_run(tmp_path / "ref", "bbh", epochs=4, hidden=[8])
    run = finished_run(tmp_path / "run", "bbh", epochs=2, hidden=[8])
    before = (run / "model.pt").stat().st_mtime_ns
    resumed = Run.resume(run, task=FakeTask(), progress=False, overrides=["train.epochs=4"])
    assert resumed.epoch == 2
    resumed.train()
    ref = torch.load(reference / "model.pt", weights_only=True)["method"]
    for name, value in torch.load(run / "model.pt", weights_only=True)["method"].items():
        assert torch.equal(value, ref[name]), name
    assert (run / "model.pt").stat().st_mtime_ns != before
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert load_config(run / "config.toml")["train"]["epochs"] == 4


def test_resume_refuses_what_cannot_change_and_says_when_nothing_is_left(tmp_path):
    run = finished_run(tmp_path / "run")
    with pytest.raises(ValueError, match=r"cannot change method\.prior_scale, train\.lr when resuming") as info:
        Run.resume(run, task=FakeTask(), overrides=["train.lr=0.1", "method.prior_scale=2.0", "train.epochs=5"])
    assert "train.epochs, eval.samples" in str(info.value)
    with pytest.raises(ValueError, match="train.epochs=1 is fewer than the 2 epochs"):
        Run.resume(run, task=FakeTask(), overrides=["train.epochs=1"])
    with pytest.raises(ValueError, match="has already finished its 2 epochs; to train it further"):
        Run.resume(run, task=FakeTask(), overrides=["train.epochs=2"])  # the same value changes nothing
    resumed = Run.resume(run, task=FakeTask(), progress=False, overrides=["eval.samples=2"])
    resumed.train()  # no new epoch, a new evaluation
    assert json.loads((run / "final.json").read_text())["eval_samples"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_resume_applies_set_and_refuses_in_one_line(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", config_file(tmp_path), "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3", "--no-progress"]) == 0
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--lr", "0.5", "--epochs", "4"]) == 2
    assert one_line_error(capsys.readouterr().err).startswith(f"cannot change train.lr when resuming {run}")
    assert main(["train", "--resume", str(run)]) == 2
    assert "has already finished its 3 epochs" in one_line_error(capsys.readouterr().err)
    with pytest.raises(SystemExit):  # an argument error: the usage
        main(["train", "--resume", str(run), "--config", "mnist-map"])
    assert "usage:" in capsys.readouterr().err


# ---- 4. MNIST without notMNIST ------------------------------------------------------------------------------
def test_training_mnist_needs_only_mnist(tmp_path, capsys):
    from test_data import write_idx_pair

    data = tmp_path / "data"
    write_idx_pair(data / "mnist", "train", 10, 1)
    write_idx_pair(data / "mnist", "t10k", 4, 2)
    run = tmp_path / "run"
    assert main(["train", "--config", "mnist-map", "--set", "train.epochs=1", "--set", "train.batch_size=5",
                 "--set", "data.validation=false", "--samples", "1", "--data-dir", str(data),
                 "--run-dir", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    assert (run / "model.pt").is_file() and sorted(p.name for p in data.iterdir()) == ["mnist"]
    assert json.loads((run / "status.json").read_text())["data_dir"] == str(data.absolute())


# ---- 4. evaluate: not a run vs not finished -----------------------------------------------------------------
def test_evaluate_tells_a_data_folder_from_an_unfinished_run(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    assert main(["evaluate", str(data)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"{data} is not a bbh run directory (no config.toml, status.json or model.pt; bbh train writes those)")
    run = interrupted_run(tmp_path / "run")
    assert main(["evaluate", str(run)]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"{run} has not finished (status: interrupted at epoch 1); continue it with: bbh train --resume {run}")
    finished_run(tmp_path / "done")  # a folder of runs
    assert main(["evaluate", str(tmp_path)]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        f"it holds 1 finished run(s): evaluate them all with bbh evaluate --all {tmp_path}")
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert one_line_error(capsys.readouterr().err) == f"{tmp_path / 'nope'} does not exist"


def test_a_run_dir_that_holds_a_run_is_a_one_line_error(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    args = ["train", "--config", config_file(tmp_path, epochs=1), "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"{run} already holds a run; continue it with: bbh train --resume {run} (or choose another --run-dir)")


# ---- 4. resume: the run's data directory; a run killed before its first checkpoint --------------------------
def test_resume_uses_the_runs_own_data_directory(tmp_path, fake_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = FakeTask()
    task.interrupt_at_call = 9
    fake_data.tasks.append(task)
    assert main(["train", "--config", config_file(tmp_path, epochs=3), "--run-dir", "run", "--data-dir", "data",
                 "--no-progress"]) == 130
    assert "continue with: bbh train --resume run" in capsys.readouterr().err
    data = tmp_path / "data"
    assert json.loads((tmp_path / "run" / "status.json").read_text())["data_dir"] == str(data)
    assert fake_data.calls[0]["data_dir"] == data and fake_data.calls[0]["outliers"] is False
    monkeypatch.chdir(tmp_path / "run")  # from elsewhere: the recorded path is absolute
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert fake_data.calls[1]["data_dir"] == data
    evaluate_run(tmp_path / "run", adversarial=False, posterior_plots=False, progress=False)  # bbh evaluate too
    assert fake_data.calls[2]["data_dir"] == str(data) and fake_data.calls[2].get("outliers", True)


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from fake_task import FakeTask, fake_config
from bbh.experiments.run import Run

class Killed(FakeTask):
    def train_transform(self, x, generator=None):
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train_transform(x, generator)

Run(fake_config("bbh", hidden=[8]), {run_dir!r}, task=Killed(), progress=False).train()
"""


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent), run_dir=str(run)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -9, result.stderr[-2000:]
    assert (run / "config.toml").is_file() and not (run / "checkpoint.pt").exists()
    assert json.loads((run / "status.json").read_text())["status"] == "running"
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "has no checkpoint (it stopped before the end of its first epoch): training it from the beginning" \
        in capsys.readouterr().err
    reference = finished_run(tmp_path / "ref", "bbh", epochs=3, hidden=[8])
    ref = torch.load(reference / "model.pt", weights_only=True)["method"]
    for name, value in torch.load(run / "model.pt", weights_only=True)["method"].items():
        assert torch.equal(value, ref[name]), name


# ---- 5. progress --------------------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("flags, tty, expected", [([], True, True), ([], False, False),
                                                  (["--no-progress"], True, False), (["--progress"], False, True)])
def test_progress_follows_the_terminal_unless_asked(tmp_path, monkeypatch, flags, tty, expected):
    seen: dict[str, Any] = {}

    def run_toy(out: Any, **kwargs: Any) -> dict[str, Any]:
        seen["toy"] = kwargs["progress"]
        return {"methods": {}}

    def evaluate_run(run: Any, data_dir: Any, **kwargs: Any) -> dict[str, Any]:
        seen["evaluate"] = kwargs["progress"]
        raise ValueError("stop here")

    monkeypatch.setattr(toy_mod, "run_toy", run_toy)
    monkeypatch.setattr(runs_mod, "evaluate_run", evaluate_run)
    monkeypatch.setattr(sys, "stderr", _Terminal() if tty else io.StringIO())
    assert main(["toy", "--out", str(tmp_path), *flags]) == 0
    assert main(["evaluate", str(tmp_path), *flags]) == 2
    assert seen == {"toy": expected, "evaluate": expected}


@pytest.mark.parametrize("flags, expected", [([], (500, None)),
                                             (["--batch-size", "100", "--chunk-size", "8"], (100, 8))])
def test_evaluate_passes_batch_and_chunk_sizes(tmp_path, monkeypatch, flags, expected):
    seen: list[tuple[Any, Any]] = []

    def evaluate_run(run: Any, data_dir: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append((kwargs["batch_size"], kwargs["chunk_size"]))
        raise ValueError("stop here")

    monkeypatch.setattr(runs_mod, "evaluate_run", evaluate_run)
    assert main(["evaluate", str(tmp_path), "--no-progress", *flags]) == 2
    assert seen == [expected]


def test_evaluate_refuses_a_chunk_size_below_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(tmp_path), "--chunk-size", "0"])
    assert stop.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err


def test_toy_shows_its_progress(tmp_path, capsys):
    toy_mod.run_toy(tmp_path, methods=("map",), hmc=False, progress=True)
    err = capsys.readouterr().err
    assert "bbh toy" in err and "train map" in err


# ---- 5. artefact size ---------------------------------------------------------------------------------------
def _bigger_bbh(epochs: int = 1, **train: Any) -> dict[str, Any]:
    config = fake_config("bbh", epochs=epochs, hidden=[32])
    config["model"]["hidden"] = [64]
    config["train"].update(train)
    return config


def test_model_pt_holds_no_optimizer_state_and_bfloat16_halves_it(tmp_path):
    sizes = {}
    for dtype in ("float32", "bfloat16"):
        run = tmp_path / dtype
        r = Run(_bigger_bbh(model_dtype=dtype), run, task=FakeTask(), progress=False)
        r.train()
        model = torch.load(run / "model.pt", weights_only=True)
        assert set(model) == {"config", "method", "num_classes"}
        own = r.method.state_dict()
        assert set(model["method"]) == set(own)  # the method's state and nothing else (no optimizer moments)
        for k, v in model["method"].items():
            assert v.dtype == (torch.bfloat16 if dtype == "bfloat16" and own[k].is_floating_point() else own[k].dtype)
        sizes[dtype] = (run / "model.pt").stat().st_size
        sizes[f"checkpoint {dtype}"] = (run / "checkpoint.pt").stat().st_size
    assert 0.45 < sizes["bfloat16"] / sizes["float32"] < 0.6, sizes
    assert sizes["checkpoint float32"] > 2.5 * sizes["float32"], sizes  # + Adam's two moments
    method, config = load_run(tmp_path / "bfloat16")
    assert config["train"]["model_dtype"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in method.parameters())
    full = evaluate_run(tmp_path / "float32", task=FakeTask(), n_samples=8, adversarial=False,
                        posterior_plots=False, progress=False)
    half = evaluate_run(tmp_path / "bfloat16", task=FakeTask(), n_samples=8, adversarial=False,
                        posterior_plots=False, progress=False)
    assert abs(half["test"]["error_percent"] - full["test"]["error_percent"]) <= 5.0
    assert abs(half["test"]["nll"] - full["test"]["nll"]) < 0.05
    print(f"fake BbH run: model.pt float32 {sizes['float32']} B, bfloat16 {sizes['bfloat16']} B, "
          f"checkpoint.pt {sizes['checkpoint float32']} B")


def test_keep_checkpoint_false_deletes_it_at_the_end_only(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", config_file(tmp_path, epochs=2), "--run-dir", str(run), "--no-progress",
                 "--no-keep-checkpoint", "--model-dtype", "bfloat16"]) == 0
    config = load_config(run / "config.toml")
    assert config["train"]["keep_checkpoint"] is False and config["train"]["model_dtype"] == "bfloat16"
    assert not (run / "checkpoint.pt").exists() and (run / "model.pt").is_file() and (run / "final.json").is_file()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert "did not keep its checkpoint (train.keep_checkpoint = false)" in one_line_error(capsys.readouterr().err)
    r = evaluate_run(run, task=FakeTask(), n_samples=2, adversarial=False, posterior_plots=False, progress=False)
    assert r["test"]["error_percent"] < 20
    # interrupted, a run keeps its checkpoint whatever the setting: it is needed to continue
    task = FakeTask()
    task.interrupt_at_call = 9
    with pytest.raises(KeyboardInterrupt):
        Run(fake_config("map", 3) | {"train": {**fake_config()["train"], "keep_checkpoint": False}},
            tmp_path / "b", task=task, progress=False).train()
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    with pytest.raises(ValueError, match="train.model_dtype must be one of 'float32', 'bfloat16'"):
        validate(fake_config() | {"train": {"model_dtype": "float16"}})
