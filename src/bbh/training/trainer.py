"""The training loop of bbh: one :class:`Trainer` for the Python API and ``bbh train``.

One step: ``terms = method.loss(x, y, num_data=N, kl_weight=schedule(t))``, a finiteness check, backward
(factored hypernet gradients where possible, :func:`bbh.training.optim.factored_backward`), gradient
averaging over data-parallel ranks, optional clipping, optimizer step, ``method.post_step()``. Around it
the Trainer owns epochs and steps, minibatching and shuffling of an ``(x, y)`` tensor pair, the KL
schedule, AMP, logging (per-epoch ``history``, callbacks, ``metrics.jsonl``), checkpoints and exact
resume, Ctrl-C / SIGTERM handling and the NaN guard.

Checkpoints
-----------
With ``checkpoint_dir`` the Trainer writes ``checkpoint.pt`` there atomically (:func:`bbh.io.atomic_write`)
after every ``checkpoint_every`` epochs, at the end of :meth:`Trainer.fit` and when interrupted. It holds
only tensors and plain Python containers (it loads with ``torch.load(path, weights_only=True)``): the
method's and optimizer's state dicts, the gradient scaler's, the position (epoch, step within the epoch,
global step), every random state of every rank (torch CPU and CUDA, the augmentation generator, Python's
``random`` and NumPy's), the history and the sums of the unfinished epoch, the Trainer's settings and the
caller's ``metadata``. :meth:`Trainer.resume` rebuilds the Trainer from it; the continued run ends with
the same parameters, bit for bit, as one that was never interrupted (tested).

The file format is a plain dict (``format`` = ``"bbh.Trainer"``, ``version`` = :data:`CHECKPOINT_VERSION`);
:func:`read_checkpoint` reads and checks it.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import threads
from ..core.elbo import Schedule, as_schedule, schedule_from_spec, schedule_to_spec
from ..core.io import atomic_write
from ..core.options import LRSchedule, OptimizerName, parse_option
from ..data.batches import is_pair, known_length, training_set_size
from ..posteriors.protocol import Method
from . import distributed as dist
from . import optim
from .optim import make_optimizer
from .progress import start_lines
from .run_files import CHECKPOINT, METRICS

"""The checkpoint's file name inside ``checkpoint_dir``."""
"""The per-epoch metrics' file name inside ``checkpoint_dir`` (one JSON object per finished epoch)."""
CHECKPOINT_FORMAT = "bbh.Trainer"
CHECKPOINT_VERSION = 2
"""Version of the checkpoint layout; :func:`read_checkpoint` refuses others."""

Callback = Callable[[dict[str, Any]], None]
"""Called with one dict per step (``event="step"``) and per finished epoch (``event="epoch"``)."""
Transform = Callable[..., Tensor]
"""``transform(x, generator=g) -> x``: training-time augmentation drawing its randomness from ``g``."""

_SEED_MOD = 2**63


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss term is NaN or inf; the parameters are those after the last finite step."""


class _Stop(Exception):
    """A deferred SIGINT / SIGTERM, raised at the end of the step it arrived in."""


class _HardStop(KeyboardInterrupt):
    """A second Ctrl-C, raised wherever the program is: the state may be half updated, nothing is saved."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Trainer checkpoint with ``torch.load(..., weights_only=True)`` (no code is run).

    Args:
        path: the checkpoint file, or a directory holding :data:`CHECKPOINT`.

    Returns:
        The checkpoint dict (tensors on the CPU).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is truncated, corrupt, not a Trainer checkpoint or of another version.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding objects other than tensors and containers
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"cannot read checkpoint {path}: truncated, corrupt or not a bbh checkpoint "
                         f"({type(err).__name__}: {first})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"cannot read checkpoint {path}: not a bbh Trainer checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"cannot read checkpoint {path}: version {state.get('version')} is not "
                         f"{CHECKPOINT_VERSION}")
    return state


# ---- KL schedules as plain data ---------------------------------------------------------------------------
# ---- random states as plain data --------------------------------------------------------------------------
def _python_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_python_rng(state: dict[str, Any]) -> None:
    random.setstate((state["version"], tuple(state["internal"]), state["gauss"]))


def _numpy_rng() -> dict[str, Any] | None:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return None
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_rng(state: dict[str, Any] | None) -> None:
    if state is None:
        return
    import numpy as np

    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                         state["gauss"]))


# ---- data ---------------------------------------------------------------------------------------------------
class _TensorData:
    """Minibatches of an ``(x, y)`` tensor pair; the order of epoch e is a function of (seed, e) only."""

    kind = "tensors"

    def __init__(self, x: Tensor, y: Tensor, batch_size: int | None, shuffle: bool, drop_last: bool,
                 device: torch.device, world: int, rank: int) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y have different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
        n = int(x.shape[0])
        if n == 0:
            raise ValueError("the training data yielded no batches (x has no examples)")
        self.full = batch_size is None
        bs = n if batch_size is None else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if bs % world:
            raise ValueError(f"batch_size {bs} is not divisible by the {world} data-parallel ranks")
        self.steps_per_epoch = n // bs if drop_last else -(-n // bs)
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size {bs} exceeds the {n} training examples")
        self.num_data, self.batch_size, self.world, self.rank = n, bs, world, rank
        self.shuffle, self.drop_last = bool(shuffle) and not self.full, bool(drop_last)
        if self.full and world == 1:  # one batch: move it once
            x, y = x.to(device), y.to(device)
        self.x, self.y, self.device = x, y, device
        self._order: tuple[int, Tensor] | None = None

    def info(self, batch_size: int | None) -> dict[str, Any]:
        return {"kind": self.kind, "num_data": self.num_data, "batch_size": batch_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "steps_per_epoch": self.steps_per_epoch}

    def _indices(self, seed: int, epoch: int, step: int) -> Tensor:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % _SEED_MOD)
                order = torch.randperm(self.num_data, generator=g)
            else:
                order = torch.arange(self.num_data)
            self._order = (epoch, order)
        idx = self._order[1][step * self.batch_size:(step + 1) * self.batch_size]
        return idx[self.rank::self.world]

    def batches(self, seed: int, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        for step in range(start, self.steps_per_epoch):
            if self.full and self.world == 1:
                yield self.x, self.y
                continue
            idx = self._indices(seed, epoch, step)
            if self.x.device != idx.device:
                idx = idx.to(self.x.device)
            yield self.x[idx], self.y[idx]


class _IterableData:
    """Any re-iterable of ``(x, y)`` batches (a DataLoader); the Trainer does not reorder it."""

    kind = "iterable"

    def __init__(self, data: Iterable[tuple[Tensor, Tensor]], num_data: int | None) -> None:
        self.data = data
        self.num_data = num_data if num_data is not None else training_set_size(data)  # N from the sampler
        self.steps_per_epoch: int | None = known_length(data)  # None: an IterableDataset's DataLoader

    def info(self, batch_size: int | None) -> dict[str, Any]:
        return {"kind": self.kind, "num_data": self.num_data, "batch_size": None, "shuffle": None,
                "drop_last": None, "steps_per_epoch": self.steps_per_epoch}

    def batches(self, seed: int, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        it = iter(self.data)
        for _ in range(start):  # resumed mid-epoch: the batches already trained on
            if next(it, None) is None:
                raise ValueError(f"the data yielded fewer than the {start} batches already done in epoch {epoch}")
        yield from it



@dataclass
class LoopState:
    """Where training stands beyond the epoch and step counters: what :meth:`Trainer.fit` carries from step to step
    and what a checkpoint needs besides parameters, optimizer and history to resume exactly."""

    sums: dict[str, float] = field(default_factory=dict)
    """The unfinished epoch: summed logged terms, ``"_count"`` and ``"_seconds"``."""
    partial_in_history: bool = False
    """``history[-1]`` is the unfinished epoch (a run stopped by ``steps`` in the middle of one)."""
    data_seed: int | None = None
    """The seed the minibatch order and the augmentation generator derive from."""
    data_info: dict[str, Any] | None = None
    """What the data looked like (size, batches per epoch): a resumed run checks it gets the same."""
    epoch_rng: Tensor | None = None
    """torch's CPU random state when the current epoch's iterator was made (replayed to resume an iterable)."""
    pending_rng: dict[str, Any] | None = None
    """Random states loaded from a checkpoint, applied when :meth:`Trainer.fit` reaches the interrupted step."""
    step_rng: dict[str, Any] | None = None
    """Random states when the current step began (what an interruption inside a step checkpoints)."""
    in_step: bool = False
    """A step is running."""
    stop_signal: str | None = None
    """The signal (SIGINT, SIGTERM) that asked to stop after this step."""
    saved_step: int | None = None
    """The step the last checkpoint holds."""

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's share of this state (the random states are gathered over ranks apart)."""
        return {"epoch_rng": self.epoch_rng, "data_seed": self.data_seed, "data": self.data_info,
                "partial": dict(self.sums), "partial_in_history": self.partial_in_history}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], rank: int) -> LoopState:
        """The state a checkpoint holds, with ``rank``'s random states pending until :meth:`Trainer.fit`."""
        return cls(sums=dict(state["partial"]), partial_in_history=bool(state["partial_in_history"]),
                   data_seed=state["data_seed"], data_info=state["data"], epoch_rng=state["epoch_rng"],
                   pending_rng=state["rng"][rank], saved_step=state["step"])


class Trainer:
    """Fits a :class:`~bbh.posteriors.protocol.Method` by minimising its per-datum negative ELBO.

    Example::

        trainer = bbh.Trainer(method, epochs=3, checkpoint_dir="runs/x")
        trainer.fit((x, y), batch_size=100)          # Ctrl-C: checkpoint, then KeyboardInterrupt
        ...
        trainer = bbh.Trainer.resume("runs/x", method)  # same settings, state and random states
        trainer.fit((x, y), batch_size=100)          # continues exactly where it stopped

    Args:
        method: the method to train (moved to ``device``).
        optimizer: ``"adam"`` or ``"rmsprop-tf"`` (:class:`~bbh.options.OptimizerName`).
        lr: learning rate (default: the method's ``default_lr``, else Adam 1e-3, RMSProp-TF 1e-4).
        lr_schedule: ``"constant"`` (default) or ``"cosine"`` (:class:`~bbh.options.LRSchedule`): step t of T
            uses lr * (1 + cos(pi t / T)) / 2, T the steps ``epochs`` / ``steps`` make (the smaller, when both
            are given), known from the data's length in :meth:`fit`; it is a function of the step alone, so a
            resumed run continues it exactly (raising ``epochs`` on resume stretches what is left of it).
        eps: optimizer epsilon (default: Adam 1e-8, RMSProp-TF 1e-5).
        epochs: train until this many epochs are done (default 1 unless ``steps`` is given).
        steps: stop after this many optimizer steps (with ``epochs``: whichever comes first). Both count
            from the start of training, so a resumed Trainer trains only what is left.
        kl_anneal: a schedule ``f(step, steps_per_epoch) -> weight``, a constant, or None (weight 1).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (under torchrun, CUDA means ``cuda:LOCAL_RANK``).
        seed: when training starts (not when it resumes), seeds torch's generators with ``seed + rank``;
            the minibatch order and the augmentation generator derive from it too. None leaves torch's
            generators alone and derives the order from ``torch.initial_seed()``.
        progress: show a progress bar with the loss terms (rank 0 only). Without a bar, inside
            :func:`bbh.training.progress.log_lines` (``bbh`` commands without a terminal), plain lines instead:
            a plan, then one per epoch (at most one per 30 s) with an ETA.
        factored_grads: let hypernet output layers pass their rank-S weight gradients as factors that the
            optimizer expands block by block (:mod:`bbh.training.optim`); same update, less memory traffic.
            The Trainer uses dense gradients by itself where factors cannot be used: with the CUDA
            gradient scaler (``amp`` on CUDA) and under data parallelism.
        amp: automatic mixed precision for the loss computation: bfloat16 autocast on the CPU, float16
            autocast with a gradient scaler on CUDA. Hypernet output layers and KL estimators stay float32.
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping). The norm before
            clipping, of the true (unscaled, rank-averaged, factored or dense) gradient, is logged as
            ``grad_norm``; a non-finite norm raises :class:`NonFiniteLossError` before the update.
        checkpoint_dir: where to write ``checkpoint.pt`` and ``metrics.jsonl`` (None: nothing is written).
        checkpoint_every: write the checkpoint after every this many epochs (and always at the end of
            :meth:`fit` and when interrupted).
        callbacks: functions called with a dict after every step (``event="step"``, ``epoch``, ``step``,
            ``step_in_epoch`` and the logged terms) and after every epoch (``event="epoch"`` and the epoch's
            history record), on every rank. A callback may raise :class:`KeyboardInterrupt` to stop
            training: the Trainer then checkpoints (between steps, so the state is exact) and re-raises.
        handle_signals: during :meth:`fit`, catch SIGINT (Ctrl-C) and SIGTERM, finish the current step,
            write the checkpoint and raise :class:`KeyboardInterrupt` (a second Ctrl-C stops at once).
            Only in the main thread.
        metadata: plain data (e.g. a run configuration) stored in every checkpoint under ``"metadata"``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the Trainer joins the process group
    (:func:`bbh.training.distributed.init_from_env`), starts every rank from rank 0's parameters, seeds
    each rank's noise with ``seed + rank``, averages gradients over ranks after every backward pass, stops
    all ranks at the same step when one receives a signal, and writes files from rank 0 only.
    A fresh Trainer with a ``checkpoint_dir`` that already holds a checkpoint overwrites it; use
    :meth:`resume` to continue instead.

    Attributes:
        history: one dict per epoch: the epoch's mean logged terms (``loss``, ``nll``, ``kl``,
            ``kl_weight``, ``train_acc`` for classifiers, ``grad_norm`` with clipping, the method's extras),
            ``epoch``, ``step`` and ``seconds``.
        epoch, step_in_epoch, step: the position in training (epochs done, steps done in the current epoch,
            steps done in all).
    """

    def __init__(self, method: Method, *, optimizer: OptimizerName | str = "adam", lr: float | None = None,
                 lr_schedule: LRSchedule | str = LRSchedule.CONSTANT,
                 eps: float | None = None, epochs: int | None = None, steps: int | None = None,
                 kl_anneal: Schedule | float | None = None, device: str | torch.device = "auto",
                 seed: int | None = None, progress: bool = True, factored_grads: bool = True, amp: bool = False,
                 clip_grad_norm: float | None = None, checkpoint_dir: str | Path | None = None,
                 checkpoint_every: int = 1, callbacks: Sequence[Callback] = (), handle_signals: bool = True,
                 metadata: dict[str, Any] | None = None) -> None:
        if not isinstance(method, Method):
            raise TypeError(f"method must be a bbh Method (see bbh.create), got {type(method).__name__}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if clip_grad_norm is not None and not (math.isfinite(clip_grad_norm) and clip_grad_norm > 0):
            raise ValueError(f"clip_grad_norm must be a positive number or None, got {clip_grad_norm!r}")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        opt_name = parse_option(OptimizerName, optimizer, "optimizer")
        self.device = dist.local_device(resolve_device(device))
        dist.init_from_env(self.device)
        self.world, self.rank = dist.world_size(), dist.rank()
        self.method = method.to(self.device)
        if lr is None:
            lr = method.default_lr.get(opt_name.value)
        self.amp = bool(amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and self.device.type == "cuda" else None
        self.factored_grads = bool(factored_grads)
        self.params = method.trainable_parameters()
        self.optimizer = make_optimizer(opt_name, self.params, lr=lr, eps=eps, factored=self.factored_grads)
        self.lr_schedule = parse_option(LRSchedule, lr_schedule, "lr_schedule")
        self._base_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self.epochs = epochs if epochs is not None else (None if steps is not None else 1)
        self.max_steps = steps
        self.schedule = as_schedule(kl_anneal)
        self.seed = seed
        self.progress = progress
        self.clip_grad_norm = None if clip_grad_norm is None else float(clip_grad_norm)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.checkpoint_every = int(checkpoint_every)
        self.callbacks = list(callbacks)
        self.handle_signals = handle_signals
        self.metadata = dict(metadata or {})
        self._settings = {"optimizer": opt_name.value, "lr": self._base_lrs[0], "eps": eps,
                          "lr_schedule": self.lr_schedule.value,
                          "epochs": epochs, "steps": steps, "seed": seed, "factored_grads": self.factored_grads,
                          "amp": self.amp, "clip_grad_norm": self.clip_grad_norm,
                          "checkpoint_every": self.checkpoint_every}
        self.augment = torch.Generator(device=self.device)
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.history: list[dict[str, float]] = []
        self._loop = LoopState()

    # ---- the dense / factored decision --------------------------------------------------------------------
    @property
    def uses_factored_grads(self) -> bool:
        """Whether backward passes deliver factored gradients: asked for, no gradient scaler, one rank."""
        return self.factored_grads and self.scaler is None and self.world == 1

    def _backward_context(self) -> AbstractContextManager[Any]:
        return optim.factored_backward(self.optimizer) if self.uses_factored_grads else nullcontext()

    # ---- one step -----------------------------------------------------------------------------------------
    def loss_step(self, x: Tensor, y: Tensor, num_data: int, steps_per_epoch: int | None,
                  transform: Transform | None = None) -> dict[str, float]:
        """One optimisation step on one minibatch, outside :meth:`fit` (no epochs, no checkpoints).

        Args:
            x: inputs (moved to the device).
            y: targets (moved to the device).
            num_data: N, the training-set size, for the KL scaling.
            steps_per_epoch: batches per epoch, for schedules counted in epochs.
            transform: ``transform(x, generator=self.augment)`` applied to ``x`` on the device.

        Returns:
            The logged terms of the step.
        """
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if transform is not None:
            x = transform(x, generator=self.augment)
        weight = float(self.schedule(self.step, steps_per_epoch))
        try:
            amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
            with torch.autocast(device_type=self.device.type, dtype=amp_dtype, enabled=self.amp):
                terms = self.method.loss(x, y, num_data=num_data, kl_weight=weight)
        except FloatingPointError as err:
            raise NonFiniteLossError(f"non-finite value at step {self.step}: {err}; "
                                     f"the parameters are those of the last finite step") from err
        logged = terms.as_floats()
        if not all(math.isfinite(v) for v in logged.values()):
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in logged.items())
                + "; the parameters are those of the last finite step (non-finite loss with finite data: lower the "
                  "learning rate?)")
        outputs = getattr(terms, "outputs", None)
        if (outputs is not None and outputs.dim() == 2 and outputs.shape[0] == y.shape[0] and y.dim() == 1
                and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool):
            logged["train_acc"] = float((outputs.argmax(-1) == y).float().mean())
        loss = terms.total.float()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            with self._backward_context():
                loss.backward()
        if self.world > 1:
            dist.average_gradients(self.params)
        if self.clip_grad_norm is not None:
            norm = float(optim.clip_grad_norm_(self.optimizer, self.clip_grad_norm))
            if not math.isfinite(norm) and self.scaler is None:
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"non-finite gradient norm at step {self.step} ({norm}); the parameters "
                                         f"are those of the last finite step (lower the learning rate?)")
            logged["grad_norm"] = norm
        if self.lr_schedule != LRSchedule.CONSTANT:
            logged["lr"] = self._set_lr(steps_per_epoch)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        logged.update(self.method.post_step())
        self.step += 1
        return logged

    def planned_steps(self, steps_per_epoch: int | None) -> int | None:
        """T, the optimizer steps training will take: ``steps``, ``epochs * steps_per_epoch``, or the smaller
        of the two (None when neither is known)."""
        by_epochs = self.epochs * steps_per_epoch if self.epochs is not None and steps_per_epoch else None
        known = [t for t in (self.max_steps, by_epochs) if t is not None]
        return min(known) if known else None

    def _schedule_length(self, steps_per_epoch: int | None) -> int:
        """T of the learning-rate schedule (:meth:`planned_steps`); raises when it is unknown."""
        total = self.planned_steps(steps_per_epoch)
        if total is None:
            raise ValueError(f"lr_schedule={self.lr_schedule.value!r} needs the number of steps training will "
                             f"take: give the Trainer steps=, or data whose length is known (len(loader))")
        return total

    def _set_lr(self, steps_per_epoch: int | None) -> float:
        """Set every parameter group's learning rate for the step about to be taken (:class:`LRSchedule`)
        and return the first group's."""
        total = self._schedule_length(steps_per_epoch)
        factor = 0.5 * (1.0 + math.cos(math.pi * min(self.step, total) / total))
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * factor
        return self._base_lrs[0] * factor

    # ---- random states ------------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "augment": self.augment.get_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "python": _python_rng(), "numpy": _numpy_rng()}

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        self.augment.set_state(state["augment"])
        if state["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
        _set_python_rng(state["python"])
        _set_numpy_rng(state["numpy"])

    # ---- checkpoints --------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        """``checkpoint_dir / CHECKPOINT`` (None without a checkpoint directory)."""
        return None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT

    def state_dict(self, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint as a plain dict (tensors and containers only).

        Args:
            rng: the random states of every rank; default this rank's current ones (one process).
        """
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "method_name": self.method.name,
                "settings": {**self._settings, "kl_anneal": schedule_to_spec(self.schedule)},
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
                "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng if rng is not None else [self._rng_state()],
                "history": [dict(r) for r in self.history], **self._loop.to_checkpoint(), "metadata": self.metadata}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint (from :func:`read_checkpoint`); random states are applied when :meth:`fit`
        starts, so that nothing done between loading and fitting disturbs them.

        Raises:
            ValueError: the checkpoint is of another method or was written by another number of ranks.
        """
        if state.get("method_name") != self.method.name:
            raise ValueError(f"the checkpoint holds a {state.get('method_name')!r} method, not {self.method.name!r}")
        if len(state["rng"]) != self.world:
            raise ValueError(f"the checkpoint was written by {len(state['rng'])} data-parallel ranks; resume with "
                             f"as many (now {self.world})")
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.step = state["epoch"], state["step_in_epoch"], state["step"]
        self.history = [dict(r) for r in state["history"]]
        self._loop = LoopState.from_checkpoint(state, self.rank)

    def save_checkpoint(self) -> Path | None:
        """Atomically write ``checkpoint.pt`` (a collective under data parallelism: every rank must call it;
        rank 0 writes). Returns its path, or None without ``checkpoint_dir``."""
        path = self.checkpoint_path
        if path is None:
            return None
        mine = self._loop.step_rng if self._loop.in_step and self._loop.step_rng is not None else self._rng_state()
        rng = dist.gather_objects(mine)
        if dist.is_main():
            state = self.state_dict(rng=rng)  # type: ignore[arg-type]
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        self._loop.saved_step = self.step
        return path

    @classmethod
    def resume(cls, checkpoint_dir: str | Path, method: Method, **overrides: Any) -> Trainer:
        """Rebuild a Trainer from ``checkpoint_dir/checkpoint.pt``; call :meth:`fit` with the same data to
        continue exactly where it stopped.

        The settings stored in the checkpoint (optimizer, lr, eps, epochs, steps, KL schedule, seed,
        factored_grads, amp, clip_grad_norm, checkpoint_every) are reused; ``overrides`` replace them or give
        what is not stored (``device``, ``progress``, ``callbacks``, ``metadata``, a custom ``kl_anneal``;
        raise ``epochs`` or ``steps`` to train further). Later checkpoints go to the same directory.

        Args:
            checkpoint_dir: the directory (or the checkpoint file).
            method: a method built as the checkpointed one was (same name and architecture); its state is
                overwritten.
            **overrides: constructor arguments.

        Raises:
            FileNotFoundError: no checkpoint there.
            ValueError: an unreadable checkpoint, another method, or a custom KL schedule not passed again.
        """
        state = read_checkpoint(checkpoint_dir)
        settings = dict(state["settings"])
        spec = settings.pop("kl_anneal")
        if "kl_anneal" not in overrides:
            if spec.get("kind") == "custom":
                raise ValueError(f"the checkpoint was trained with a custom KL schedule ({spec.get('repr')}); "
                                 f"pass it again: Trainer.resume(..., kl_anneal=...)")
            settings["kl_anneal"] = schedule_from_spec(spec)
        directory = Path(checkpoint_dir)
        if directory.is_file():
            directory = directory.parent
        kwargs = {**settings, "checkpoint_dir": directory, "metadata": state.get("metadata"), **overrides}
        trainer = cls(method, **kwargs)
        trainer.load_state_dict(state)
        return trainer

    def _write_metrics(self, append: dict[str, Any] | None = None) -> None:
        if self.checkpoint_dir is None or not dist.is_main():
            return
        path = self.checkpoint_dir / METRICS
        if append is None:  # the whole file, consistent with the state being trained from
            lines = "".join(json.dumps(r) + "\n" for r in self.history)
            atomic_write(path, lambda tmp: Path(tmp).write_text(lines))
        else:
            with open(path, "a") as f:
                f.write(json.dumps(append) + "\n")

    # ---- the loop -----------------------------------------------------------------------------------------
    def _finished(self) -> bool:
        return ((self.max_steps is not None and self.step >= self.max_steps)
                or (self.epochs is not None and self.epoch >= self.epochs))

    def _source(self, data: Any, num_data: int | None, batch_size: int | None, shuffle: bool,
                drop_last: bool) -> _TensorData | _IterableData:
        if is_pair(data):
            x, y = data
            source: _TensorData | _IterableData = _TensorData(x, y, batch_size, shuffle, drop_last, self.device,
                                                              self.world, self.rank)
            if num_data is not None:
                source.num_data = int(num_data)
            return source
        if batch_size is not None:
            raise ValueError("batch_size applies to an (x, y) tensor pair; a DataLoader batches by itself")
        return _IterableData(data, num_data)

    def _check_data(self, info: dict[str, Any]) -> None:
        if self._loop.data_info is None:
            self._loop.data_info = info
            return
        stored = self._loop.data_info
        diffs = [f"{k} {info[k]!r} (checkpoint: {stored.get(k)!r})" for k in info
                 if stored.get(k) is not None and info[k] is not None and info[k] != stored.get(k)]
        if info["kind"] != stored.get("kind") or diffs:
            what = ", ".join(diffs) or f"{info['kind']} data (checkpoint: {stored.get('kind')})"
            raise ValueError(f"fit() was given other data than the checkpointed run: {what}; resume with the same "
                             f"data and batch_size for an exact continuation")

    def _signal_handlers(self) -> Callable[[], None]:
        """Install the SIGINT / SIGTERM handlers; returns a function restoring the previous ones."""
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._loop.stop_signal is not None and signum == signal.SIGINT:
                raise _HardStop  # a second Ctrl-C: stop at once
            self._loop.stop_signal = name

        for s in previous:
            signal.signal(s, on_signal)

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, handler)

        return restore

    def _emit(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(record)

    def _check_stop(self) -> None:
        stop = self._loop.stop_signal is not None
        if self.world > 1:
            stop = dist.any_rank(stop)
        if stop:
            raise _Stop(self._loop.stop_signal or "a signal on another rank")

    def _record_epoch(self) -> dict[str, Any]:
        sums = dict(self._loop.sums)
        count, seconds = sums.pop("_count", 0.0), sums.pop("_seconds", 0.0)
        record: dict[str, Any] = {k: v / max(count, 1.0) for k, v in sums.items()}
        record.update(epoch=self.epoch, step=self.step, seconds=seconds)
        return record

    def _begin_epoch(self, source: Any) -> None:
        """Start (or re-enter) the current epoch: reset its sums, drop a partial record ``steps`` left, and put
        the random states where an uninterrupted run would have them when the epoch's batches are drawn."""
        loop = self._loop
        if self.step_in_epoch == 0:
            loop.sums, loop.partial_in_history = {}, False
        elif loop.partial_in_history:  # continuing an epoch that ``steps`` cut short
            self.history.pop()
            loop.partial_in_history = False
        if loop.pending_rng is not None and isinstance(source, _IterableData) and self.step_in_epoch:
            if loop.epoch_rng is not None:  # the iterable is re-made as at the epoch's start, then skipped
                torch.set_rng_state(loop.epoch_rng)
            return
        if loop.pending_rng is not None:
            self._set_rng_state(loop.pending_rng)
            loop.pending_rng = None
        if self.step_in_epoch == 0 or loop.epoch_rng is None:
            loop.epoch_rng = torch.get_rng_state()

    def _interrupted(self, err: BaseException) -> str:
        """Checkpoint after a stop where that is safe, and say what happened and where the state is."""
        where = f"epoch {self.epoch}, step {self.step_in_epoch}"
        cause = f" by {err.args[0]}" if isinstance(err, _Stop) else ""
        if self.checkpoint_dir is None:
            return f"interrupted{cause} at {where}; no checkpoint_dir, nothing saved"
        if isinstance(err, _HardStop):
            return (f"interrupted twice at {where}; no checkpoint written (the state may be half updated; "
                    f"the last checkpoint is {self.checkpoint_path})")
        if self.world > 1 and not isinstance(err, _Stop):
            return (f"interrupted at {where} on rank {self.rank} alone; no checkpoint written (the last one "
                    f"is {self.checkpoint_path})")
        self.save_checkpoint()
        return f"interrupted{cause} at {where}; checkpoint written to {self.checkpoint_path}"

    def fit(self, data: Any, num_data: int | None = None, *, batch_size: int | None = None, shuffle: bool = True,
            drop_last: bool = True, transform: Transform | None = None) -> list[dict[str, Any]]:
        """Train until ``epochs`` / ``steps`` are done; returns :attr:`history` (one dict per epoch).

        Data comes in two forms:

        * an ``(x, y)`` tensor pair: without ``batch_size`` every epoch is one full-batch step; with it the
          Trainer draws the minibatches itself (``shuffle``: a fresh permutation per epoch, a function of
          (seed, epoch) only; ``drop_last``: the last incomplete batch is left out). Resuming is exact,
          also in the middle of an epoch. Under data parallelism each rank trains on its share
          (``[rank::world]``) of every global batch of ``batch_size`` examples.
        * any DataLoader or re-iterable of ``(x, y)`` batches: the Trainer takes them in the order given.
          Resuming in the middle of an epoch starts the epoch's iterator again, with torch's CPU random
          state as it was when the epoch began (a shuffling DataLoader draws the same order), skips the
          batches already done, then restores the random states of the interruption. This is exact when the
          pipeline's randomness is drawn when the iterator is made (DataLoader shuffling, worker seeds);
          randomness drawn per batch in the main process is replayed only approximately. Under data
          parallelism, sharding is up to the loader (a ``DistributedSampler``).

        ``transform(x, generator=g)`` is applied to every training batch on the device, with ``g`` the
        Trainer's augmentation generator (seeded per rank, checkpointed).

        Args:
            data: an ``(x, y)`` tensor pair or an iterable of ``(x, y)`` batches.
            num_data: N for the KL scaling; default the pair's size, or for a DataLoader the examples its
                sampler draws from (:func:`bbh.data.batches.training_set_size`: ``len(dataset)``, a
                ``SubsetRandomSampler``'s indices, ...); needed where that is unknown (an IterableDataset).
            batch_size: minibatch size for a tensor pair (None: full batch).
            shuffle: reshuffle a tensor pair every epoch.
            drop_last: leave out a tensor pair's last incomplete minibatch.
            transform: training-time augmentation.

        Raises:
            KeyboardInterrupt: Ctrl-C, SIGTERM or a callback stopped training (after checkpointing when
                there is a ``checkpoint_dir``; the message says where).
            NonFiniteLossError: a NaN or inf loss or gradient norm; no checkpoint is written, the last
                good one is kept and the parameters are those of the last finite step.
            ValueError: bad data, or other data than the checkpointed run's.
        """
        source = self._source(data, num_data, batch_size, shuffle, drop_last)
        num_data = source.num_data
        if num_data is None:
            raise ValueError("num_data (the training-set size N) is needed: pass it, or data with a .dataset")
        if self._loop.pending_rng is not None:  # the first fit after load_state_dict: the same data as before?
            self._check_data(source.info(batch_size))
        else:
            self._loop.data_info = source.info(batch_size)
        per_epoch = source.steps_per_epoch
        if self.lr_schedule != LRSchedule.CONSTANT:
            self._schedule_length(per_epoch)  # a schedule without a known length fails before any step
        fresh = self._loop.pending_rng is None and self.step == 0 and self.epoch == 0 and self.step_in_epoch == 0
        if fresh:
            dist.broadcast_parameters(self.method)
            if self.seed is not None:
                torch.manual_seed(self.seed + self.rank)
            if self._loop.data_seed is None:
                self._loop.data_seed = int(self.seed if self.seed is not None else torch.initial_seed()) % _SEED_MOD
            self.augment.manual_seed((self._loop.data_seed * 7919 + self.rank) % _SEED_MOD)
        data_seed = int(self._loop.data_seed or 0)
        self.method.train()
        self.optimizer.zero_grad(set_to_none=True)
        self._write_metrics()
        bar = tqdm(total=self.planned_steps(per_epoch), initial=self.step,
                   disable=not (self.progress and dist.is_main()), desc=f"train {self.method.name}", leave=False)
        threads.announce()  # the command line's thread choice, once, now that work starts
        lines = None if self.progress or not dist.is_main() else start_lines(  # plain lines for logs, no bar
            f"train {self.method.name}", total_steps=self.planned_steps(per_epoch), steps_per_epoch=per_epoch,
            epochs=self.epochs, start_step=self.step)
        self._loop.stop_signal = None
        restore = self._signal_handlers()
        start = time.perf_counter()
        try:
            while not self._finished():
                start = time.perf_counter()
                self._begin_epoch(source)
                batches = source.batches(data_seed, self.epoch, self.step_in_epoch)
                count, cut = 0, False
                for x, y in batches:
                    if self._loop.pending_rng is not None:  # the iterable's batches already done are skipped
                        self._set_rng_state(self._loop.pending_rng)
                        self._loop.pending_rng = None
                    if self.checkpoint_dir is not None:
                        self._loop.step_rng = self._rng_state()
                    self._loop.in_step = True
                    logged = self.loss_step(x, y, num_data, per_epoch, transform=transform)
                    self._loop.in_step = False
                    self.step_in_epoch += 1
                    count += 1
                    for k, v in logged.items():
                        self._loop.sums[k] = self._loop.sums.get(k, 0.0) + v
                    self._loop.sums["_count"] = self._loop.sums.get("_count", 0.0) + 1
                    bar.update(1)
                    bar.set_postfix(nll=f"{logged['nll']:.4f}", kl=f"{logged['kl']:.4g}",
                                    w=f"{logged['kl_weight']:.3g}", refresh=False)
                    if lines is not None:
                        lines.step(self.epoch, self.step, self.step_in_epoch, self._loop.sums)
                    self._emit({"event": "step", "epoch": self.epoch, "step": self.step,
                                "step_in_epoch": self.step_in_epoch, **logged})
                    self._check_stop()
                    if self.max_steps is not None and self.step >= self.max_steps:
                        cut = True
                        break
                if self._loop.pending_rng is not None:  # resumed after the iterable's last batch: the epoch is done
                    self._set_rng_state(self._loop.pending_rng)
                    self._loop.pending_rng = None
                if count == 0 and self.step_in_epoch == 0:
                    raise ValueError("the training data yielded no batches")
                self._loop.sums["_seconds"] = self._loop.sums.get("_seconds", 0.0) + time.perf_counter() - start
                start = time.perf_counter()
                record = self._record_epoch()
                self.history.append(record)
                if lines is not None:
                    lines.epoch(record, last=cut or (self.epochs is not None and self.epoch + 1 >= self.epochs)
                                or (self.max_steps is not None and self.step >= self.max_steps))
                if cut and (per_epoch is None or self.step_in_epoch < per_epoch):  # stopped by ``steps``
                    self._loop.partial_in_history = True
                    break
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self._loop.sums = {}
                self._write_metrics(append=record)
                if self.epoch % self.checkpoint_every == 0 or self._finished():
                    self.save_checkpoint()
                self._emit({"event": "epoch", **record})
                self._check_stop()
            if self._loop.saved_step != self.step:
                self.save_checkpoint()
        except (KeyboardInterrupt, _Stop) as err:
            self._loop.sums["_seconds"] = self._loop.sums.get("_seconds", 0.0) + time.perf_counter() - start
            raise KeyboardInterrupt(self._interrupted(err)) from None
        finally:
            self._loop.in_step = False
            self._loop.step_rng = None
            restore()
            bar.close()
        return self.history


__all__ = ["CHECKPOINT_VERSION", "NonFiniteLossError", "Trainer",
           "read_checkpoint", "resolve_device"]
