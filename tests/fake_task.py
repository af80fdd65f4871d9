"""A tiny in-memory classification task with the interface of ``bbh.data.Task`` (no files, no downloads)."""

from __future__ import annotations

import torch
from torch import Tensor


class FakeTask:
    """Blobs stored as uint8 "images" [N, 1, 2, 2]; the transforms flatten and scale them to [0, 1].

    ``nan_from_call``: the training transform returns NaN from that call on (to test the NaN guard);
    ``interrupt_at_call``: it raises ``interrupt`` at that call (to test checkpoint-and-resume).
    """

    name = "fake"
    num_classes = 3

    def __init__(self, n: int = 96, seed: int = 0, noise: bool = True) -> None:
        self.noise = noise
        g = torch.Generator().manual_seed(seed)
        centres = torch.tensor([[40.0, 40, 200, 200], [200.0, 40, 40, 200], [120.0, 220, 120, 20]])
        self.train_y = torch.randint(0, 3, (n,), generator=g)
        noise = 20 * torch.randn(n, 4, generator=g)
        self.train_x = (centres[self.train_y] + noise).clamp(0, 255).to(torch.uint8).view(n, 1, 2, 2)
        self.test_x, self.test_y = self.train_x[:48], self.train_y[:48]
        self.outlier_x = torch.randint(0, 256, (40, 1, 2, 2), generator=g, dtype=torch.uint8)
        self.calls = 0
        self.nan_from_call: int | None = None
        self.interrupt_at_call: int | None = None
        self.interrupt: type[BaseException] = KeyboardInterrupt

    def train_transform(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self.calls += 1
        if self.interrupt_at_call is not None and self.calls == self.interrupt_at_call:
            raise self.interrupt()
        out = x.float().flatten(1) / 255
        # a little augmentation noise drawn from the run's generator, so that its state matters
        if self.noise:
            out = out + 0.01 * torch.randn(out.shape, generator=generator, device=out.device)
        if self.nan_from_call is not None and self.calls >= self.nan_from_call:
            out = out * float("nan")
        return out

    def eval_transform(self, x: Tensor) -> Tensor:
        return x.float().flatten(1) / 255


def fake_config(method: str = "map", epochs: int = 3, **method_options) -> dict:
    return {"experiment": {"task": "fake", "method": method, "seed": 3},
            "model": {"name": "mlp", "in_features": 4, "hidden": [16]},
            "method": dict(method_options),
            "train": {"epochs": epochs, "batch_size": 16, "lr": 5e-2},
            "eval": {"samples": 4}}
