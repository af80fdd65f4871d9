"""Evaluation speed: vectorised posterior predictive against 100 sequential single-sample passes.

    python benchmarks/eval_speed.py --data-dir ../shared/data [--methods bbh,bbb,mc-dropout] [--images 1000]

LeNet-5 with the shipped MNIST configuration of each method (untrained: speed does not depend on the
weights), 100 posterior samples, on the first ``--images`` MNIST test images plus as many notMNIST
images, in batches of 500. "vectorised" is :func:`bbh.evaluation.predictive.predict_batches` (the method's
``sample_outputs`` over all 100 samples at once: one batched hypernet call, vmap over weight samples);
"sequential" is 100 calls of ``sample_outputs(x, 1)`` per batch, the way the authors' code ran 100
separate forward passes. Both run in the same process, alternately; the seconds are extrapolated to the
paper's 10,000 + 10,000 images when ``--images`` is smaller (and labelled so).
"""

from __future__ import annotations

import argparse
import time

import torch

import bbh
from bbh.core.predictive import predict_batches
from bbh.data import load_task
from bbh.experiments.config import load_config
from bbh.experiments.run import build_model


def sequential(method: bbh.Method, batches: list[torch.Tensor], n: int) -> torch.Tensor:
    means = []
    with torch.no_grad():
        for xb in batches:
            means.append(sum(method.sample_outputs(xb, 1)[0].softmax(-1) for _ in range(n)) / n)
    return torch.cat(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--methods", default="bbh,bbb,mc-dropout,mnf")
    parser.add_argument("--images", type=int, default=1000, help="images of each set (paper: 10,000)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=None, help="samples per vectorised call (default: all)")
    args = parser.parse_args()
    task = load_task("mnist", args.data_dir, download=False)
    x = torch.cat([task.test_x[:args.images], task.outlier_x[:args.images]])
    batches = [task.eval_transform(x[i:i + 500]) for i in range(0, x.shape[0], 500)]
    scale = 20_000 / x.shape[0]
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}; {x.shape[0]} images, {args.samples} "
          f"samples, {args.chunk or args.samples} per vectorised call; seconds extrapolated x{scale:g} to "
          f"10,000 MNIST + 10,000 notMNIST images")
    print(f"{'method':12s} {'vectorised s':>13s} {'sequential s':>13s} {'speed-up':>9s}")
    for name in args.methods.split(","):
        config = load_config(f"mnist-{name}")
        torch.manual_seed(0)
        method = bbh.create(name, build_model(config["model"], 10), **config["method"]).eval()
        predict_batches(method, batches[:1], 2)  # warm-up
        start = time.perf_counter()
        predict_batches(method, batches, args.samples, chunk_size=args.chunk)
        t_vec = time.perf_counter() - start
        start = time.perf_counter()
        sequential(method, batches, args.samples)
        t_seq = time.perf_counter() - start
        print(f"{name:12s} {t_vec * scale:13.0f} {t_seq * scale:13.0f} {t_seq / t_vec:8.2f}x")


if __name__ == "__main__":
    main()
