"""BbH on a transformer: MAP and BbH's layouts trained on the synthetic token-order task at the same budget.

    python benchmarks/scale_transformer.py [--seeds 0,1,2] [--epochs 5]

:class:`bbh.models.transformer.TransformerClassifier` (2 encoder layers, d = 32) on
:func:`bbh.data.sequence.token_order_task` (2,048 training sequences, 512 test; chance 50 %), batch 64, each
method at its Trainer defaults (MAP Adam 1e-3; BbH ``rank1`` Adam 1e-3 with ``nn-entropy``; ``auto``, which is
layer-wise for a network this small, and ``chunked`` at BbH's 2e-5 with the per-weight KL). Prints per seed
and method the test accuracy and NLL of the predictive (10 draws) and the training time as a ratio to MAP's in
the same run.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import bbh
from bbh.data.sequence import token_order_task
from bbh.models.transformer import TransformerClassifier

METHODS = {"map": ("map", {}), "bbh rank1": ("bbh", {"layout": "rank1"}), "bbh auto": ("bbh", {}),
           "bbh chunked": ("bbh", {"layout": "chunked", "chunk_size": 1024})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    x, y = token_order_task(2048)
    x_test, y_test = token_order_task(512, seed=1)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}; {args.epochs} epochs of batch 64")
    print(f"{'seed':>4s} {'method':14s} {'layout':10s} {'accuracy':>9s} {'NLL':>7s} {'train s':>8s} {'/ MAP':>6s}")
    for seed in (int(s) for s in args.seeds.split(",")):
        t_map = None
        for label, (name, options) in METHODS.items():
            torch.manual_seed(seed)
            method = bbh.create(name, TransformerClassifier(), **options)
            start = time.perf_counter()
            bbh.Trainer(method, epochs=args.epochs, progress=False, seed=seed).fit((x, y), batch_size=64)
            seconds = time.perf_counter() - start
            t_map = seconds if name == "map" else t_map
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore", UserWarning)  # torch's vmap fallback for the fused encoder
                probs = method.predict(x_test, n_samples=10).mean
            accuracy = float((probs.argmax(-1) == y_test).float().mean())
            nll = float(-probs.clamp_min(1e-12).log().gather(1, y_test[:, None]).mean())
            layout = getattr(method, "layout", None)
            print(f"{seed:4d} {label:14s} {layout.value if layout else '-':10s} {accuracy:9.3f} {nll:7.3f} "
                  f"{seconds:8.1f} {seconds / t_map:5.1f}x", flush=True)


if __name__ == "__main__":
    main()
