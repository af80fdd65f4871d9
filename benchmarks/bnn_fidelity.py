"""Posterior fidelity on a real network: each method's function-space posterior against the converged NUTS reference.

    python -m bbh.reference.nuts ../shared/data/uci/bostonHousing --split 0       # once: caches the reference
    python benchmarks/bnn_fidelity.py ../shared/data/uci/bostonHousing --split 0 [--steps 4000] [--out DIR]

The network is the UCI benchmark's (one hidden layer of 50 ReLU units, N(0, 1) prior, learned noise level); the
reference is NUTS's draws of f(x_test) (:mod:`bbh.reference.nuts`, read from the user's cache). Every method is
trained on the same split for the same number of steps (Adam, the UCI settings' learning rate and batch,
:func:`bbh.experiments.uci.uci_settings`, nothing chosen on validation) and compared per test point:

* std ratio: std_q[f(x)] / std_NUTS[f(x)] over the test points (5th / 50th / 95th percentile; 1 is the answer);
* mean shift: |E_q f(x) - E_NUTS f(x)| / std_NUTS[f(x)] (median over test points);
* noise: the method's mean σ over NUTS's (1 is the answer);
* test LL of each, in the original units.

The reference's own diagnostics (R-hat, ESS) are printed with it: a ratio is only as good as the reference.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from bbh.core.predictive import RegressionPredictive
from bbh.data.uci import load_uci
from bbh.experiments import uci
from bbh.experiments.costs import cpu_name
from bbh.reference.nuts import cache_path
from bbh.training.trainer import Trainer

METHODS = {
    "bbh (uci: nn-entropy)": ("bbh", {}),
    "bbh semi-implicit": ("bbh", {"kl": "semi-implicit"}),
    "bbh semi-implicit kronecker": ("bbh", {"kl": "semi-implicit", "covariance": "kronecker"}),
    "bbb (mean-field)": ("bbb", {}),
    "mc-dropout (rate 0.05)": ("mc-dropout", {}),
    "ensemble": ("ensemble", {}),
}


def percentiles(x: torch.Tensor) -> tuple[float, float, float]:
    q = torch.quantile(x.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_uci(args.folder)
    split = dataset.split(args.split)
    cached = sorted(cache_path(dataset.name, args.split, {}).parent.glob(f"{dataset.name}-split{args.split}-*.pt"))
    if not cached:
        raise SystemExit(f"no cached NUTS reference for {dataset.name} split {args.split}: run "
                         f"python -m bbh.reference.nuts {args.folder} --split {args.split}")
    ref = torch.load(cached[-1])
    f_ref = ref["sample_means"]                                    # [S, N_test], standardised units
    ref_std, ref_mean = f_ref.std(0), f_ref.mean(0)
    ref_sigma = float(ref["noise_vars"].sqrt().mean())
    d = ref["diagnostics"]
    report = {"dataset": dataset.name, "split": args.split, "steps": args.steps, "reference": str(cached[-1]),
              "reference_diagnostics": {k: d[k] for k in ("rhat_f_max", "rhat_f_median", "ess_f_min", "ess_f_median",
                                                          "draws", "seconds")},
              "machine": cpu_name(), "rows": []}
    print(f"{dataset.name} split {args.split}: NUTS reference {cached[-1].name} (R-hat max {d['rhat_f_max']:.3f}, "
          f"ESS min {d['ess_f_min']:.0f}, {d['draws']} draws)", flush=True)
    y_raw = dataset.y[split.test_idx]
    settings = uci.uci_settings()
    hidden = uci.protocol_hidden(dataset)
    print("| method | std ratio p5 | p50 | p95 | mean shift / std (median) | σ / NUTS σ | test LL | s |", flush=True)
    print("|---|---|---|---|---|---|---|---|", flush=True)
    own = RegressionPredictive(f_ref.unsqueeze(-1), ref["noise_vars"][:, None, None].expand(*f_ref.shape, 1))
    ll_ref = uci.score(own, split, split.y_test, y_raw)["test_ll"]
    report["reference_test_ll"] = ll_ref
    print(f"| NUTS (the reference) | 1 | 1 | 1 | 0 | 1 | {ll_ref:.3f} | {d['seconds']:.0f} |", flush=True)
    for name in args.methods.split(","):
        method_name, extra = METHODS[name]
        setting = settings[method_name + uci.UNTUNED]
        setting = replace(setting, options={**setting.options, **extra})
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        model = uci.build_method(setting, dataset.x.shape[1], hidden)
        batch = min(setting.batch_size, len(split.x_train))
        epochs = max(1, math.ceil(args.steps / max(1, len(split.x_train) // batch)))
        trainer = Trainer(model, optimizer="adam", lr=setting.lr, epochs=epochs, device="cpu", seed=args.seed,
                          progress=False, handle_signals=False)
        trainer.fit((split.x_train.float(), split.y_train.float().unsqueeze(-1)), batch_size=batch)
        predictive = model.predict(split.x_test.float(), n_samples=args.draws)
        f_q = predictive.sample_means[..., 0].double()             # [S, N_test]
        ratio = f_q.std(0) / ref_std
        shift = ((f_q.mean(0) - ref_mean).abs() / ref_std).median()
        sigma = float(predictive.aleatoric_var.double().mean().sqrt()) / ref_sigma
        ll = uci.score(predictive, split, split.y_test, y_raw)["test_ll"]
        p5, p50, p95 = percentiles(ratio)
        row = {"method": name, "p5": p5, "p50": p50, "p95": p95, "mean_shift": float(shift), "sigma_ratio": sigma,
               "test_ll": ll, "seconds": time.perf_counter() - start}
        report["rows"].append(row)
        print(f"| {name} | {p5:.3g} | {p50:.3g} | {p95:.3g} | {row['mean_shift']:.3g} | {sigma:.3g} | {ll:.3f} | "
              f"{row['seconds']:.0f} |", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"bnn-{dataset.name}-{args.split}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
