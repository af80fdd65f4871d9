"""A user's own small network: BbH against MAP on a small BatchNorm + Dropout CNN at small N, as a new user would.

    python benchmarks/user_cnn.py --data-dir ../shared/data [--train 5000 --epochs 2] \
        [--variants "map;bbh;bbh kl=semi-implicit"] [--seeds 0]

Every variant is ``bbh.create(method, model, **options)`` + ``bbh.Trainer(method, epochs=E)`` with the Trainer's
defaults (its default learning rate for the method, batch 100) + ``bbh.evaluate`` (100 draws) on 2,000 MNIST images
with 2,000 notMNIST images as outliers: ``--eval validation`` (default; training images never trained on and a
separate slice of notMNIST, for choosing settings) or ``--eval test``. A variant is a method name followed by
``key=value`` options (Python literals; strings bare; ``trainer.KEY=VALUE`` goes to the Trainer, e.g.
``trainer.lr=1e-3``). Prints error %, NLL, ECE, OOD AUROC (total entropy), the last epoch's mean NLL and KL term
(KL x weight / N) of the objective, and the training seconds. The data come from ``--data-dir`` (``mnist/``,
``notmnist/``), never downloaded.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import torch
from torch import nn

import bbh
from bbh.data.mnist import load_mnist, load_notmnist


def small_cnn() -> nn.Module:
    """Two conv blocks with BatchNorm, Dropout, two dense layers: 206,922 parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def parse_variant(text: str) -> tuple[str, dict]:
    name, *pairs = text.split()
    options = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--variants", default="map;bbh;bbh kl=semi-implicit")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval", choices=("validation", "test"), default="validation",
                    help="validation: MNIST training images 55,000-56,999 and notMNIST images 2,000-3,999 (for "
                         "choosing settings); test: the first 2,000 MNIST test and notMNIST images")
    ap.add_argument("--out", type=Path, default=None, help="a JSON file for the rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = load_mnist(args.data_dir / "mnist", "train")
    xt, yt = load_mnist(args.data_dir / "mnist", "test")
    xo, _ = load_notmnist(args.data_dir / "notmnist")
    scale = lambda t: t.float() / 255.0  # noqa: E731
    if args.eval == "validation":
        xt, yt, xo = x[55_000:57_000], y[55_000:57_000], xo[2000:4000]
    else:
        xt, yt, xo = xt[:2000], yt[:2000], xo[:2000]
    x, y = scale(x[: args.train]), y[: args.train]
    xt, xo = scale(xt), scale(xo)
    rows = []
    print("| variant | seed | error % | NLL | ECE | OOD AUROC | last-epoch NLL | KL term | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in args.variants.split(";"):
        name, options = parse_variant(variant.strip())
        for seed in [int(s) for s in args.seeds.split(",")]:
            torch.manual_seed(seed)
            method_options = {k: v for k, v in options.items() if not k.startswith("trainer.")}
            trainer_options = {k[len("trainer."):]: v for k, v in options.items() if k.startswith("trainer.")}
            method = bbh.create(name, small_cnn(), **method_options)
            trainer = bbh.Trainer(method, epochs=args.epochs, seed=seed, progress=False, **trainer_options)
            start = time.perf_counter()
            history = trainer.fit((x, y), batch_size=100)
            seconds = time.perf_counter() - start
            res = bbh.evaluate(method, test=(xt, yt), ood={"notmnist": xo}, n_samples=100, seed=seed)
            last = history[-1]
            kl_term = last.get("kl", 0.0) * last.get("kl_weight", 1.0) / args.train
            row = {"variant": variant.strip(), "seed": seed, "error": res.test.error_percent, "nll": res.test.nll,
                   "ece": res.test.ece, "auroc": res.ood["notmnist"].detection["entropy"]["auroc"],
                   "train_nll": last.get("nll"), "kl_term": kl_term, "seconds": seconds}
            rows.append(row)
            print(f"| {row['variant']} | {seed} | {row['error']:.2f} | {row['nll']:.3f} | {row['ece']:.3f} | "
                  f"{row['auroc']:.3f} | {row['train_nll']:.3f} | {kl_term:.3g} | {seconds:.0f} |", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"argv": argv, "eval": args.eval, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
