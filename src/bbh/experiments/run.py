"""``bbh train``: one experiment (task x method) in a run directory that survives crashes.

A run is configuration -> objects -> :meth:`bbh.Trainer.fit`: the task (:func:`bbh.data.load_task`), the
network (:func:`bbh.models.registry.build_model`), the method (:func:`bbh.create`) and a
:class:`~bbh.training.trainer.Trainer` whose checkpoint directory is the run directory. The Trainer owns
the loop, the checkpoints, exact resume, signals, the NaN guard and data parallelism; this module only
builds the objects and writes the run's own files. A run directory holds

* ``config.toml`` — the resolved configuration (:mod:`bbh.experiments.config`),
* ``metrics.jsonl`` — one line per finished epoch: mean NLL, KL, kl_weight, loss, train accuracy, seconds,
* ``checkpoint.pt`` — the Trainer's checkpoint (the configuration travels in its ``metadata``); written
  atomically at the end of every epoch and when the run is interrupted (Ctrl-C or SIGTERM),
* ``model.pt`` and ``final.json`` — the trained method's state and its test accuracy / NLL,
* ``status.json`` — ``running``, ``interrupted``, ``failed`` (with the error) or ``finished``.

Every file loads without running code: ``torch.load(path, weights_only=True)``. ``model.pt`` holds
``{"config": dict, "method": state_dict, "num_classes": int}``.

``Run.resume(run_dir)`` continues exactly where the run stopped (tested bit for bit). Under ``torchrun``
every rank trains on its share of each global batch with its own noise seed and gradients are averaged
(:mod:`bbh.training.distributed`); only rank 0 writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..elbo import ConstantWeight, LinearAnneal, Schedule
from ..io import atomic_write, write_json
from ..models.registry import build_model
from ..posteriors import Method, create
from ..training import distributed as dist
from ..training.trainer import CHECKPOINT_NAME, NonFiniteLossError, Trainer, read_checkpoint, resolve_device
from .config import dumps, validate


def build_schedule(spec: Any) -> Schedule | None:
    """``"none"`` -> None (weight 1), a number -> constant, a table ``{kind = "linear", ...}`` -> ramp."""
    if spec in (None, "none"):
        return None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return ConstantWeight(float(spec))
    if isinstance(spec, dict) and spec.get("kind") == "linear":
        return LinearAnneal(start=spec.get("start", 5), length=spec.get("length", 15), unit=spec.get("unit", "epoch"))
    raise ValueError(f"train.kl_anneal must be 'none', a number or {{kind = \"linear\", start, length, unit}}, "
                     f"got {spec!r}")


def predict_probs(method: Method, x: Tensor, transform: Callable[[Tensor], Tensor] | None, n_samples: int,
                  batch_size: int = 500) -> Tensor:
    """Mean predictive class probabilities ``[N, K]`` over ``n_samples`` posterior draws (streamed)."""
    from ..evaluation.predictive import iter_batches, predict_batches

    method.eval()
    return predict_batches(method, iter_batches(x, batch_size), n_samples, transform=transform)["mean"]


class Run:
    """One training run of a resolved configuration in ``run_dir`` (see the module docstring).

    Args:
        config: a configuration (validated here).
        run_dir: the run directory (created).
        task: the data (:class:`bbh.data.Task`); default ``load_task(config)``.
        data_dir: where the data lives (``--data-dir``).
        progress: show a progress bar.
    """

    def __init__(self, config: dict[str, Any], run_dir: str | Path, task: Any = None,
                 data_dir: str | Path | None = None, progress: bool = True) -> None:
        self.config = validate(config)
        self.run_dir = Path(run_dir)
        self.progress = progress
        exp, train, data = self.config["experiment"], self.config["train"], self.config["data"]
        device = dist.local_device(resolve_device(train["device"]))
        dist.init_from_env(device)
        if task is None:
            from ..data import load_task

            task = load_task(exp["task"], data_dir, validation=data["validation"],
                             preprocessing=data["preprocessing"])
        self.task = task
        self.seed = int(exp["seed"])
        if train["deterministic"]:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(self.seed)  # the same initial parameters on every rank
        self.method = create(exp["method"], build_model(self.config["model"], task.num_classes),
                             **self.config["method"])
        if getattr(self.method, "member_batches", False):
            raise ValueError("bbh train does not support ensembles with member_batches=True yet; "
                             "use the Python API with bbh.data.MemberBatches")
        self.world, self.rank = dist.world_size(), dist.rank()
        # posterior noise, dropout masks and augmentation: seed + 1 + rank (the Trainer adds the rank)
        self.trainer = Trainer(self.method, optimizer=train["optimizer"], lr=train["lr"], eps=train["eps"],
                               epochs=train["epochs"], kl_anneal=build_schedule(train["kl_anneal"]), device=device,
                               seed=self.seed + 1, progress=progress, factored_grads=train["factored_grads"],
                               amp=train["amp"], clip_grad_norm=train.get("clip_grad_norm"),
                               checkpoint_dir=self.run_dir, metadata={"config": self.config})

    @property
    def epoch(self) -> int:
        """Epochs done."""
        return self.trainer.epoch

    @property
    def step_in_epoch(self) -> int:
        """Steps done in the current epoch."""
        return self.trainer.step_in_epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished epoch (as in ``metrics.jsonl``)."""
        return self.trainer.history

    # ---- files ------------------------------------------------------------------------------------------
    def _status(self, status: str, **extra: Any) -> None:
        if dist.is_main():
            write_json(self.run_dir / "status.json", {"status": status, "epoch": self.epoch,
                                                       "step_in_epoch": self.step_in_epoch, **extra})

    @classmethod
    def resume(cls, run_dir: str | Path, task: Any = None, data_dir: str | Path | None = None,
               progress: bool = True) -> Run:
        """Rebuild the run stored in ``run_dir`` from its checkpoint (read with ``weights_only=True``).

        Raises:
            FileNotFoundError: ``run_dir`` holds no checkpoint.
            ValueError: the checkpoint is unreadable or holds no run configuration.
        """
        path = Path(run_dir) / CHECKPOINT_NAME
        state = read_checkpoint(path)
        config = (state.get("metadata") or {}).get("config")
        if not isinstance(config, dict):
            raise ValueError(f"cannot read checkpoint {path}: it holds no run configuration (not a bbh train run)")
        run = cls(config, run_dir, task=task, data_dir=data_dir, progress=progress)
        run.trainer.load_state_dict(state)
        return run

    # ---- training -----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluate, write ``model.pt`` and ``final.json``; returns the final
        summary.

        Raises:
            KeyboardInterrupt: after checkpointing, when interrupted (Ctrl-C, SIGTERM).
            NonFiniteLossError: a NaN or inf loss (``status.json`` says ``failed``; the last good
                checkpoint is kept).
        """
        if dist.is_main():
            text = dumps(self.config)
            atomic_write(self.run_dir / "config.toml", lambda tmp: Path(tmp).write_text(text))
        self._status("running")
        try:
            self.trainer.fit((self.task.train_x, self.task.train_y), batch_size=self.config["train"]["batch_size"],
                             transform=self.task.train_transform)
        except KeyboardInterrupt:
            self._status("interrupted")
            raise
        except NonFiniteLossError as err:
            self._status("failed", error=str(err))
            raise
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate on the test set and write ``model.pt`` and ``final.json``."""
        samples = self.config["eval"]["samples"]
        start = time.perf_counter()
        device = self.trainer.device
        probs = predict_probs(self.method, self.task.test_x.to(device), lambda xb: self.task.eval_transform(xb),
                              samples)
        y = self.task.test_y.to(probs.device)
        summary = {"test_accuracy": float((probs.argmax(-1) == y).float().mean()),
                   "test_nll": float(-torch.log(probs.gather(1, y.unsqueeze(1)).clamp_min(1e-12)).mean()),
                   "eval_samples": samples, "eval_seconds": time.perf_counter() - start,
                   "epochs": self.epoch, "steps": self.trainer.step,
                   "train_seconds": sum(r["seconds"] for r in self.history)}
        if not all(math.isfinite(v) for v in summary.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite test metrics: {summary}")
        if dist.is_main():
            state = {"config": self.config, "method": self.method.state_dict(),
                     "num_classes": int(self.task.num_classes)}
            atomic_write(self.run_dir / "model.pt", lambda tmp: torch.save(state, tmp))
            write_json(self.run_dir / "final.json", summary)
        self._status("finished", **summary)
        return summary


__all__ = ["Run", "build_model", "build_schedule", "predict_probs"]
