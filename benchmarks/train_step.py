"""Time one training step of MAP and of each method on LeNet-5 with synthetic MNIST-shaped data, in one process.

    python benchmarks/train_step.py [--methods map,bbh | all] [--repeats 20] [--device cpu] [--optimizer adam]

Batch 100. BbH: layer-wise hypernets, d = 1, S = 5 samples per step (one in the likelihood, as the
authors), the per-weight nearest-neighbour KL; the ensemble: 10 members with adversarial training; the
others with their defaults. Every method runs the same step as the Trainer's: ``method.loss``, a finiteness
check of the logged terms, ``with optimizer.factored_backward(): loss.backward()`` (bbh's optimizers take
the hypernet heads' rank-S weight gradients as factors there; a no-op for the other methods),
``optimizer.step()``, ``method.post_step()``. Prints the median seconds per step of each (all run
alternately) and the ratio to MAP next to the paper's Table 3 (GPU), and, on the CPU, BbH once more with
the native kernels of :mod:`bbh.backends.native` switched off ("PyTorch path only"). Absolute times depend
on the machine; the ratios are the numbers to compare.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

import bbh
from bbh.training.optim import make_optimizer


def make_step(method: bbh.Method, optimizer: str, device: str, native: bool = True, *,
              input_shape: tuple[int, ...] = (1, 28, 28), batch: int = 100, classes: int = 10,
              num_data: int = 55_000):
    """A closure running one training step (the Trainer's, see the module docstring) on a fixed synthetic
    batch (default MNIST-shaped, 100 images) and returning its seconds (``native=False``: with
    :mod:`bbh.backends.native`'s CPU kernels switched off for the step)."""
    dev = torch.device(device)
    method = method.to(dev).train()
    lr = method.default_lr.get(optimizer)
    opt = make_optimizer(optimizer, method.trainable_parameters(), lr=lr)
    x = torch.rand(batch, *input_shape, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)

    def step() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        previous = bbh.backends.native.set_enabled(native)
        start = time.perf_counter()
        terms = method.loss(x, y, num_data=num_data, kl_weight=1.0)
        if not all(math.isfinite(v) for v in terms.as_floats().values()):
            raise FloatingPointError(f"non-finite loss in the benchmark: {terms.as_floats()}")
        opt.zero_grad(set_to_none=True)
        with opt.factored_backward():
            terms.total.backward()
        opt.step()
        method.post_step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        bbh.backends.native.set_enabled(previous)
        return elapsed

    return step


def interleaved_medians(steps: dict[str, Callable[[], float]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per step of each closure, run alternately so that machine noise hits all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step())
    return {name: statistics.median(t) for name, t in times.items()}


PAPER_RATIOS = {"map": 1.0, "mc-dropout": 1.7, "ensemble": 3.8, "bbb": 4.1, "mnf": 30.7, "bbh": 16.2}
"""Runtime relative to MAP in the paper's Table 3 (GPU)."""

METHOD_OPTIONS = {
    "map": {},
    "mc-dropout": {},
    "ensemble": {"members": 10},  # the authors' MNIST ensemble, adversarial training on
    "bbb": {},
    "mnf": {},
    "bbh": {"layout": "layerwise", "noise_dim": 1, "draws_per_step": 5},
}


def main() -> None:
    # As the ``bbh`` command line: transparent huge pages for large CPU tensors (an application may set this,
    # the library does not). PyTorch reads it at its first CPU allocation, which comes after this line.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "rmsprop-tf"],
                        help="BbH's optimizer (the baselines always use Adam, as the authors)")
    parser.add_argument("--methods", default="map,bbh",
                        help="comma-separated methods to time besides MAP, or 'all' "
                             f"({','.join(METHOD_OPTIONS)})")
    parser.add_argument("--no-torch-only", action="store_true",
                        help="skip the extra run of BbH with bbh.backends.native's CPU kernels switched off")
    args = parser.parse_args()
    names = list(METHOD_OPTIONS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in names if m not in METHOD_OPTIONS or m not in bbh.available_methods()]
    if unknown:
        parser.error(f"unknown or unavailable method(s) {unknown}; available: {bbh.available_methods()}")
    names = ["map", *[m for m in names if m != "map"]]
    torch.manual_seed(0)

    def method(name: str) -> bbh.Method:
        return bbh.create(name, bbh.models.LeNet5(), **METHOD_OPTIONS[name])

    steps = {name: make_step(method(name), args.optimizer if name == "bbh" else "adam", args.device)
             for name in names}
    native_used = args.device == "cpu" and bbh.backends.native.kernels() is not None
    if "bbh" in names and native_used and not args.no_torch_only:
        steps["bbh, PyTorch path only"] = make_step(method("bbh"), args.optimizer, args.device, native=False)
    medians = interleaved_medians(steps, args.repeats)
    t_map = medians["map"]
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"native kernels={'on' if native_used else 'off'} BbH optimizer={args.optimizer}")
    print(f"{'method':24s} {'step':>10s} {'/ MAP':>7s} {'paper (GPU)':>12s}")
    for name, t in medians.items():
        paper = PAPER_RATIOS.get(name)
        print(f"{name:24s} {t * 1e3:8.1f}ms {t / t_map:6.1f}x {'' if paper is None else f'{paper:.1f}x':>12s}")
    if "bbh, PyTorch path only" in medians:
        print(f"native kernels make the BbH step {medians['bbh, PyTorch path only'] / medians['bbh']:.2f}x faster")


if __name__ == "__main__":
    main()
