"""``bbh train``: one experiment (task x method) in a run directory that survives crashes.

A run directory holds

* ``config.toml`` — the resolved configuration (``bbh.config``),
* ``metrics.jsonl`` — one line per finished epoch: mean NLL, KL, kl_weight, loss, train accuracy, seconds,
* ``checkpoint.pt`` — everything needed to continue: method and optimizer states, the position in the
  data (epoch, step within the epoch), the RNG states of every rank, the metrics so far; written atomically
  at the end of every epoch and when the run is interrupted (Ctrl-C or SIGTERM),
* ``model.pt`` and ``final.json`` — the trained method's state and its test accuracy / NLL,
* ``status.json`` — ``running``, ``interrupted``, ``failed`` (with the error) or ``finished``.

``Run.resume(run_dir)`` continues exactly where the run stopped: minibatch order is a function of
(seed, epoch), and all random states are restored, so a run killed and resumed ends with the same
parameters as one that was not (tested). A NaN or inf loss stops the run with a clear message; the last
good checkpoint is kept. Under ``torchrun`` every rank trains on its share of each global batch with its
own noise seed and gradients are averaged (:mod:`bbh.distributed`); only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..elbo import ConstantWeight, LinearAnneal, Schedule
from ..io import atomic_write, write_json
from ..posteriors import Method, create
from ..training import distributed as dist
from ..training.trainer import NonFiniteLossError, Trainer, resolve_device
from .config import dumps, validate

CHECKPOINT_VERSION = 1


def build_model(options: dict[str, Any], num_classes: int) -> nn.Module:
    """The network named by ``[model] name`` ("lenet5", "resnet32", "mlp"), built with the remaining
    options (``mlp`` takes ``in_features`` and ``hidden`` and expects flat inputs)."""
    from .. import models

    opts = {k: v for k, v in options.items() if k != "name"}
    name = options.get("name", "")
    if name == "lenet5":
        return models.LeNet5(num_classes=num_classes, **opts)
    if name == "resnet32":
        return models.ResNet32(num_classes=num_classes, **opts)
    if name == "mlp":
        return models.MLP(opts.pop("in_features"), num_classes, hidden=tuple(opts.pop("hidden", (32,))), **opts)
    raise ValueError(f"unknown model {name!r}; expected 'lenet5', 'resnet32' or 'mlp'")


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


def predict_probs(method: Method, x: Tensor, transform, n_samples: int, batch_size: int = 500) -> Tensor:
    """Mean predictive class probabilities ``[N, K]`` over ``n_samples`` posterior draws (streamed)."""
    from ..evaluation.predictive import iter_batches, predict_batches

    method.eval()
    return predict_batches(method, iter_batches(x, batch_size), n_samples, transform=transform)["mean"]


class _Interrupted(Exception):
    pass


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
        self.device = dist.local_device(resolve_device(train["device"]))
        dist.init_from_env(self.device)
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
        model = build_model(self.config["model"], task.num_classes)
        self.method = create(exp["method"], model, **self.config["method"])
        if getattr(self.method, "member_batches", False):
            raise ValueError("bbh train does not support ensembles with member_batches=True yet; "
                             "use the Python API with bbh.data.MemberBatches")
        self.method.to(self.device)
        dist.broadcast_parameters(self.method)
        self.world, self.rank = dist.world_size(), dist.rank()
        if train["batch_size"] % self.world:
            raise ValueError(f"train.batch_size {train['batch_size']} is not divisible by the {self.world} ranks")
        self.trainer = Trainer(self.method, optimizer=train["optimizer"], lr=train["lr"], eps=train["eps"],
                               kl_anneal=build_schedule(train["kl_anneal"]), device=self.device, progress=False,
                               factored_grads=train["factored_grads"] and self.world == 1, amp=train["amp"],
                               grad_hook=dist.average_gradients if self.world > 1 else None)
        torch.manual_seed(self.seed + 1 + self.rank)  # per-rank posterior noise and dropout masks
        self.augment = torch.Generator(device=self.device).manual_seed(self.seed * 7919 + self.rank)
        self.num_data = int(task.train_x.shape[0])
        self.steps_per_epoch = self.num_data // train["batch_size"]
        if self.steps_per_epoch < 1:
            raise ValueError(f"train.batch_size {train['batch_size']} exceeds the {self.num_data} training examples")
        self.epoch, self.step_in_epoch = 0, 0
        self.history: list[dict[str, float]] = []
        self.partial: dict[str, float] = {}

    # ---- files ------------------------------------------------------------------------------------------
    def _write(self, name: str, write) -> None:
        if dist.is_main():
            atomic_write(self.run_dir / name, write)

    def _status(self, status: str, **extra: Any) -> None:
        if dist.is_main():
            write_json(self.run_dir / "status.json", {"status": status, "epoch": self.epoch,
                                                       "step_in_epoch": self.step_in_epoch, **extra})

    def save_checkpoint(self) -> None:
        """Atomically write ``checkpoint.pt`` (collective under torchrun: every rank sends its RNG state)."""
        rng = dist.gather_objects({"cpu": torch.get_rng_state(), "augment": self.augment.get_state(),
                                   "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None})
        state = {"version": CHECKPOINT_VERSION, "config": self.config, "epoch": self.epoch,
                 "step_in_epoch": self.step_in_epoch, "trainer_step": self.trainer.step,
                 "method": self.method.state_dict(), "optimizer": self.trainer.optimizer.state_dict(),
                 "scaler": self.trainer.scaler.state_dict() if self.trainer.scaler is not None else None,
                 "rng": rng, "history": self.history, "partial": self.partial}
        self._write("checkpoint.pt", lambda tmp: torch.save(state, tmp))

    def _load_checkpoint(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        self.method.load_state_dict(state["method"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] is not None and self.trainer.scaler is not None:
            self.trainer.scaler.load_state_dict(state["scaler"])
        self.trainer.step = state["trainer_step"]
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.history, self.partial = state["history"], state["partial"]
        if len(state["rng"]) != self.world:
            raise ValueError(f"the checkpoint was written by {len(state['rng'])} ranks; resume with as many "
                             f"(now {self.world})")
        mine = state["rng"][self.rank]
        torch.set_rng_state(mine["cpu"])
        self.augment.set_state(mine["augment"])
        if mine["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"])

    @classmethod
    def resume(cls, run_dir: str | Path, task: Any = None, data_dir: str | Path | None = None,
               progress: bool = True) -> Run:
        """Rebuild the run stored in ``run_dir`` from its checkpoint."""
        path = Path(run_dir) / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated or foreign file
            raise ValueError(f"cannot read checkpoint {path}: {err}") from err
        run = cls(state["config"], run_dir, task=task, data_dir=data_dir, progress=progress)
        run._load_checkpoint(state)
        return run

    # ---- training -----------------------------------------------------------------------------------------
    def _batch_indices(self, epoch: int, step: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_data, generator=g)
        bs = self.config["train"]["batch_size"]
        idx = order[step * bs:(step + 1) * bs]
        return idx[self.rank::self.world]

    def _record(self, logged: dict[str, float], y: Tensor) -> None:
        outputs = getattr(self.method, "_last_outputs", None)
        if outputs is not None and outputs.dim() == 2 and outputs.shape[0] == y.shape[0]:
            logged = {**logged, "train_acc": float((outputs.argmax(-1) == y).float().mean())}
        for k, v in logged.items():
            self.partial[k] = self.partial.get(k, 0.0) + v
        self.partial["_count"] = self.partial.get("_count", 0.0) + 1

    def _finish_epoch(self, seconds: float) -> None:
        count = self.partial.pop("_count", 1.0)
        record = {k: v / count for k, v in self.partial.items() if k != "_seconds"}
        record.update(epoch=self.epoch, step=self.trainer.step,
                      seconds=self.partial.get("_seconds", 0.0) + seconds)
        self.history.append(record)
        self.partial = {}
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        self._write("metrics.jsonl", lambda tmp: Path(tmp).write_text(lines))

    def train(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluate, write ``model.pt`` and ``final.json``; returns the final
        summary. Raises :class:`KeyboardInterrupt` after checkpointing when interrupted."""
        from tqdm.auto import tqdm

        epochs = self.config["train"]["epochs"]
        self._write("config.toml", lambda tmp: Path(tmp).write_text(dumps(self.config)))
        self._status("running")
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):  # a polite kill: checkpoint, then stop
            raise _Interrupted()

        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            previous = None
        bar = tqdm(total=epochs * self.steps_per_epoch, initial=self.epoch * self.steps_per_epoch + self.step_in_epoch,
                   disable=not (self.progress and dist.is_main()), desc=self.config["experiment"]["name"])
        start = time.perf_counter()
        try:
            while self.epoch < epochs:
                start = time.perf_counter()
                self.method.train()
                while self.step_in_epoch < self.steps_per_epoch:
                    idx = self._batch_indices(self.epoch, self.step_in_epoch)
                    x = self.task.train_transform(self.task.train_x[idx].to(self.device), generator=self.augment)
                    y = self.task.train_y[idx].to(self.device)
                    logged = self.trainer.loss_step(x, y, num_data=self.num_data,
                                                    steps_per_epoch=self.steps_per_epoch)
                    self._record(logged, y)
                    self.step_in_epoch += 1
                    bar.update(1)
                    bar.set_postfix(nll=f"{logged['nll']:.3f}", kl=f"{logged['kl']:.3g}", refresh=False)
                self._finish_epoch(time.perf_counter() - start)
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self.save_checkpoint()
        except (KeyboardInterrupt, _Interrupted):
            self.partial["_seconds"] = self.partial.get("_seconds", 0.0) + time.perf_counter() - start
            self.save_checkpoint()
            self._status("interrupted")
            raise KeyboardInterrupt(f"interrupted at epoch {self.epoch}, step {self.step_in_epoch}; "
                                    f"checkpoint written to {self.run_dir / 'checkpoint.pt'}") from None
        except NonFiniteLossError as err:
            self._status("failed", error=str(err))
            raise
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate on the test set and write ``model.pt`` and ``final.json``."""
        samples = self.config["eval"]["samples"]
        start = time.perf_counter()
        probs = predict_probs(self.method, self.task.test_x.to(self.device),
                              lambda xb: self.task.eval_transform(xb), samples)
        y = self.task.test_y.to(probs.device)
        summary = {"test_accuracy": float((probs.argmax(-1) == y).float().mean()),
                   "test_nll": float(-torch.log(probs.gather(1, y.unsqueeze(1)).clamp_min(1e-12)).mean()),
                   "eval_samples": samples, "eval_seconds": time.perf_counter() - start,
                   "epochs": self.epoch, "steps": self.trainer.step,
                   "train_seconds": sum(r["seconds"] for r in self.history)}
        if not all(math.isfinite(v) for v in summary.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite test metrics: {summary}")
        state = {"config": self.config, "method": self.method.state_dict(), "num_classes": self.task.num_classes}
        self._write("model.pt", lambda tmp: torch.save(state, tmp))
        if dist.is_main():
            write_json(self.run_dir / "final.json", summary)
        self._status("finished", **summary)
        return summary


__all__ = ["Run", "build_model", "build_schedule", "predict_probs"]
