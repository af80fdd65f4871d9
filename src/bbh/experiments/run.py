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
* ``model.pt`` and ``final.json`` — the trained method's state (no optimizer state; its floating tensors in
  ``train.model_dtype``, float32 or bfloat16) and its test accuracy / NLL (of the float32 method),
* ``status.json`` — ``running``, ``interrupted``, ``failed`` (with the error) or ``finished``, the position,
  and ``data_dir``, the absolute data directory the run was trained from (``--resume`` reuses it).

With ``train.keep_checkpoint = false`` ``checkpoint.pt`` is deleted once ``model.pt`` and ``final.json`` are
written (a finished run needs only those; it can then no longer be continued).

Every file loads without running code: ``torch.load(path, weights_only=True)``. ``model.pt`` holds
``{"config": dict, "method": state_dict, "num_classes": int}``.

The output folder is checked for writability (:func:`bbh.io.ensure_writable`) before any data is loaded.
``Run.resume(run_dir)`` continues exactly where the run stopped (tested bit for bit); it may change only
:data:`~bbh.experiments.config.RESUMABLE_KEYS` (more epochs, evaluation samples, how ``model.pt`` is stored).
A run killed before its first checkpoint is started again from its ``config.toml``. Under ``torchrun``
every rank trains on its share of each global batch with its own noise seed and gradients are averaged
(:mod:`bbh.training.distributed`); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.io import atomic_write, ensure_writable, read_json_object, write_json
from ..evaluation import metrics
from ..models.registry import build_model
from ..posteriors import Method
from ..training import distributed as dist
from ..training.run_files import CHECKPOINT, CONFIG, FINAL, MODEL, STATUS
from ..training.trainer import NonFiniteLossError, Trainer, read_checkpoint, resolve_device
from .config import RESUMABLE_KEYS, apply_override, changed_keys, dumps, load_config, validate
from .settings import MethodSetting


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The contents of ``run_dir/status.json``, or None when it is missing or unreadable."""
    return read_json_object(Path(run_dir) / STATUS)


def _resume_config(config: dict[str, Any], overrides: Sequence[str], run_dir: Path) -> dict[str, Any]:
    """``config`` with the ``--set`` ``overrides`` of a resumed run; only :data:`RESUMABLE_KEYS` may change."""
    old = validate(config, f"the configuration of {run_dir}")
    new = copy.deepcopy(old)
    for assignment in overrides:
        apply_override(new, assignment)
    new = validate(new, f"--resume {run_dir}")
    fixed = [k for k in changed_keys(old, new) if k not in RESUMABLE_KEYS]
    if fixed:
        raise ValueError(f"cannot change {', '.join(fixed)} when resuming {run_dir}: the continued run would not be "
                         f"the one checkpointed; a resumed run may change only {', '.join(RESUMABLE_KEYS)} "
                         f"(for a new run with other settings: bbh train --config {run_dir / CONFIG} --set ...)")
    return new


def predict_probs(method: Method, x: Tensor, transform: Callable[[Tensor], Tensor] | None, n_samples: int,
                  batch_size: int = 500) -> Tensor:
    """Mean predictive class probabilities ``[N, K]`` over ``n_samples`` posterior draws (streamed)."""
    from ..core.predictive import iter_batches, predict_batches

    with method.evaluating():  # eval mode for the prediction, the caller's modes restored after it
        return predict_batches(method, iter_batches(x, batch_size), n_samples, transform=transform)["mean"]


def config_trainer(config: dict[str, Any], method: Method, device: torch.device | str, **kwargs: Any) -> Trainer:
    """The :class:`Trainer` of a resolved configuration's ``[train]`` table (optimizer, lr, eps, KL schedule,
    factored gradients, AMP, gradient clipping) for ``method`` on ``device``; ``kwargs`` add the rest (epochs or
    steps, seed, checkpoints, ...)."""
    train, setting = config["train"], MethodSetting.from_config(config)
    return Trainer(method, optimizer=setting.optimizer, lr=setting.lr, lr_schedule=train["lr_schedule"],
                   eps=train["eps"], kl_anneal=setting.kl_anneal, device=device,
                   factored_grads=train["factored_grads"],
                   amp=train["amp"], clip_grad_norm=train["clip_grad_norm"], **kwargs)


class Run:
    """One training run of a resolved configuration in ``run_dir`` (see the module docstring).

    Args:
        config: a configuration (validated here).
        run_dir: the run directory (created).
        task: the data (:class:`bbh.data.Task`); default ``load_task(config)`` without its outlier set
            (training does not need it).
        data_dir: where the data lives (``--data-dir``; default :func:`bbh.data.resolve_data_dir`); recorded,
            as an absolute path, in ``status.json``.
        progress: show progress bars.

    Attributes:
        restarted: set by :meth:`resume` when the run had no checkpoint and starts again from the beginning.

    Raises:
        OutputNotWritableError: ``run_dir`` cannot be created or written to (checked before anything else).
    """

    def __init__(self, config: dict[str, Any], run_dir: str | Path, task: Any = None,
                 data_dir: str | Path | None = None, progress: bool = True) -> None:
        self.config = validate(config)
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.restarted = False
        created = not self.run_dir.exists()
        ensure_writable(self.run_dir)
        try:
            self._setup(task, data_dir)
        except BaseException:
            if created:  # leave no empty run directory behind (rmdir refuses a non-empty one)
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()
            raise

    def _setup(self, task: Any, data_dir: str | Path | None) -> None:
        exp, train, data = self.config["experiment"], self.config["train"], self.config["data"]
        device = dist.local_device(resolve_device(train["device"]))
        dist.init_from_env(device)
        if task is None:
            from ..data import load_task, resolve_data_dir

            self.data_dir: Path | None = resolve_data_dir(data_dir).absolute()
            task = load_task(exp["task"], self.data_dir, validation=data["validation"],
                             preprocessing=data["preprocessing"], progress=self.progress, outliers=False)
        else:
            self.data_dir = None if data_dir is None else Path(data_dir).expanduser().absolute()
        self.task = task
        self.seed = int(exp["seed"])
        if train["deterministic"]:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(self.seed)  # the same initial parameters on every rank
        self.method = MethodSetting.from_config(self.config).build(build_model(self.config["model"],
                                                                               task.num_classes))
        if getattr(self.method, "member_batches", False):
            raise ValueError("bbh train does not support ensembles with member_batches=True yet; "
                             "use the Python API with bbh.data.MemberBatches")
        self.world, self.rank = dist.world_size(), dist.rank()
        # posterior noise, dropout masks and augmentation: seed + 1 + rank (the Trainer adds the rank)
        self.trainer = config_trainer(self.config, self.method, device, epochs=train["epochs"], seed=self.seed + 1,
                                      progress=self.progress, checkpoint_dir=self.run_dir,
                                      metadata={"config": self.config})

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
            data_dir = None if self.data_dir is None else str(self.data_dir)
            write_json(self.run_dir / STATUS, {"status": status, "epoch": self.epoch,
                                                     "step_in_epoch": self.step_in_epoch, "data_dir": data_dir,
                                                     **extra})

    @classmethod
    def resume(cls, run_dir: str | Path, task: Any = None, data_dir: str | Path | None = None,
               progress: bool = True, overrides: Sequence[str] = ()) -> Run:
        """Rebuild the run stored in ``run_dir`` from its checkpoint (read with ``weights_only=True``).

        A run killed before its first checkpoint (``config.toml`` but no ``checkpoint.pt``) starts again from
        the beginning (``restarted`` is then True).

        Args:
            run_dir: the run directory.
            task: the data (default: loaded as the run loaded it).
            data_dir: where the data lives (default: the run's own, recorded in ``status.json``).
            progress: show progress bars.
            overrides: ``table.key=value`` assignments; only :data:`~bbh.experiments.config.RESUMABLE_KEYS`
                may change (e.g. ``train.epochs=20`` to train further).

        Raises:
            FileNotFoundError: ``run_dir`` is not a run directory (no checkpoint and no ``config.toml``).
            ValueError: the checkpoint is unreadable or holds no run configuration; an override of a key that
                cannot change, or fewer epochs than done; the run has finished and nothing was changed, or
                it finished without keeping its checkpoint.
            OutputNotWritableError: ``run_dir`` cannot be written to.
        """
        run_dir = Path(run_dir)
        path = run_dir / CHECKPOINT
        if not run_dir.is_dir():
            raise FileNotFoundError(f"no checkpoint to resume from: {run_dir} does not exist")
        if data_dir is None:
            data_dir = (read_status(run_dir) or {}).get("data_dir")
        if not path.is_file():
            if not (run_dir / CONFIG).is_file():
                raise FileNotFoundError(f"no checkpoint to resume from: {run_dir} holds neither {CHECKPOINT} "
                                        f"nor {CONFIG} (not a bbh train run directory)")
            if (run_dir / MODEL).is_file():
                raise ValueError(f"{run_dir} has finished and did not keep its checkpoint (train.keep_checkpoint = "
                                 f"false): it cannot be continued; evaluate it with: bbh evaluate {run_dir}")
            # killed before the end of its first epoch: nothing to continue, start it again
            config = _resume_config(load_config(run_dir / CONFIG), overrides, run_dir)
            run = cls(config, run_dir, task=task, data_dir=data_dir, progress=progress)
            run.restarted = True
            return run
        ensure_writable(run_dir)  # before reading a checkpoint of possibly gigabytes
        state = read_checkpoint(path)
        config = (state.get("metadata") or {}).get("config")
        if not isinstance(config, dict):
            raise ValueError(f"cannot read checkpoint {path}: it holds no run configuration (not a bbh train run)")
        new = _resume_config(config, overrides, run_dir)
        done, epochs = int(state["epoch"]), new["train"]["epochs"]
        if epochs < done:
            raise ValueError(f"train.epochs={epochs} is fewer than the {done} epochs {run_dir} has already done")
        if (done >= epochs and not state.get("step_in_epoch") and (run_dir / MODEL).is_file()
                and not changed_keys(validate(config), new)):
            raise ValueError(f"{run_dir} has already finished its {done} epoch{'s' * (done != 1)}; to train it "
                             f"further: bbh train --resume {run_dir} --set train.epochs=N (N > {done}); to evaluate "
                             f"it: bbh evaluate {run_dir}")
        run = cls(new, run_dir, task=task, data_dir=data_dir, progress=progress)
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
            atomic_write(self.run_dir / CONFIG, lambda tmp: Path(tmp).write_text(text))
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
        summary = {"test_accuracy": 1.0 - metrics.error_rate(probs, y), "test_nll": metrics.nll(probs, y),
                   "eval_samples": samples, "eval_seconds": time.perf_counter() - start,
                   "epochs": self.epoch, "steps": self.trainer.step,
                   "train_seconds": sum(r["seconds"] for r in self.history)}
        if not all(math.isfinite(v) for v in summary.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite test metrics: {summary}")
        if dist.is_main():
            train = self.config["train"]
            method_state = self.method.state_dict()
            if train["model_dtype"] == "bfloat16":
                method_state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                for k, v in method_state.items()}
            state = {"config": self.config, "method": method_state, "num_classes": int(self.task.num_classes)}
            atomic_write(self.run_dir / MODEL, lambda tmp: torch.save(state, tmp))
            write_json(self.run_dir / FINAL, summary)
            if not train["keep_checkpoint"]:  # a finished run needs model.pt and final.json only
                (self.run_dir / CHECKPOINT).unlink(missing_ok=True)
        self._status("finished", **summary)
        return summary


__all__ = ["Run", "build_model", "config_trainer", "predict_probs", "read_status"]
