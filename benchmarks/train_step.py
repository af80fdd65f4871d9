"""Time one training step of MAP and of BbH on LeNet-5 with synthetic MNIST-shaped data, in one process.

    python benchmarks/train_step.py [--repeats 10] [--device cpu] [--optimizer adam]

BbH: layer-wise hypernets, d = 1, S = 5 samples per step (one in the likelihood, as the authors), batch
100, the per-weight nearest-neighbour KL. Both methods run through the same ``Trainer.loss_step``. Prints
the median seconds per step of each (the two run alternately) and their ratio; the paper reports BbH at
16.2x MAP's runtime on a GPU (Table 3). Absolute times depend on the machine; the ratio is the number to compare.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import bbh


def make_step(method: bbh.Method, optimizer: str, device: str, native: bool = True):
    """A closure running one ``Trainer.loss_step`` on a fixed synthetic MNIST-shaped batch of 100
    (``native=False``: with :mod:`bbh.native`'s CPU kernels switched off for the step)."""
    trainer = bbh.Trainer(method, optimizer=optimizer, device=device, progress=False)
    x = torch.rand(100, 1, 28, 28, device=trainer.device)
    y = torch.randint(0, 10, (100,), device=trainer.device)

    def step() -> float:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        previous = bbh.native.set_enabled(native)
        start = time.perf_counter()
        trainer.loss_step(x, y, num_data=55_000, steps_per_epoch=550)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        bbh.native.set_enabled(previous)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "rmsprop-tf"],
                        help="BbH's optimizer (MAP always uses Adam, as the authors)")
    parser.add_argument("--no-torch-only", action="store_true",
                        help="skip the third run, BbH with bbh.native's CPU kernels switched off")
    args = parser.parse_args()
    torch.manual_seed(0)

    def bbh_method() -> bbh.Method:
        return bbh.create("bbh", bbh.models.LeNet5(), layout="layerwise", noise_dim=1, num_samples=5)

    steps = {
        "map": make_step(bbh.create("map", bbh.models.LeNet5()), "adam", args.device),
        "bbh": make_step(bbh_method(), args.optimizer, args.device),
    }
    native_used = args.device == "cpu" and bbh.native.kernels() is not None
    if native_used and not args.no_torch_only:
        steps["bbh_torch"] = make_step(bbh_method(), args.optimizer, args.device, native=False)
    medians = interleaved_medians(steps, args.repeats)
    t_map, t_bbh = medians["map"], medians["bbh"]
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"native kernels={'on' if native_used else 'off'}")
    print(f"MAP step                     {t_map * 1e3:8.1f} ms")
    print(f"BbH step ({args.optimizer:10s})          {t_bbh * 1e3:8.1f} ms")
    print(f"ratio BbH / MAP              {t_bbh / t_map:8.1f}x   (paper, GPU: 16.2x)")
    if "bbh_torch" in medians:
        t_torch = medians["bbh_torch"]
        print(f"BbH step, PyTorch path only  {t_torch * 1e3:8.1f} ms   ({t_torch / t_map:.1f}x MAP; "
              f"native kernels {t_torch / t_bbh:.2f}x faster)")


if __name__ == "__main__":
    main()
