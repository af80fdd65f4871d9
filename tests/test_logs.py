"""Issue 25, item 3: without a terminal (nohup, a scheduler, CI) training prints a plan line and a line per epoch
(at most one per 30 s, and within long epochs one per 30 s) with an ETA; progress bars stay on terminals."""

from __future__ import annotations

import io
import re
import sys
from typing import Any

import pytest
import torch
from fake_task import FakeTask, fake_config

import bbh
import bbh.data
from bbh.cli import main
from bbh.core.threads import available_cores
from bbh.experiments.config import dumps, validate
from bbh.training.progress import LineProgress, LineSettings, duration, log_lines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _method() -> Any:
    return bbh.create("map", bbh.models.MLP(2, 3, hidden=(8,)))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 2, generator=g), torch.randint(0, 3, (64,), generator=g)


def test_without_a_terminal_fit_prints_a_plan_and_a_line_per_epoch_with_an_eta(capsys):
    with log_lines(interval=0):  # every epoch (the default allows one line per 30 s)
        bbh.Trainer(_method(), epochs=3, progress=False, device="cpu").fit(_data(), batch_size=16)
    lines = capsys.readouterr().err.splitlines()
    threads = torch.get_num_threads()
    assert lines[0] == (f"train map: plan 3 epochs x 4 steps, 12 steps in all, {threads} thread"
                        f"{'' if threads == 1 else 's'}; a line per epoch")
    assert [re.match(r"train map: epoch (\d)/3 step (\d+)/12: loss [\d.]+ nll [\d.]+ kl [\d.]+ kl_weight 1 train_acc "
                     r"[\d.]+ \([\d.]+ s this epoch\); [\d.]+ s elapsed, (ETA [\d.]+ s|done)$", line).groups()
            for line in lines[1:]] == [("1", "4", "ETA"), ("2", "8", "ETA"), ("3", "12", "done")] or lines


def test_lines_are_rare_for_short_epochs_but_the_first_and_last_are_always_there(capsys):
    with log_lines():  # 30 s: these epochs take milliseconds
        bbh.Trainer(_method(), epochs=5, progress=False, device="cpu").fit(_data(), batch_size=16)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and "plan" in lines[0] and "epoch 1/5 step 4/20" in lines[1]
    assert "epoch 5/5 step 20/20" in lines[2] and lines[2].endswith("done")


def test_a_run_limited_by_steps_counts_steps():
    out = io.StringIO()
    with log_lines(out, interval=0):
        bbh.Trainer(_method(), steps=3, progress=False, device="cpu").fit(_data())  # full batch: 1 step per epoch
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train map: plan 3 steps, 1 per epoch, ")
    assert [line.split(":")[1].strip() for line in lines[1:]] == ["step 1/3", "step 2/3", "step 3/3"]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_long_epoch_gets_a_line_every_interval_with_running_means_and_an_eta():
    out, clock = io.StringIO(), _Clock()
    lines = LineProgress("train bbh", total_steps=200, steps_per_epoch=100, epochs=2,
                         settings=LineSettings(out, 30.0), clock=clock)
    lines.plan()
    sums: dict[str, float] = {}
    for step in range(1, 101):
        clock.now = step * 1.0  # 1 s a step: a 100-s epoch
        sums = {"nll": sums.get("nll", 0.0) + 2.0, "kl": 0.0, "_count": float(step)}
        lines.step(0, step, step, sums)
    lines.epoch({"epoch": 0, "step": 100, "nll": 2.0, "kl": 0.0, "seconds": 100.0}, last=False)
    printed = out.getvalue().splitlines()
    assert printed[1:] == [
        "train bbh: epoch 1/2 step 30/200 (30/100 of the epoch): nll 2 kl 0; 30 s elapsed, ETA 2 min 50 s",
        "train bbh: epoch 1/2 step 60/200 (60/100 of the epoch): nll 2 kl 0; 1 min 00 s elapsed, ETA 2 min 20 s",
        "train bbh: epoch 1/2 step 90/200 (90/100 of the epoch): nll 2 kl 0; 1 min 30 s elapsed, ETA 1 min 50 s",
        "train bbh: epoch 1/2 step 100/200: nll 2 kl 0 (1 min 40 s this epoch); 1 min 40 s elapsed, ETA 1 min 40 s"]


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (9.96, "10.0 s"), (42.4, "42 s"), (185, "3 min 05 s"),
                                           (7620, "2 h 07 min")])
def test_durations_read_well(seconds, text):
    assert duration(seconds) == text


def test_with_a_terminal_the_bar_alone(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with log_lines():
        bbh.Trainer(_method(), epochs=2, progress=True, device="cpu").fit(_data(), batch_size=16)
    assert "train map" in err.getvalue() and "plan" not in err.getvalue() and "ETA" not in err.getvalue()


# ---- bbh train ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bbh.data, "load_task", lambda name, data_dir=None, **kwargs: FakeTask())


def _train_argv(tmp_path: Any, *flags: str) -> list[str]:
    config = tmp_path / "map.toml"
    config.write_text(dumps(validate(fake_config("map", 2))))
    return ["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), *flags]


def test_bbh_train_without_a_terminal_logs_its_plan_and_epochs(tmp_path, fake_data, capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(_train_argv(tmp_path)) == 0  # capsys's stderr is not a terminal
    err = capsys.readouterr().err.splitlines()
    cores = available_cores()
    assert err[0] == f"bbh: {cores} thread{'' if cores == 1 else 's'} (the {cores} core{'' if cores == 1 else 's'} " \
                     f"this process may use; --threads N to change)"
    assert err[1].startswith(f"train map: plan 2 epochs x 6 steps, 12 steps in all, {cores} thread")
    assert "epoch 1/2 step 6/12: loss" in err[2] and "ETA" in err[2]
    assert "epoch 2/2 step 12/12: loss" in err[3] and err[3].endswith("done")
    assert len(err) == 4, err


@pytest.mark.parametrize("tty, flags", [(True, []), (False, ["--no-progress"]), (False, ["--progress"])])
def test_bbh_train_logs_lines_only_without_a_terminal_and_without_a_flag(tmp_path, fake_data, monkeypatch, tty,
                                                                         flags):
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(_train_argv(tmp_path, *flags)) == 0
    assert "plan" not in err.getvalue() and "ETA" not in err.getvalue()
    assert ("train map" in err.getvalue()) == (tty or "--progress" in flags)  # the bar


# ---- bbh uci: one line per cell, not the cells' training lines -----------------------------------------------
def test_run_uci_logs_one_line_per_cell(tmp_path, capsys):
    from test_uci_bench import TINY, _dataset

    from bbh.experiments.uci import run_uci

    _dataset(tmp_path / "uci" / "alpha")
    with log_lines(interval=0):
        run_uci(tmp_path, tmp_path / "out", methods=["map-untuned"], budget=TINY, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "bbh uci: 2 cells to run, 0 done" and len(err) == 3, err
    assert re.fullmatch(r"bbh uci: cell 1/2 alpha map-untuned split 0 \([\d.]+ s\); [\d.]+ s elapsed, ETA [\d.]+ s",
                        err[1]), err
    assert re.fullmatch(r"bbh uci: cell 2/2 alpha map-untuned split 1 \([\d.]+ s\); [\d.]+ s elapsed, done", err[2])
