"""The evaluation of a table row, phase by phase: a 100-sample evaluation of a LeNet-5 BbH (the shipped
``mnist-bbh`` configuration) on 10,000 MNIST + 10,000 notMNIST test images with the FGSM grid on the first
1,000 test images — what ``bbh reproduce table3 --budget paper`` does per run (issue target: <= 5 minutes on
2 CPU cores).

    python benchmarks/eval_phases.py --data-dir ../shared/data [--method bbh] [--images 10000] [--adv 1000]
        [--samples 100] [--chunk N] [--batch 500] [--repeats 1]

The network is untrained (the time does not depend on the weights). Phases are timed through
``bbh.evaluate``'s progress callback: ``test`` (predictions on the MNIST test images), ``ood:outliers``
(notMNIST), ``attack:fgsm`` (the FGSM curve: per epsilon one gradient of the authors' averaged loss and one
predictive). Prints the seconds of every phase and the total, with the CPU and thread count, and each phase
extrapolated linearly to the full 10,000 + 10,000 images and 1,000 FGSM images when fewer were run (the
posterior draws are made once per evaluation, so every image costs the same); ``--repeats`` runs the whole
evaluation again and reports the range.
"""

from __future__ import annotations

import argparse
import time

import torch

import bbh
from bbh.data import load_task
from bbh.evaluation.api import AttackSpec
from bbh.experiments.config import load_config
from bbh.experiments.costs import cpu_name
from bbh.experiments.run import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--method", default="bbh", help="a shipped MNIST experiment's method (mnist-METHOD)")
    parser.add_argument("--images", type=int, default=10_000, help="MNIST test and notMNIST images (paper: 10,000)")
    parser.add_argument("--adv", type=int, default=1_000, help="FGSM on the first this many test images")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=None, help="posterior draws per forward pass (default: all)")
    parser.add_argument("--batch", type=int, default=500, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    config = load_config(f"mnist-{args.method}")
    task = load_task("mnist", args.data_dir, download=False)
    torch.manual_seed(0)
    method = bbh.create(config["experiment"]["method"], build_model(config["model"], task.num_classes),
                        **config["method"]).eval()
    test = (task.test_x[:args.images], task.test_y[:args.images])
    ood = {"outliers": task.outlier_x[:args.images]}
    attack = AttackSpec("fgsm", images=args.adv, samples=args.samples)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; mnist-{args.method}, "
          f"{args.samples} samples, {args.images} + {args.images} images, FGSM on {args.adv}, batch {args.batch}, "
          f"chunk {args.chunk or 'all'}")
    totals: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        marks: list[tuple[str, float]] = []
        start = time.perf_counter()
        bbh.evaluate(method, test, ood=ood, attacks=[attack], n_samples=args.samples, chunk_size=args.chunk,
                     batch_size=args.batch, transform=task.eval_transform, seed=0,
                     progress=lambda phase, marks=marks: marks.append((phase, time.perf_counter())))
        end = time.perf_counter()
        bounds = [t for _, t in marks[1:]] + [end]
        for (phase, t0), t1 in zip(marks, bounds):
            totals.setdefault(phase, []).append(t1 - t0)
        totals.setdefault("total", []).append(end - start)
    # per-image costs are constant (the draws are made once per evaluation), so smaller runs scale linearly
    scale = {"test": 10_000 / args.images, "ood:outliers": 10_000 / args.images, "attack:fgsm": 1_000 / args.adv}
    full = [sum(totals[p][i] * scale.get(p, 1.0) for p in totals if p != "total") for i in range(args.repeats)]
    print(f"{'phase':14s} {'measured':>12s} {'at 10k+10k, FGSM 1k':>22s}")
    for phase, values in totals.items():
        f = scale.get(phase, 1.0)
        span = f"{min(values):.1f}" if len(values) == 1 else f"{min(values):.1f}-{max(values):.1f}"
        ext = full if phase == "total" else [v * f for v in values]
        est = f"{min(ext):.0f}" if len(ext) == 1 else f"{min(ext):.0f}-{max(ext):.0f}"
        print(f"{phase:14s} {span:>10s} s {est:>20s} s")


if __name__ == "__main__":
    main()
