"""``bbh evaluate`` and ``bbh compare``: the paper's numbers and figures, and the modern metrics, for runs.

``evaluate_run(run_dir)`` loads a finished run (``model.pt`` + ``config.toml``), and writes into
``run_dir/eval/``:

* ``results.json`` — on the test set: error, NLL, Brier, ECE, the paper's entropy AUC, mean entropy /
  expected entropy / mutual information; on the outlier set: entropy AUC and OOD detection (AUROC, AUPR in
  and out, FPR at 95 % TPR) for three scores (entropy, mutual information, max probability); per FGSM
  epsilon: accuracy, mean entropy / log K, entropy AUC (paper Figs. 3/4, paper-protocol 6.5); MNIST probes
  (rotations, mixup; 6.6);
* figures: entropy CDFs in vs out, FGSM accuracy and entropy against epsilon, the reliability diagram, and
  for methods with a weight posterior its marginals, correlations and per-weight std (Figs. 5-9);
* ``report.md`` with the tables and the figures.

``compare_runs`` puts several runs' results next to the paper's Tables 3/4 as Markdown and CSV, and draws
their FGSM curves in one figure (Fig. 3).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..evaluation import metrics
from ..evaluation.predictive import iter_batches, predict, predict_batches
from ..experiments.run import build_model
from ..io import atomic_write, write_json
from ..posteriors import Method, create

EPSILONS = tuple(round(0.05 * i, 2) for i in range(9))
"""The authors' FGSM grid, ``np.linspace(0, 0.4, 9)``."""

PAPER_TABLES = {
    "mnist": {"map": (0.80, 0.99, 0.71, 710), "ensemble": (0.49, 0.99, 0.65, 2721), "bbb": (0.72, 0.97, 0.41, 2892),
              "mc-dropout": (0.47, 0.99, 0.58, 1224), "mnf": (0.63, 0.99, 0.58, 21811),
              "bbh": (0.56, 0.97, 0.48, 11504)},
    "cifar5": {"map": (13.58, 0.83, 0.68, 5269), "ensemble": (10.18, 0.77, 0.55, 51755),
               "bbb": (13.78, 0.65, 0.44, 10562), "mc-dropout": (24.74, 0.46, 0.35, 6189),
               "mnf": (12.82, 0.82, 0.62, 15743), "bbh": (13.62, 0.68, 0.51, 7896)},
}
"""Paper Tables 3 (MNIST) and 4 (CIFAR-5): Error %, in-distribution entropy AUC, outlier AUC, runtime s."""


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Method, dict[str, Any]]:
    """The trained method of a run directory and its configuration."""
    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no model.pt: the run has not finished (bbh train --resume {run_dir})")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    config = state["config"]
    num_classes = state.get("num_classes") or (10 if config["experiment"]["task"] == "mnist" else 5)
    torch.manual_seed(config["experiment"]["seed"])
    method = create(config["experiment"]["method"], build_model(config["model"], num_classes), **config["method"])
    method.load_state_dict(state["method"])
    method.to(device).eval()
    return method, config


def _set_metrics(summary: dict[str, torch.Tensor], y: torch.Tensor | None, num_classes: int) -> dict[str, Any]:
    mean = summary["mean"]
    h_authors = metrics.entropy(mean)  # the authors' clamp at 1e-5
    out: dict[str, Any] = {
        "entropy_auc": metrics.entropy_auc(h_authors, num_classes),
        "mean_entropy": float(summary["entropy"].mean()) / math.log(num_classes),
        "mean_expected_entropy": float(summary["expected_entropy"].mean()) / math.log(num_classes),
        "mean_mutual_information": float(summary["mutual_information"].mean()),
        "n": int(mean.shape[0]),
    }
    if y is not None:
        out.update(error_percent=100 * metrics.error_rate(mean, y), nll=metrics.nll(mean, y),
                   brier=metrics.brier_score(mean, y), ece=metrics.ece(mean, y, bins=15))
    return out


def _ood(summary_in: dict[str, torch.Tensor], summary_out: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    scores = {
        "entropy": (summary_in["entropy"], summary_out["entropy"]),
        "mutual_information": (summary_in["mutual_information"], summary_out["mutual_information"]),
        "max_prob": (-summary_in["mean"].max(-1).values, -summary_out["mean"].max(-1).values),
    }
    return {name: metrics.ood_metrics(a, b) for name, (a, b) in scores.items()}


def adversarial_curve(method: Method, x: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                      epsilons=EPSILONS, n_samples: int = 100, attack_samples: int = 100,
                      gradient: str = "authors", clamp: tuple[float, float] | None = None,
                      attack: str = "fgsm") -> list[dict[str, float]]:
    """Per epsilon: accuracy, mean entropy / log K, entropy AUC on adversarial versions of ``x``."""
    from ..evaluation import attacks

    rows = []
    for eps in epsilons:
        if eps == 0:
            x_adv = x
        elif attack == "fgsm":
            x_adv = attacks.fgsm(method, x, y, eps, n_samples=attack_samples, gradient=gradient, clamp=clamp)
        elif attack == "pgd":
            x_adv = attacks.pgd(method, x, y, eps, n_samples=min(attack_samples, 10), clamp=clamp)
        else:
            raise ValueError(f"unknown attack {attack!r}; expected 'fgsm' or 'pgd'")
        mean = predict(method, x_adv, n_samples).mean
        h = metrics.entropy(mean)
        rows.append({"epsilon": float(eps), "accuracy": 1 - metrics.error_rate(mean, y),
                     "entropy": float(h.mean()) / math.log(num_classes),
                     "entropy_auc": metrics.entropy_auc(h, num_classes)})
    return rows


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, *, n_samples: int | None = None,
                 batch_size: int = 500, adversarial: bool = True, adv_images: int = 100,
                 adv_gradient: str = "authors", adv_samples: int | None = None, clamp: bool = False,
                 pgd: bool = False, probes: bool = True, posterior_plots: bool = True, task: Any = None,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate one finished run; writes ``run_dir/eval/`` and returns the results (module docstring).

    Args:
        n_samples: posterior samples for every prediction (default: the run's ``eval.samples``, 100).
        adv_images: the first this many test images are attacked (authors' code: 100; paper text: 1,000).
        adv_gradient: ``"authors"`` (average of per-sample FGSM images) or ``"expectation"``.
        adv_samples: posterior samples per attack (default ``n_samples``).
        clamp: clip adversarial images to the valid input range (MNIST [0, 1]; the authors did not).
        pgd: also run a PGD attack over the same epsilons.
    """
    from tqdm.auto import tqdm

    from ..data import load_task
    from .plots import plot_adversarial, plot_entropy_cdf, plot_reliability

    run_dir = Path(run_dir)
    out_dir = run_dir / "eval"
    method, config = load_run(run_dir)
    name, task_name = config["experiment"]["name"], config["experiment"]["task"]
    if task is None:
        task = load_task(task_name, data_dir, validation=config["data"]["validation"],
                         preprocessing=config["data"]["preprocessing"], download=True)
    k = task.num_classes
    n = int(n_samples or config["eval"]["samples"])
    steps = ["test", "outliers"] + (["adversarial"] if adversarial else []) + \
        (["probes"] if probes and task_name == "mnist" else []) + (["posterior"] if posterior_plots else [])
    bar = tqdm(steps, disable=not progress, desc=f"evaluate {name}")
    draws = n
    if getattr(method, "fixed_samples", False):  # MAP: 1, ensembles: M members, whatever n is
        with torch.no_grad():
            draws = int(method.sample_outputs(task.eval_transform(task.test_x[:1]), n).shape[0])
    results: dict[str, Any] = {"run": name, "task": task_name, "method": config["experiment"]["method"],
                               "samples": draws}
    final = run_dir / "final.json"
    if final.is_file():
        results["train_seconds"] = json.loads(final.read_text()).get("train_seconds")
    torch.manual_seed(0)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "test":
            test = predict_batches(method, iter_batches(task.test_x, batch_size), n, transform=task.eval_transform)
            results["test"] = _set_metrics(test, task.test_y, k)
            results["test"]["reliability"] = metrics.reliability(test["mean"], task.test_y, bins=15)
        elif step == "outliers":
            outl = predict_batches(method, iter_batches(task.outlier_x, batch_size), n, transform=task.eval_transform)
            results["outliers"] = _set_metrics(outl, None, k)
            results["ood"] = _ood(test, outl)
            plot_entropy_cdf(out_dir / "entropy_cdf.png", {"test": test["entropy"], "outliers": outl["entropy"]},
                             math.log(k), title=name)
            plot_reliability(out_dir / "reliability.png", results["test"]["reliability"], title=name)
        elif step == "adversarial":
            x = task.eval_transform(task.test_x[:adv_images])
            y = task.test_y[:adv_images]
            bounds = (0.0, 1.0) if (clamp and task_name == "mnist") else None
            kw = dict(n_samples=n, attack_samples=adv_samples or n, gradient=adv_gradient, clamp=bounds)
            results["adversarial"] = {"fgsm": adversarial_curve(method, x, y, k, **kw),
                                      "settings": {"images": adv_images, "gradient": adv_gradient,
                                                   "clamp": bounds, "attack_samples": adv_samples or n}}
            curves = {"FGSM": results["adversarial"]["fgsm"]}
            if pgd:
                results["adversarial"]["pgd"] = adversarial_curve(method, x, y, k, attack="pgd", **kw)
                curves["PGD"] = results["adversarial"]["pgd"]
            plot_adversarial(out_dir / "adversarial.png", curves, title=name)
        elif step == "probes":
            results["probes"] = _probes(method, task, n)
        elif step == "posterior":
            results["posterior_plots"] = _posterior_figures(method, out_dir)
    write_json(out_dir / "results.json", results)
    atomic_write(out_dir / "report.md", lambda tmp: Path(tmp).write_text(_report(results)))
    return results


def _probes(method: Method, task: Any, n: int) -> dict[str, Any]:
    """The authors' MNIST rotation and mixup probes (paper-protocol 6.6): per angle / lambda, the predicted
    class and the predictive entropy (nats)."""
    from ..evaluation import probes

    out: dict[str, Any] = {}
    for name, r in probes.author_probes(method, task.eval_transform(task.test_x), n_samples=n).items():
        steps = r["angles"] if "angles" in r else r["lambdas"]
        out[name] = {"index": r["index"].tolist(), "steps": [float(v) for v in steps],
                     "predicted": r["predicted"].tolist(), "entropy": r["entropy"].tolist()}
    return out


def _posterior_figures(method: Method, out_dir: Path) -> list[str] | str:
    """Paper Figs. 5-9 from 1,000 weight samples: marginals of the first 25 weights and correlations of the
    first 500 (TF layout, as the authors: LeNet's conv1 kernel), and every weight's std."""
    from . import posterior_plots as pp

    try:
        samples = pp.weight_samples(method, 1000, layout="tf", first=500)
    except (TypeError, ValueError) as err:  # MAP / MC-Dropout: no weight posterior
        return f"none: {err}"
    pp.plot_weight_marginals(samples, out_dir / "weights.png")
    pp.plot_weight_correlation(samples, out_dir / "correlation.png", first=min(500, samples.shape[1]))
    pp.plot_weight_std(pp.weight_std(method, 1000) if samples.shape[0] > 2 else samples, out_dir / "weights_std.png")
    return ["weights.png", "correlation.png", "weights_std.png"]


def _fmt(v: Any, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else (
        f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _report(r: dict[str, Any]) -> str:
    t, o = r["test"], r.get("outliers", {})
    lines = [f"# Evaluation of `{r['run']}` ({r['method']} on {r['task']}, {r['samples']} posterior draw"
             f"{'s' if r['samples'] != 1 else ''} per prediction)", "",
             "| set | error % | NLL | Brier | ECE | entropy AUC | mean entropy / log K | mean MI |",
             "|---|---|---|---|---|---|---|---|",
             f"| test | {_fmt(t['error_percent'], 2)} | {_fmt(t['nll'])} | {_fmt(t['brier'])} | {_fmt(t['ece'])} "
             f"| {_fmt(t['entropy_auc'])} | {_fmt(t['mean_entropy'])} | {_fmt(t['mean_mutual_information'], 4)} |"]
    if o:
        lines.append(f"| outliers | — | — | — | — | {_fmt(o['entropy_auc'])} | {_fmt(o['mean_entropy'])} "
                     f"| {_fmt(o['mean_mutual_information'], 4)} |")
        lines += ["", "Entropy AUC: area under the CDF of the predictive entropy / log K (paper-protocol 6.2); high "
                  "on the test set = confident, low on outliers = uncertain.", "",
                  "| OOD score | AUROC | AUPR in | AUPR out | FPR at 95 % TPR |", "|---|---|---|---|---|"]
        for score, m in r["ood"].items():
            lines.append(f"| {score} | {_fmt(m['auroc'])} | {_fmt(m['aupr_in'])} | {_fmt(m['aupr_out'])} "
                         f"| {_fmt(m['fpr_at_95_tpr'])} |")
        lines += ["", "![entropy CDF](entropy_cdf.png) ![reliability](reliability.png)"]
    if "adversarial" in r:
        s = r["adversarial"]["settings"]
        lines += ["", f"## FGSM ({s['images']} test images, gradient: {s['gradient']}, clamp: {s['clamp']})", "",
                  "| epsilon | accuracy | entropy / log K | entropy AUC |", "|---|---|---|---|"]
        lines += [f"| {row['epsilon']:.2f} | {_fmt(row['accuracy'])} | {_fmt(row['entropy'])} "
                  f"| {_fmt(row['entropy_auc'])} |" for row in r["adversarial"]["fgsm"]]
        lines += ["", "![adversarial](adversarial.png)"]
    if isinstance(r.get("posterior_plots"), list):
        lines += ["", "## Weight posterior (1,000 samples)", ""] + [f"![{p}]({p})" for p in r["posterior_plots"]]
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path) -> str:
    """Tables 3/4-style comparison of evaluated runs (Markdown and CSV) and their FGSM curves in one figure;
    returns the Markdown."""
    from .plots import plot_adversarial

    rows, curves = [], {}
    for d in run_dirs:
        path = Path(d) / "eval" / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run bbh evaluate {d} first")
        r = json.loads(path.read_text())
        paper = PAPER_TABLES.get(r["task"], {}).get(r["method"], (None,) * 4)
        rows.append({"run": r["run"], "method": r["method"], "task": r["task"],
                     "error_percent": r["test"]["error_percent"], "paper_error_percent": paper[0],
                     "auc_in": r["test"]["entropy_auc"], "paper_auc_in": paper[1],
                     "auc_out": r.get("outliers", {}).get("entropy_auc"), "paper_auc_out": paper[2],
                     "ood_auroc_entropy": r.get("ood", {}).get("entropy", {}).get("auroc"),
                     "ece": r["test"]["ece"], "nll": r["test"]["nll"],
                     "train_seconds": r.get("train_seconds"), "paper_runtime_s": paper[3]})
        if "adversarial" in r:
            curves[r["run"]] = r["adversarial"]["fgsm"]
    header = ["run", "error %", "paper", "AUC in", "paper", "AUC out", "paper", "OOD AUROC", "ECE", "NLL",
              "train s", "paper s"]
    keys = ["run", "error_percent", "paper_error_percent", "auc_in", "paper_auc_in", "auc_out", "paper_auc_out",
            "ood_auroc_entropy", "ece", "nll", "train_seconds", "paper_runtime_s"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        md.append("| " + " | ".join(_fmt(row[k], 2 if "error" in k else 3) if k != "train_seconds" else
                                    _fmt(row[k], 0) for k in keys) + " |")
    text = "\n".join(md) + "\n"
    out = Path(out_dir)
    atomic_write(out / "compare.md", lambda tmp: Path(tmp).write_text(text))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["run"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "compare.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    if curves:
        plot_adversarial(out / "adversarial.png", curves, title="FGSM")
    return text


__all__ = ["EPSILONS", "PAPER_TABLES", "adversarial_curve", "compare_runs", "evaluate_run", "load_run"]
