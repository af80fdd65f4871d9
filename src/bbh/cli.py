"""The ``bbh`` command line.

    bbh toy [--out DIR] [--methods bbh,map,...] [--seed S] [--faithful] [--samples N] [--no-hmc]
    bbh train                                   # lists the shipped experiments
    bbh train --config mnist-bbh [--set train.epochs=1 ...] [--data-dir DIR] [--run-dir DIR]
    bbh train --task mnist --method map [--epochs 1] [--lr 1e-3] [--seed 0] ...
    bbh train ... [--no-keep-checkpoint] [--model-dtype bfloat16]   # smaller finished run directories
    bbh train --resume RUN_DIR [--set train.epochs=N] [--samples N]
    bbh evaluate RUN_DIR [--all] [--samples N] [--adv-gradient authors|expectation] [--pgd]
    bbh compare RUN_DIR ... [--out DIR]
    bbh uci [--data-dir DIR] [--datasets a,b] [--methods map,...,bbh,hmc,nuts] [--splits K] [--budget quick|full]
            [--split-kind standard|gap] [--out DIR] [--download] [--report-only] [--merge RESULTS_JSON]
    bbh reproduce NAME [--budget smoke|cpu|paper] [--out DIR] [--data-dir DIR] [--device auto|cpu|cuda] [--plan]

Every command checks that its output folder can be written to before it computes anything. Errors that are
not about the command line (a missing or unwritable folder, a bad configuration, a run that cannot be
resumed) are one line ``bbh: ...`` on stderr and exit status 2; wrong arguments print the usage. Progress
bars are on when stderr is a terminal (``--progress`` / ``--no-progress`` force them on or off); without a
terminal and without either flag, training prints plain lines instead (a plan, then one per epoch, at most one
per 30 s, with an ETA: :mod:`bbh.training.progress`). Ctrl-C (SIGINT) stops any command with one line
``bbh: interrupted...`` and exit status 130; files are written whole or not at all.

The commands that train take ``--threads N``; without it they choose (:mod:`bbh.threads`, ``docs/threads.md``):
one thread for the small networks of ``toy`` and ``uci``, the cores the process may use for ``train`` and
``reproduce``, ``OMP_NUM_THREADS`` when it is set; the choice is said in one line when work starts.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .core.threads import Kind

TRAIN_SHORTCUTS = {"--epochs": "train.epochs", "--lr": "train.lr", "--batch-size": "train.batch_size",
                   "--optimizer": "train.optimizer", "--seed": "experiment.seed", "--device": "train.device",
                   "--samples": "eval.samples", "--model-dtype": "train.model_dtype",
                   "--lr-schedule": "train.lr_schedule"}
"""``bbh train`` flags that stand for ``--set TABLE.KEY=VALUE``."""

STRING_KEYS = ("train.optimizer", "train.device", "train.model_dtype", "train.lr_schedule")
"""Shortcut keys whose values are strings (quoted for TOML)."""

THREAD_KINDS: dict[str, Kind] = {"toy": "small", "uci": "small", "train": "large", "reproduce": "large"}
"""The commands that train, and the kind of work each does (:func:`bbh.threads.choose_threads`)."""

WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
"""Errors of a write that fails mid-way (after the up-front check): reported in one line, exit status 1."""


def _methods(value: str) -> tuple[str, ...]:
    from .experiments.toy import TOY_METHODS

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in TOY_METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(TOY_METHODS)}")
    return names


def _names(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
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
    toy.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="training progress bars (default: when stderr is a terminal)")
    toy.add_argument("--no-hmc", action="store_true",
                     help="skip the HMC reference panel (computed once in ~15 s, then read from ~/.cache/bbh)")
    toy.add_argument("--threads", metavar="N", help="torch threads (default: 1, the fastest for these small "
                                                    "networks; OMP_NUM_THREADS when set)")

    train = sub.add_parser("train", help="train a method on MNIST or CIFAR-5 (the paper's experiments)",
                           description="Train one experiment in a run directory (config, metrics.jsonl, "
                                       "checkpoints, final model); without arguments, list the experiments.")
    train.add_argument("--config", help="a shipped experiment name (e.g. mnist-bbh) or a TOML file")
    train.add_argument("--task", help="with --method: the shipped experiment TASK-METHOD")
    train.add_argument("--method", help="with --task: the shipped experiment TASK-METHOD")
    train.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                       help="override a config value (repeatable), e.g. --set train.epochs=1")
    for flag, key in TRAIN_SHORTCUTS.items():
        choices = {"train.model_dtype": ("float32", "bfloat16"), "train.lr_schedule": ("constant", "cosine")}.get(key)
        train.add_argument(flag, dest=key, choices=choices, help=f"shortcut for --set {key}=...")
    train.add_argument("--keep-checkpoint", dest="train.keep_checkpoint", action=argparse.BooleanOptionalAction,
                       default=None, help="keep checkpoint.pt once the run has finished (default: yes; "
                                          "--set train.keep_checkpoint=false)")
    train.add_argument("--amp", action="store_true", help="automatic mixed precision (--set train.amp=true)")
    train.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    train.add_argument("--data-dir", help="where the data lives (default: $BBH_DATA_DIR, else ~/.cache/bbh/data)")
    train.add_argument("--download", action="store_true", help="fetch missing data files first (verified)")
    train.add_argument("--run-dir", help="the run directory (default: runs/NAME-YYYYmmdd-HHMMSS)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its checkpoint (with its own data directory; --set "
                            "may change only train.epochs, eval.samples, train.keep_checkpoint, train.model_dtype)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bars (default: when stderr is a terminal)")
    train.add_argument("--threads", metavar="N", help="torch threads (default: the cores this process may use; "
                                                      "OMP_NUM_THREADS when set)")

    ev = sub.add_parser("evaluate", help="evaluate finished runs: metrics, OOD, FGSM, figures, report.md",
                        description="Write RUN_DIR/eval/{results.json, report.md, *.png} for a finished run.")
    ev.add_argument("run_dir", help="a run directory (or, with --all, a directory of runs)")
    ev.add_argument("--all", action="store_true", help="evaluate every finished run below RUN_DIR")
    ev.add_argument("--data-dir", help="where the data lives")
    ev.add_argument("--download", action="store_true", help="fetch missing data files first (verified)")
    ev.add_argument("--samples", type=_positive, help="posterior samples (default: the run's eval.samples)")
    ev.add_argument("--batch-size", type=_positive, default=500, help="examples per forward pass (default: 500)")
    ev.add_argument("--chunk-size", type=_positive,
                    help="posterior draws evaluated at once (default: all; bounds memory: a forward pass holds "
                         "the activations of chunk x batch examples)")
    ev.add_argument("--adv-images", type=_positive, default=100, help="test images attacked (authors: 100)")
    ev.add_argument("--adv-gradient", choices=["authors", "expectation"], default="authors")
    ev.add_argument("--adv-samples", type=_positive, help="posterior samples per attack (default: --samples)")
    ev.add_argument("--clamp", action="store_true", help="clip adversarial MNIST images to [0, 1]")
    ev.add_argument("--pgd", action="store_true", help="also attack with PGD")
    ev.add_argument("--no-adversarial", action="store_true")
    ev.add_argument("--no-probes", action="store_true")
    ev.add_argument("--no-posterior-plots", action="store_true")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar (default: when stderr is a terminal)")

    uci = sub.add_parser("uci", help="the UCI regression benchmark (test LL and RMSE over the standard splits)",
                         description="Train and score every method on every split of the UCI regression datasets "
                                     "under DIR/uci/ (the layout of the published experiment code); finished cells "
                                     "are kept, so rerunning the same command resumes. Writes OUT/results.json and "
                                     "OUT/report.md (results-gap.json / report-gap.md for --split-kind gap).")
    uci.add_argument("--data-dir", help="holds uci/<dataset>/ folders (default: $BBH_DATA_DIR, else ~/.cache/bbh/data)")
    uci.add_argument("--datasets", type=_names, help="comma-separated dataset folder names (default: all found)")
    uci.add_argument("--methods", type=_names, default=None,
                     help="comma-separated, from map, mc-dropout, ensemble, bbb, mnf, bbh (tuned), the same with "
                          "-untuned, and the references hmc and nuts (nuts: pip install -e '.[reference]'; default: "
                          "the six methods tuned and untuned)")
    uci.add_argument("--splits", type=_positive, help="the first K splits (default: the budget's)")
    uci.add_argument("--budget", choices=["quick", "full"], default="full",
                     help="full: every split, 4,000-8,000 steps; quick: 2 splits, <= 1,200 steps (default: full)")
    uci.add_argument("--split-kind", choices=["standard", "gap"], default="standard",
                     help="standard: the published splits; gap: hold out the middle third along each input with a "
                          "real gap")
    uci.add_argument("--out", default="runs/uci", help="output directory (default: runs/uci)")
    uci.add_argument("--seed", type=int, default=0, help="base seed (split k trains with seed + k)")
    uci.add_argument("--download", action="store_true",
                     help="download the named (default: the nine standard) datasets that are missing, verified")
    uci.add_argument("--report-only", action="store_true",
                     help="train nothing: write results.json and report.md from the cells already in --out")
    uci.add_argument("--merge", metavar="RESULTS_JSON",
                     help="an earlier run's results.json: tabulate the methods not in --methods from it (same "
                          "budget and split kind), e.g. after rerunning one method into a new --out")
    uci.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")
    uci.add_argument("--threads", metavar="N", help="torch threads per process (default: 1, the fastest for these "
                                                    "small networks; OMP_NUM_THREADS when set)")

    rep = sub.add_parser("reproduce", help="regenerate a table or figure of the paper (Tables 1-5, Figs. 1, 3-9)",
                         description="Train (through the Trainer, resumable: finished runs are skipped, a killed one "
                                     "continues) and evaluate the runs a table or figure of the paper needs, and write "
                                     "OUT/NAME.md and .csv (tables, the paper's numbers beside ours) or .png.")
    rep.add_argument("name", choices=["all", "fig1", "table1", "table2", "table3", "table4", "table5", "fig3", "fig4",
                                      "fig5-9"])
    rep.add_argument("--budget", choices=["smoke", "cpu", "paper"], default="cpu",
                     help="smoke: tiny subsets (seconds); cpu: ~1 h per table on 2 cores (default); paper: the "
                          "paper's epochs and sets, for a GPU")
    rep.add_argument("--out", help="output directory (default: runs/reproduce-BUDGET)")
    rep.add_argument("--data-dir", help="MNIST, notMNIST and CIFAR-10 (default: $BBH_DATA_DIR, else ~/.cache/bbh/data)")
    rep.add_argument("--download", action="store_true", help="fetch missing data files first (verified)")
    rep.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    rep.add_argument("--plan", action="store_true",
                     help="print the planned runs with a time estimate from stored step costs and exit")
    rep.add_argument("--measure", action="store_true",
                     help="with --plan: time every run's steps at full size here (minutes per run, GBs) and keep them "
                          "for later plans")
    rep.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars (default: when stderr is a terminal)")
    rep.add_argument("--threads", metavar="N", help="torch threads (default: the cores this process may use, 1 "
                                                    "for the toy of fig1; OMP_NUM_THREADS when set)")

    cmp = sub.add_parser("compare", help="Tables 3/4-style comparison of evaluated runs",
                         description="Write compare.md, compare.csv and adversarial.png into --out.")
    cmp.add_argument("run_dirs", nargs="+")
    cmp.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    return parser


def _evaluate(args: argparse.Namespace) -> int:

    from .core.io import ensure_writable
    from .reports.runs import evaluate_run
    from .training.run_files import EVAL, MODEL, REPORT

    root = Path(args.run_dir)
    runs = sorted(p.parent for p in root.glob(f"*/{MODEL}")) if args.all else [root]
    if not runs:
        raise FileNotFoundError(f"no finished runs (with model.pt) below {root}")
    if args.all:  # every output folder before the first evaluation (evaluate_run checks its own)
        for run in runs:
            ensure_writable(run)
    for run in runs:
        r = evaluate_run(run, args.data_dir, n_samples=args.samples, batch_size=args.batch_size,
                         chunk_size=args.chunk_size, adversarial=not args.no_adversarial,
                         adv_images=args.adv_images, adv_gradient=args.adv_gradient, adv_samples=args.adv_samples,
                         clamp=args.clamp, pgd=args.pgd, probes=not args.no_probes,
                         posterior_plots=not args.no_posterior_plots, progress=args.progress,
                         download=args.download)
        t = r["test"]
        print(f"{run}: error {t['error_percent']:.2f} %, NLL {t['nll']:.4f}, ECE {t['ece']:.4f}, entropy AUC "
              f"{t['entropy_auc']:.3f}" + (f", outlier AUC {r['outliers']['entropy_auc']:.3f}, OOD AUROC "
                                           f"{r['ood']['entropy']['auroc']:.3f}" if "outliers" in r else
                                           f"; {r['ood_skipped']}" if "ood_skipped" in r else "")
              + f"; wrote {run / EVAL / REPORT}")
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` assignments plus those the shortcut flags stand for."""
    overrides = list(args.set)
    for key in TRAIN_SHORTCUTS.values():
        value = getattr(args, key)
        if value is not None:
            overrides.append(f'{key}="{value}"' if key in STRING_KEYS else f"{key}={value}")
    keep = getattr(args, "train.keep_checkpoint")
    if keep is not None:
        overrides.append(f"train.keep_checkpoint={'true' if keep else 'false'}")
    if args.amp:
        overrides.append("train.amp=true")
    if args.deterministic:
        overrides.append("train.deterministic=true")
    return overrides


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time

    from .experiments.config import available_experiments, load_config
    from .experiments.run import Run
    from .training.run_files import CHECKPOINT, CONFIG, MODEL
    from .training.trainer import NonFiniteLossError

    if args.resume:
        if args.config or args.task or args.method:
            parser.error("--resume continues a run with its own configuration: no --config, --task or --method "
                         "(--set may change train.epochs, eval.samples, train.keep_checkpoint, train.model_dtype)")
        if args.run_dir:
            parser.error("--resume RUN_DIR names the run directory: no --run-dir")
        run = Run.resume(args.resume, data_dir=args.data_dir, progress=args.progress, overrides=_overrides(args))
        if run.restarted:
            print(f"bbh: {run.run_dir} has no checkpoint (it stopped before the end of its first epoch): "
                  f"training it from the beginning", file=sys.stderr)
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
        config = load_config(source, _overrides(args))
        run_dir = Path(args.run_dir or f"runs/{config['experiment']['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
        if any((run_dir / name).exists() for name in (CHECKPOINT, CONFIG, MODEL)):
            raise ValueError(f"{run_dir} already holds a run; continue it with: bbh train --resume {run_dir} "
                             f"(or choose another --run-dir)")
        if args.download:
            from .data import fetch
            fetch(config["experiment"]["task"], args.data_dir, progress=args.progress)
        run = Run(config, run_dir, data_dir=args.data_dir, progress=args.progress)
    try:
        summary = run.train()
    except KeyboardInterrupt as err:
        return _interrupted(f"{err or 'interrupted'}; continue with: bbh train --resume {run.run_dir}")
    except NonFiniteLossError as err:
        print(f"training stopped: {err}\nthe last good checkpoint is {run.run_dir / CHECKPOINT}",
              file=sys.stderr)
        return 1
    print(f"test accuracy {summary['test_accuracy']:.4f}, test NLL {summary['test_nll']:.4f} "
          f"({summary['eval_samples']} samples); run directory {run.run_dir}")
    return 0


def _toy(args: argparse.Namespace) -> int:
    from .experiments.toy import TOY_METHODS, render_table, run_toy

    try:
        report = run_toy(args.out, methods=args.methods or TOY_METHODS, seed=args.seed, faithful=args.faithful,
                         n_samples=args.samples, progress=args.progress, hmc=not args.no_hmc)
    except KeyboardInterrupt:
        return _interrupted(f"interrupted; {args.out}/toy.png and toy.json are written only once every method has "
                            f"trained: rerun the same command")
    print(render_table(report))
    print(f"wrote {args.out}/toy.png and {args.out}/toy.json")
    return 0


def _uci(args: argparse.Namespace) -> int:
    from .data.download import ChecksumError, resolve_data_dir
    from .data.mnist import DataFormatError
    from .data.uci_download import ensure_uci
    from .experiments.uci import GRID_METHODS, run_uci

    root = resolve_data_dir(args.data_dir)
    try:
        if args.download:
            ensure_uci(args.datasets, root, download=True, progress=args.progress)
        results = run_uci(root, args.out, datasets=args.datasets, methods=args.methods or GRID_METHODS,
                          splits=args.splits, budget=args.budget, split_kind=args.split_kind, seed=args.seed,
                          progress=args.progress, train=not args.report_only, merge=args.merge)
    except (ChecksumError, DataFormatError, ImportError) as err:
        _error(err)
        return 2
    except FileNotFoundError as err:
        _error(f"{err}" + ("" if args.download else " (--download fetches the standard datasets)"))
        return 2
    except KeyboardInterrupt:
        return _interrupted(f"interrupted; finished cells are kept in {args.out}: rerun the same command to resume")
    suffix = "" if args.split_kind == "standard" else f"-{args.split_kind}"
    print((Path(args.out) / f"report{suffix}.md").read_text(), end="")
    print(f"wrote {args.out}/results{suffix}.json and {args.out}/report{suffix}.md "
          f"({results['n_cells']} cells, {results['seconds'] / 60:.1f} min of training and scoring)")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .experiments.reproduce import Reproduction

    out = args.out or f"runs/reproduce-{args.budget}"
    repro = Reproduction.open(out, args.budget, data_dir=args.data_dir, device=args.device, progress=args.progress)
    if args.download:
        from .data import fetch
        fetch(sorted({p["task"] for p in repro.plan(args.name)}), args.data_dir, progress=args.progress)
    measure = bool(getattr(args, "measure", False))  # --measure: time every run at full size (minutes per run)
    if args.plan or measure or args.budget == "paper":
        # the plan estimates from stored step times (bbh.experiments.costs): seconds, no full-size run, no data
        print(f"bbh reproduce {args.name} --budget {args.budget}: planned runs (device {args.device})", flush=True)
        try:
            for line in repro.plan_lines(args.name, measure=measure):
                print(line, flush=True)
        except KeyboardInterrupt:
            _error("interrupted while planning; nothing was trained" + (" (the runs measured so far are kept)"
                                                                        if measure else ""))
            return 130
        if args.plan or measure:
            return 0
    try:
        written = repro.make(args.name)
    except KeyboardInterrupt:
        _error(f"interrupted; finished runs are kept in {out} and a killed run continues from its last "
               f"checkpoint: rerun the same command to resume")
        return 130
    for path in written:
        if path.suffix == ".md":
            print(path.read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .reports.runs import compare_runs

    print(compare_runs(args.run_dirs, args.out), end="")
    print(f"wrote {args.out}/compare.md, compare.csv and adversarial.png")
    return 0


def _error(message: Any) -> None:
    print(f"bbh: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bbh`` command line; returns the exit status (0 success, 1 training stopped by a NaN or a
    write failing mid-way, 2 usage or runtime error, 130 interrupted)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # wherever it lands: a command that has its own line has said it already
        return _interrupted()


def _main(argv: Sequence[str] | None) -> int:
    # An application may tune its process, a library may not: bbh sets no environment variable when imported.
    # Large CPU tensors (hypernet heads, their optimizer state) are allocated at every step; transparent huge
    # pages make each allocation several times cheaper (an 800 MB gradient 0.43 s -> 0.14 s). PyTorch reads
    # this once, at its first CPU tensor allocation; importing bbh allocates none, so this line comes first.
    # THP_MEM_ALLOC_ENABLE=0 opts out.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    threads: int | None = None
    if args.command in THREAD_KINDS and args.threads is not None:
        from .core.threads import parse_threads

        try:  # refused in one line before anything runs
            threads = parse_threads(args.threads)
        except ValueError:
            _error(f"--threads must be a whole number >= 1, got {args.threads!r}")
            return 2
    lines = False
    if hasattr(args, "progress") and args.progress is None:
        args.progress = sys.stderr.isatty()  # bars for a person at a terminal, not in logs
        lines = not args.progress  # no terminal (nohup, a scheduler, CI): plain progress lines instead
    with ExitStack() as stack:
        if args.command in THREAD_KINDS:
            from .core.threads import announcing, use_threads

            stack.enter_context(announcing())
            stack.enter_context(use_threads(THREAD_KINDS[args.command], threads))
        if lines:
            from .training.progress import log_lines

            stack.enter_context(log_lines())
        return _run(args, parser)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the parsed command; errors that are not about the command line become one line."""
    from .core.io import OutputNotWritableError

    try:
        if args.command == "toy":
            return _toy(args)
        if args.command == "train":
            return _train(args, parser)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "uci":
            return _uci(args)
        if args.command == "reproduce":
            return _reproduce(args)
    except OutputNotWritableError as err:
        _error(err)
        return 2
    except (ValueError, FileNotFoundError) as err:
        _error(err)
        return 2
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        _error(f"cannot write to {err.filename}: {err.strerror}" if err.filename else err)
        return 1
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


def _interrupted(message: str = "interrupted") -> int:
    """The one answer to Ctrl-C: one line on stderr, no traceback, exit status 130 (128 + SIGINT)."""
    _error(message)
    return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
