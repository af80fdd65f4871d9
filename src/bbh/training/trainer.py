"""The training loop shared by every method.

One step: ``terms = method.loss(x, y, num_data=N, kl_weight=schedule(t))``, a finiteness check, backward,
optimizer step, ``method.post_step()``. Losses are logged as separate terms (NLL, KL, KL weight). Data is
any iterable of ``(x, y)`` minibatches (a ``DataLoader``) or one ``(x, y)`` pair of tensors (full batch).
The data pipeline, checkpoints and resume build on this class in :mod:`bbh.data` and the CLI.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..elbo import Schedule, as_schedule
from ..options import OptimizerName, parse_option
from ..posteriors.protocol import Method
from .optim import make_optimizer


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss term is NaN or inf; the parameters are those after the last finite step."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


class Trainer:
    """Fits a :class:`~bbh.posteriors.base.Method` by minimising its per-datum negative ELBO.

    Args:
        method: the method to train (moved to ``device``).
        optimizer: ``"adam"`` or ``"rmsprop-tf"`` (:class:`~bbh.options.OptimizerName`).
        lr: learning rate (default: the method's ``default_lr`` — BbH 1e-4 as the paper —, else Adam 1e-3,
            RMSProp-TF 1e-4).
        eps: optimizer epsilon (default: Adam 1e-8, RMSProp-TF 1e-5).
        epochs: passes over the data (default 1 unless ``steps`` is given).
        steps: stop after this many optimizer steps (overrides ``epochs`` as the stopping rule).
        kl_anneal: a schedule ``f(step, steps_per_epoch) -> weight``, a constant, or None (weight 1).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: seeds torch's generators at the start of :meth:`fit` (None: leave them).
        progress: show a progress bar with the loss terms.
        factored_grads: let hypernet output layers pass their rank-S weight gradients as factors that
            the optimizer expands block by block (:mod:`bbh.optim`); same update, less memory traffic.
        amp: automatic mixed precision for the loss computation: bfloat16 autocast on the CPU, float16
            autocast with a gradient scaler on CUDA (which needs ``factored_grads=False``: the scaler
            only sees ``.grad``). Hypernet output layers and the KL estimators stay in float32.
        grad_hook: called with the trainable parameters after every backward pass, before the optimizer
            step (data-parallel training averages the gradients there, :mod:`bbh.distributed`).
    """

    def __init__(self, method: Method, *, optimizer: OptimizerName | str = "adam", lr: float | None = None,
                 eps: float | None = None, epochs: int | None = None, steps: int | None = None,
                 kl_anneal: Schedule | float | None = None, device: str | torch.device = "auto",
                 seed: int | None = None, progress: bool = True, factored_grads: bool = True, amp: bool = False,
                 grad_hook: Callable[[list[torch.nn.Parameter]], None] | None = None) -> None:
        if not isinstance(method, Method):
            raise TypeError(f"method must be a bbh Method (see bbh.create), got {type(method).__name__}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.device = resolve_device(device)
        self.method = method.to(self.device)
        if lr is None:
            lr = method.default_lr.get(parse_option(OptimizerName, optimizer, "optimizer").value)
        self.amp = bool(amp)
        self.scaler = None
        if self.amp and self.device.type == "cuda":
            if factored_grads:
                raise ValueError("amp on CUDA uses a gradient scaler, which needs factored_grads=False")
            self.scaler = torch.amp.GradScaler("cuda")
        self.grad_hook = grad_hook
        self.params = method.trainable_parameters()
        self.optimizer = make_optimizer(optimizer, self.params, lr=lr, eps=eps, factored=factored_grads)
        self.epochs = epochs if epochs is not None else (None if steps is not None else 1)
        self.max_steps = steps
        self.schedule = as_schedule(kl_anneal)
        self.seed = seed
        self.progress = progress
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _batches(self, data: Any) -> tuple[Iterable[tuple[Tensor, Tensor]], int | None, int | None]:
        """(iterable of batches, batches per epoch, N if known)."""
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
            x, y = data
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x and y have different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
            return [(x, y)], 1, int(x.shape[0])
        dataset = getattr(data, "dataset", None)
        n = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        per_epoch = len(data) if hasattr(data, "__len__") else None
        return data, per_epoch, n

    def loss_step(self, x: Tensor, y: Tensor, num_data: int, steps_per_epoch: int | None) -> dict[str, float]:
        """One optimisation step on one minibatch; returns the logged terms."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
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
                + "; the parameters are those of the last finite step (lower the learning rate?)")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(terms.total.float()).backward()
            self.scaler.unscale_(self.optimizer)
            if self.grad_hook is not None:
                self.grad_hook(self.params)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            terms.total.backward()
            if self.grad_hook is not None:
                self.grad_hook(self.params)
            self.optimizer.step()
        logged.update(self.method.post_step())
        self.step += 1
        return logged

    def fit(self, data: Any, num_data: int | None = None) -> list[dict[str, float]]:
        """Train on ``data``; returns one dict per epoch (mean terms, ``seconds``, ``epoch``, ``step``).

        Args:
            data: a DataLoader (or any re-iterable of ``(x, y)`` batches) or an ``(x, y)`` tensor pair.
            num_data: N for the KL scaling; default ``len(data.dataset)`` or the pair's size.
        """
        batches, per_epoch, n = self._batches(data)
        num_data = num_data if num_data is not None else n
        if num_data is None:
            raise ValueError("num_data (the training-set size N) is needed: pass it, or data with a .dataset")
        if self.seed is not None:
            torch.manual_seed(self.seed)
        self.method.train()
        total = self.max_steps if self.max_steps is not None else (
            self.epochs * per_epoch if per_epoch is not None else None)
        bar = tqdm(total=total, disable=not self.progress, desc=f"train {self.method.name}", leave=False)
        epoch = 0
        try:
            while self.epochs is None or epoch < self.epochs:
                sums: dict[str, float] = {}
                count, start = 0, time.perf_counter()
                for x, y in batches:
                    logged = self.loss_step(x, y, num_data, per_epoch)
                    for k, v in logged.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                    bar.update(1)
                    bar.set_postfix(nll=f"{logged['nll']:.4f}", kl=f"{logged['kl']:.4g}",
                                    w=f"{logged['kl_weight']:.3g}", refresh=False)
                    if self.max_steps is not None and self.step >= self.max_steps:
                        break
                if count == 0:
                    raise ValueError("the training data yielded no batches")
                record = {k: v / count for k, v in sums.items()}
                record.update(epoch=epoch, step=self.step, seconds=time.perf_counter() - start)
                self.history.append(record)
                epoch += 1
                if self.max_steps is not None and self.step >= self.max_steps:
                    break
        finally:
            bar.close()
        return self.history
