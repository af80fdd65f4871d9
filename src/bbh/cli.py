"""The ``bbh`` command line.

    bbh toy [--out DIR] [--methods bbh,map,...] [--seed S] [--faithful] [--samples N] [--no-hmc]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _methods(value: str) -> tuple[str, ...]:
    from .experiments.toy import TOY_METHODS

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in TOY_METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(TOY_METHODS)}")
    return names


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbh", description="Bayes by Hypernet: implicit weight posteriors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    toy = sub.add_parser("toy", help="the toy regression of paper Fig. 1 (no download, < 1 minute on a CPU)",
                         description="Train on 20 points of y = x^3 + N(0, 9^2); write toy.png and toy.json.")
    toy.add_argument("--out", default="runs/toy", help="output directory (default: runs/toy)")
    toy.add_argument("--methods", type=_methods, default=None, help="comma-separated methods (default: all)")
    toy.add_argument("--seed", type=int, default=0, help="seed of the networks' initialisation and noise")
    toy.add_argument("--samples", type=_positive, default=100, help="posterior samples for the predictive")
    toy.add_argument("--faithful", action="store_true",
                     help="the authors' exact toy settings (their KL is switched off after 10 iterations)")
    toy.add_argument("--progress", action="store_true", help="show training progress bars")
    toy.add_argument("--no-hmc", action="store_true",
                     help="skip the HMC reference panel (computed once in ~15 s, then read from ~/.cache/bbh)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "toy":
        from .experiments.toy import TOY_METHODS, run_toy

        report = run_toy(args.out, methods=args.methods or TOY_METHODS, seed=args.seed,
                         faithful=args.faithful, n_samples=args.samples, progress=args.progress,
                         hmc=not args.no_hmc)
        hmc = report.get("hmc")
        print(f"{'method':11s} {'RMSE':>6s} {'std |x|<=4':>11s} {'std 5<=|x|<=6':>14s} {'train s':>8s}"
              + ("   std / HMC (in, out)" if hmc else ""))
        for name, s in report["methods"].items():
            ratios = f"   {s['std_ratio_inside']:5.2f}, {s['std_ratio_outside']:5.2f}" if hmc else ""
            print(f"{name:11s} {s['rmse']:6.1f} {s['std_inside']:11.2f} {s['std_outside']:14.2f} "
                  f"{s['train_seconds']:8.1f}" + ratios)
        if hmc:
            print(f"{'hmc':11s} {hmc['rmse']:6.1f} {hmc['std_inside']:11.2f} {hmc['std_outside']:14.2f} "
                  f"{hmc['seconds']:8.1f}   (reference{', cached' if hmc['cached'] else ''})")
        print(f"wrote {args.out}/toy.png and {args.out}/toy.json")
        return 0
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
