"""``bbh evaluate`` and ``bbh compare``: the paper's numbers and figures, and the modern metrics, for runs.

``evaluate_run(run_dir)`` is a layer above :func:`bbh.evaluate`: it loads a finished run (``model.pt`` +
``config.toml``) and its task (from the data directory the run was trained from, unless another is given),
evaluates it, and writes a fresh ``run_dir/eval/`` (the previous one is replaced as a whole, so no figure of
an earlier evaluation survives); that ``run_dir`` can be written to is checked before anything is computed:

* ``results.json`` (strict JSON: NaN is ``null``) — on the test set: error, NLL, Brier, ECE and its reliability
  bins, the paper's entropy AUC, mean entropy / expected entropy / mutual information; on the outlier set:
  entropy AUC and OOD detection (AUROC, AUPR in and out, FPR at 95 % TPR) for three scores (entropy, mutual
  information, max probability; no mutual information for a point estimate such as MAP, whose one draw makes it
  zero, :func:`bbh.evaluation.api.has_epistemic_spread`), or, for a task without one (``cifar10``),
  ``ood_skipped``: a sentence saying that and why OOD detection was not computed (the report says it too); per
  FGSM epsilon: accuracy, mean entropy / log K, entropy AUC (paper Figs. 3/4, docs/protocol.md §6.5); MNIST probes
  (rotations, mixup; 6.6);
* figures: entropy CDFs in vs out (with an outlier set), FGSM accuracy and entropy against epsilon, the
  reliability diagram, and for methods with a weight posterior its marginals, correlations and per-weight std
  (Figs. 5-9);
* ``report.md`` with the tables and the figures.

``compare_runs`` puts several runs' results next to the paper's Tables 3/4 as Markdown and CSV, and draws
their FGSM curves in one figure (Fig. 3).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..core.io import atomic_write, ensure_writable, read_json_object
from ..evaluation.api import AttackSpec, EvaluationResults, evaluate, json_safe
from ..models.registry import build_model
from ..posteriors import Method, create
from ..training.run_files import CHECKPOINT, CONFIG, EVAL, FINAL, MODEL, REPORT, RESULTS, STATUS
from .markdown import number

PAPER_TABLES = {
    "mnist": {"map": (0.80, 0.99, 0.71, 710), "ensemble": (0.49, 0.99, 0.65, 2721), "bbb": (0.72, 0.97, 0.41, 2892),
              "mc-dropout": (0.47, 0.99, 0.58, 1224), "mnf": (0.63, 0.99, 0.58, 21811),
              "bbh": (0.56, 0.97, 0.48, 11504)},
    "cifar5": {"map": (13.58, 0.83, 0.68, 5269), "ensemble": (10.18, 0.77, 0.55, 51755),
               "bbb": (13.78, 0.65, 0.44, 10562), "mc-dropout": (24.74, 0.46, 0.35, 6189),
               "mnf": (12.82, 0.82, 0.62, 15743), "bbh": (13.62, 0.68, 0.51, 7896)},
}
"""Paper Tables 3 (MNIST) and 4 (CIFAR-5): Error %, in-distribution entropy AUC, outlier AUC, runtime s."""


def _check_finished(run_dir: Path) -> None:
    """Raise a FileNotFoundError saying why ``run_dir`` has no ``model.pt``: it does not exist, it is not a run
    directory, or the run has not finished (and how to continue it)."""
    if (run_dir / MODEL).is_file():
        return
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} does not exist")
    status = read_json_object(Path(run_dir) / STATUS)
    if status is None and not (run_dir / CONFIG).is_file() and not (run_dir / CHECKPOINT).is_file():
        runs = [p.parent for p in run_dir.glob(f"*/{MODEL}")]
        hint = (f"; it holds {len(runs)} finished run(s): evaluate them all with bbh evaluate --all {run_dir}"
                if runs else "")
        raise FileNotFoundError(f"{run_dir} is not a bbh run directory (no config.toml, status.json or model.pt; "
                                f"bbh train writes those){hint}")
    state = (status or {}).get("status", "unknown")
    where = f" at epoch {status['epoch']}" if status and "epoch" in status else ""
    if state == "failed":
        raise FileNotFoundError(f"{run_dir} has not finished: training failed{where} ({status.get('error')}); "
                                f"its last good checkpoint is {run_dir / CHECKPOINT}")
    note = " (still training, or killed)" if state == "running" else ""
    raise FileNotFoundError(f"{run_dir} has not finished (status: {state}{where}{note}); continue it with: "
                            f"bbh train --resume {run_dir}")


def _read_state(run_dir: Path, device: str | torch.device) -> dict[str, Any]:
    """The contents of ``run_dir/model.pt`` (tensors and plain values only: ``weights_only=True``)."""
    _check_finished(run_dir)
    path = run_dir / MODEL
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if not isinstance(state, dict) or "config" not in state or "method" not in state:
        raise ValueError(f"{path} is not a bbh model file (expected a dict with 'config' and 'method')")
    return state


@contextlib.contextmanager
def _rng(seed: int | None) -> Iterator[None]:
    """A fork of the CPU random generator, seeded with ``seed`` (None: continued), restored on exit."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
        yield


def _build(state: dict[str, Any], num_classes: int, device: str | torch.device) -> Method:
    config = state["config"]
    # The initial values are overwritten by the state dict; the fork keeps the caller's RNG state as it was.
    with _rng(int(config["experiment"].get("seed", 0))):
        method = create(config["experiment"]["method"], build_model(config["model"], num_classes),
                        **config.get("method", {}))
    # model.pt may store floating tensors in another dtype (train.model_dtype = "bfloat16"): back to the method's
    own = method.state_dict()
    loaded = {k: v.to(own[k].dtype) if (isinstance(v, torch.Tensor) and k in own and v.is_floating_point()
                                        and own[k].is_floating_point() and v.dtype != own[k].dtype) else v
              for k, v in state["method"].items()}
    method.load_state_dict(loaded)
    return method.to(device).eval()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", *,
             num_classes: int | None = None) -> tuple[Method, dict[str, Any]]:
    """The trained method of a run directory (in eval mode) and its configuration.

    Args:
        run_dir: a finished run (with ``model.pt``).
        device: where the method is loaded to.
        num_classes: K, needed only when ``model.pt`` does not record it (bbh's runs do).

    Floating tensors stored in another dtype (``train.model_dtype = "bfloat16"``) are converted to the
    method's own (float32).

    Raises:
        FileNotFoundError: no ``model.pt`` (not a run directory, or the run has not finished).
        ValueError: an unreadable ``model.pt``, or K unknown.
    """
    state = _read_state(Path(run_dir), device)
    k = state.get("num_classes") or num_classes
    if k is None:
        raise ValueError(f"{Path(run_dir) / MODEL} does not record num_classes; pass num_classes=")
    return _build(state, int(k), device), state["config"]


class _Steps:
    """A progress bar over the phases of an evaluation; ``__call__(name)`` starts the next one."""

    def __init__(self, total: int, name: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, desc=f"evaluate {name}")
        self.started = False

    def __call__(self, step: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(step)

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, *, n_samples: int | None = None,
                 batch_size: int = 500, chunk_size: int | None = None, adversarial: bool = True,
                 adv_images: int = 100, adv_gradient: str = "authors", adv_samples: int | None = None,
                 clamp: bool = False, pgd: bool = False, probes: bool = True, posterior_plots: bool = True,
                 task: Any = None, seed: int | None = 0, progress: bool = True,
                 device: str | torch.device = "cpu", download: bool = False) -> dict[str, Any]:
    """Evaluate one finished run with :func:`bbh.evaluate`; writes a fresh ``run_dir/eval/`` (module docstring)
    and returns what ``results.json`` holds.

    Args:
        run_dir: a finished run (``model.pt``).
        data_dir: where the task's data lives (default: the run's own data directory, recorded in
            ``status.json``, else :func:`bbh.data.resolve_data_dir`); unused with ``task``.
        n_samples: posterior samples for every prediction (default: the run's ``eval.samples``, 100).
        batch_size, chunk_size: examples per forward pass; posterior draws evaluated at once (None: all).
        adversarial: run the FGSM curve.
        adv_images: the first this many test images are attacked (authors' code: 100; paper text: 1,000).
        adv_gradient: ``"authors"`` (average of per-sample FGSM images) or ``"expectation"``.
        adv_samples: posterior samples per attack (default ``n_samples``; PGD: at most 10 per step).
        clamp: clip adversarial images to the valid input range (MNIST [0, 1]; the authors did not).
        pgd: also run a PGD attack over the same epsilons.
        probes: the MNIST rotation and mixup probes (MNIST runs only).
        posterior_plots: the weight-posterior figures (methods with a weight posterior).
        task: the task object (default: loaded by the run's task name).
        seed: seed of every random draw (the caller's RNG state is left as it was either way).
        progress: show a progress bar.
        device: where the method runs (``"cuda"``: the batched predictive on the GPU; inputs are moved there).
        download: fetch missing data files (verified); without it they raise
            :class:`~bbh.data.MissingDataError` (``bbh evaluate --download``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory, or the run has not finished.
        OutputNotWritableError: ``run_dir`` cannot be written to (checked before anything is computed).
    """
    from ..data import load_task

    run_dir = Path(run_dir)
    _check_finished(run_dir)
    ensure_writable(run_dir)
    state = _read_state(run_dir, "cpu")
    config = state["config"]
    name, task_name = config["experiment"]["name"], config["experiment"]["task"]
    if task is None:
        if data_dir is None:
            data_dir = (read_json_object(Path(run_dir) / STATUS) or {}).get("data_dir")
        task = load_task(task_name, data_dir, validation=config["data"]["validation"],
                         preprocessing=config["data"]["preprocessing"], download=download, progress=progress)
    method = _build(state, int(state.get("num_classes") or task.num_classes), device)
    n = int(n_samples or config["eval"]["samples"])
    specs: list[AttackSpec] = []
    if adversarial:
        bounds = (0.0, 1.0) if (clamp and task_name == "mnist") else None
        specs.append(AttackSpec("fgsm", images=adv_images, gradient=adv_gradient, clamp=bounds,
                                samples=adv_samples or n))
        if pgd:
            specs.append(AttackSpec("pgd", images=adv_images, clamp=bounds, samples=min(adv_samples or n, 10)))
    outliers = getattr(task, "outlier_x", None)
    run_probes = probes and task_name == "mnist"
    steps = _Steps(1 + (outliers is not None) + len(specs) + run_probes + posterior_plots, name, progress)
    try:
        res = evaluate(method, (task.test_x, task.test_y), ood=None if outliers is None else {"outliers": outliers},
                       attacks=specs, n_samples=n, chunk_size=chunk_size, batch_size=batch_size,
                       transform=task.eval_transform, seed=seed, progress=steps)
        results = results_record(res, name, task_name, config, run_dir)
        with _fresh_dir(run_dir / EVAL) as out_dir:
            _figures(res, results, out_dir, name)
            if run_probes:
                steps("probes")
                with _rng(seed):
                    results["probes"] = _probes(method, task, n)
            if posterior_plots:
                steps("posterior")
                with _rng(seed):
                    results["posterior_plots"] = _posterior_figures(method, out_dir)
            results = json_safe(results)
            text = json.dumps(results, indent=2, allow_nan=False) + "\n"
            (out_dir / RESULTS).write_text(text)
            (out_dir / REPORT).write_text(_report(results))
    finally:
        steps.close()
    return results


def results_record(res: EvaluationResults, name: str, task_name: str, config: dict[str, Any],
             run_dir: Path) -> dict[str, Any]:
    """The layout of ``results.json`` (as :func:`compare_runs` and older results read it)."""
    results: dict[str, Any] = {"run": name, "task": task_name, "method": config["experiment"]["method"],
                               "samples": res.samples, "num_classes": res.num_classes, "seed": res.seed}
    final = run_dir / FINAL
    if final.is_file():
        results["train_seconds"] = json.loads(final.read_text()).get("train_seconds")
    results["test"] = res.test.to_dict()
    if "outliers" in res.ood:
        results["outliers"] = {k: v for k, v in res.ood["outliers"].metrics.to_dict().items() if v is not None}
        results["ood"] = json_safe(res.ood["outliers"].detection)
    else:
        results["ood_skipped"] = _ood_skipped(task_name)
    if res.adversarial:
        fgsm = res.adversarial["fgsm"].spec
        results["adversarial"] = {k: curve.rows() for k, curve in res.adversarial.items()}
        results["adversarial"]["settings"] = {"images": min(fgsm.images, res.test.n), "gradient": fgsm.gradient,
                                              "clamp": fgsm.clamp, "attack_samples": fgsm.samples}
    return results


def _ood_skipped(task_name: str) -> str:
    """Why a results record has no ``outliers`` / ``ood`` entries."""
    from ..data.tasks import OUTLIER_SETS

    why = (f"task {task_name!r} has no outlier set" if task_name in OUTLIER_SETS and OUTLIER_SETS[task_name] is None
           else "the task was evaluated without an outlier set")
    return (f"OOD detection skipped: {why}, so there is no outlier entropy AUC, AUROC, AUPR or FPR at 95 % TPR "
            f"(only the test-set metrics)")


def _figures(res: EvaluationResults, results: dict[str, Any], out_dir: Path, name: str) -> None:
    from .plots import plot_adversarial, plot_entropy_cdf, plot_reliability

    if "outliers" in res.ood:
        entropies = {"test": res.predictions["test"]["entropy"], "outliers": res.predictions["outliers"]["entropy"]}
        plot_entropy_cdf(out_dir / "entropy_cdf.png", entropies, math.log(res.num_classes), title=name)
    plot_reliability(out_dir / "reliability.png", results["test"]["reliability"], title=name)
    if res.adversarial:
        plot_adversarial(out_dir / "adversarial.png", {k.upper(): c.rows() for k, c in res.adversarial.items()},
                         title=name)


@contextlib.contextmanager
def _fresh_dir(path: Path) -> Iterator[Path]:
    """A new empty folder next to ``path`` to write into; on success it replaces ``path`` as a whole (the old
    contents are deleted), on failure it is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700; give the folder the usual permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        path.rename(old / path.name)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _probes(method: Method, task: Any, n: int) -> dict[str, Any]:
    """The authors' MNIST rotation and mixup probes (docs/protocol.md §6.6): per angle / lambda, the predicted
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


def _report(r: dict[str, Any]) -> str:
    t, o = r["test"], r.get("outliers", {})
    # a point estimate (one draw) or identical draws: the mutual information is 0 by construction, so its column
    # and OOD row would only say "AUROC 0.5, FPR 1" (older results.json files still carry the row)
    spread = r["samples"] > 1 and "mutual_information" in r.get("ood", {"mutual_information": None})
    mi = (lambda v: number(v, 4)) if spread else (lambda v: "—")
    lines = [f"# Evaluation of `{r['run']}` ({r['method']} on {r['task']}, {r['samples']} posterior draw"
             f"{'s' if r['samples'] != 1 else ''} per prediction)", "",
             "| set | error % | NLL | Brier | ECE | entropy AUC | mean entropy / log K | mean MI |",
             "|---|---|---|---|---|---|---|---|",
             f"| test | {number(t['error_percent'], 2)} | {number(t['nll'])} | {number(t['brier'])} "
             f"| {number(t['ece'])} "
             f"| {number(t['entropy_auc'])} | {number(t['mean_entropy'])} | {mi(t['mean_mutual_information'])} |"]
    if o:
        lines.append(f"| outliers | — | — | — | — | {number(o['entropy_auc'])} | {number(o['mean_entropy'])} "
                     f"| {mi(o['mean_mutual_information'])} |")
        lines += ["", "Entropy AUC: area under the CDF of the predictive entropy / log K (docs/protocol.md §6.2); high "
                  "on the test set = confident, low on outliers = uncertain.", "",
                  "| OOD score | AUROC | AUPR in | AUPR out | FPR at 95 % TPR |", "|---|---|---|---|---|"]
        for score, m in r["ood"].items():
            if score != "mutual_information" or spread:
                lines.append(f"| {score} | {number(m['auroc'])} | {number(m['aupr_in'])} | {number(m['aupr_out'])} "
                             f"| {number(m['fpr_at_95_tpr'])} |")
    if not spread:
        why = "one posterior draw per prediction (a point estimate)" if r["samples"] == 1 else "identical draws"
        lines += ["", f"No mutual information (MI): with {why} it is zero by construction, so it measures no "
                  "epistemic uncertainty and ranks no outliers."]
    if o:
        lines += ["", "![entropy CDF](entropy_cdf.png) ![reliability](reliability.png)"]
    else:
        lines += ["", f"{r.get('ood_skipped') or _ood_skipped(r['task'])}.", "", "![reliability](reliability.png)"]
    if "adversarial" in r:
        s = r["adversarial"]["settings"]
        lines += ["", f"## FGSM ({s['images']} test images, gradient: {s['gradient']}, clamp: {s['clamp']})", "",
                  "| epsilon | accuracy | entropy / log K | entropy AUC |", "|---|---|---|---|"]
        lines += [f"| {row['epsilon']:.2f} | {number(row['accuracy'])} | {number(row['entropy'])} "
                  f"| {number(row['entropy_auc'])} |" for row in r["adversarial"]["fgsm"]]
        lines += ["", "![adversarial](adversarial.png)"]
    if isinstance(r.get("posterior_plots"), list):
        lines += ["", "## Weight posterior (1,000 samples)", ""] + [f"![{p}]({p})" for p in r["posterior_plots"]]
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path) -> str:
    """Tables 3/4-style comparison of evaluated runs (Markdown and CSV) and their FGSM curves in one figure;
    returns the Markdown.

    Raises:
        FileNotFoundError: a run has no ``eval/results.json``.
        OutputNotWritableError: ``out_dir`` cannot be written to (checked before anything is written).
    """
    from .plots import plot_adversarial

    rows, curves = [], {}
    for d in run_dirs:
        path = Path(d) / EVAL / RESULTS
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
        md.append("| " + " | ".join(number(row[k], 2 if "error" in k else 3) if k != "train_seconds" else
                                    number(row[k], 0) for k in keys) + " |")
    text = "\n".join(md) + "\n"
    out = ensure_writable(out_dir)
    atomic_write(out / "compare.md", lambda tmp: Path(tmp).write_text(text))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["run"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "compare.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    if curves:
        plot_adversarial(out / "adversarial.png", curves, title="FGSM")
    return text


__all__ = ["PAPER_TABLES", "compare_runs", "evaluate_run", "load_run", "results_record"]
