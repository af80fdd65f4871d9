"""The ``bbh`` command line.

    bbh toy [--out DIR] [--methods bbh,map,...] [--seed S] [--faithful] [--samples N] [--no-hmc]
    bbh train                                   # lists the shipped experiments
    bbh train --config mnist-bbh [--set train.epochs=1 ...] [--data-dir DIR] [--run-dir DIR]
    bbh train --task mnist --method map [--epochs 1] [--lr 1e-3] [--seed 0] ...
    bbh train --resume RUN_DIR
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

    train = sub.add_parser("train", help="train a method on MNIST or CIFAR-5 (the paper's experiments)",
                           description="Train one experiment in a run directory (config, metrics.jsonl, "
                                       "checkpoints, final model); without arguments, list the experiments.")
    train.add_argument("--config", help="a shipped experiment name (e.g. mnist-bbh) or a TOML file")
    train.add_argument("--task", help="with --method: the shipped experiment TASK-METHOD")
    train.add_argument("--method", help="with --task: the shipped experiment TASK-METHOD")
    train.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                       help="override a config value (repeatable), e.g. --set train.epochs=1")
    for flag, key in (("--epochs", "train.epochs"), ("--lr", "train.lr"), ("--batch-size", "train.batch_size"),
                      ("--optimizer", "train.optimizer"), ("--seed", "experiment.seed"),
                      ("--device", "train.device"), ("--samples", "eval.samples")):
        train.add_argument(flag, dest=key, help=f"shortcut for --set {key}=...")
    train.add_argument("--amp", action="store_true", help="automatic mixed precision (--set train.amp=true)")
    train.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    train.add_argument("--data-dir", help="where the data lives (default: $BBH_DATA_DIR, else ~/.cache/bbh/data)")
    train.add_argument("--run-dir", help="the run directory (default: runs/NAME-YYYYmmdd-HHMMSS)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return parser


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time
    from pathlib import Path

    from .config import available_experiments, load_config
    from .experiments.run import Run
    from .train import NonFiniteLossError

    if args.resume:
        run = Run.resume(args.resume, data_dir=args.data_dir, progress=args.progress)
    else:
        if args.config and (args.task or args.method):
            parser.error("give either --config or --task/--method")
        if bool(args.task) != bool(args.method):
            parser.error("--task and --method go together")
        source = args.config or (f"{args.task}-{args.method}" if args.task else None)
        if source is None:
            print("experiments shipped with bbh (bbh train --config NAME, or --task T --method M):")
            for name in available_experiments():
                print(f"  {name}")
            return 0
        overrides = list(args.set)
        for key in ("train.epochs", "train.lr", "train.batch_size", "train.optimizer", "experiment.seed",
                    "train.device", "eval.samples"):
            value = getattr(args, key)
            if value is not None:
                overrides.append(f"{key}={value}" if key not in ("train.optimizer", "train.device")
                                 else f'{key}="{value}"')
        if args.amp:
            overrides.append("train.amp=true")
        if args.deterministic:
            overrides.append("train.deterministic=true")
        config = load_config(source, overrides)
        run_dir = Path(args.run_dir or f"runs/{config['experiment']['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (run_dir / "checkpoint.pt").exists():
            parser.error(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                         f"or choose another --run-dir")
        run = Run(config, run_dir, data_dir=args.data_dir, progress=args.progress)
    try:
        summary = run.train()
    except KeyboardInterrupt as err:
        print(f"{err}\ncontinue with: bbh train --resume {run.run_dir}", file=sys.stderr)
        return 130
    except NonFiniteLossError as err:
        print(f"training stopped: {err}\nthe last good checkpoint is {run.run_dir / 'checkpoint.pt'}",
              file=sys.stderr)
        return 1
    print(f"test accuracy {summary['test_accuracy']:.4f}, test NLL {summary['test_nll']:.4f} "
          f"({summary['eval_samples']} samples); run directory {run.run_dir}")
    return 0


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
    if args.command == "train":
        try:
            return _train(args, parser)
        except (ValueError, FileNotFoundError) as err:
            print(f"bbh train: {err}", file=sys.stderr)
            return 2
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
