"""``bbh.evaluate``: the paper's numbers and the modern metrics for any trained classifier method, as data.

    results = bbh.evaluate(method, test=(x, y), ood={"noise": x_ood}, attacks={"fgsm": None}, seed=0)
    results.test.error_percent, results.ood["noise"].detection["entropy"]["auroc"], results.to_dict()

What is computed (docs/protocol.md §6.1-6.5; the same numbers ``bbh evaluate RUN_DIR`` reports):

* on the test set (:class:`SetMetrics`): error %, NLL, Brier score, ECE and the reliability bins (``bins``
  equal-width bins), the paper's entropy AUC (area under the CDF of the authors' clamped entropy / log K,
  :func:`bbh.core.metrics.entropy_auc`) and its standard error over the examples, and the means of the
  total entropy / log K, the expected entropy / log K and the mutual information (exact entropies,
  :class:`~bbh.core.predictive.Predictive`);
* per out-of-distribution set (:class:`OODResults`): the same label-free metrics, and OOD detection (AUROC, AUPR
  in / out, FPR at 95 % TPR, :func:`bbh.core.metrics.ood_metrics`) for three scores, each higher = more
  OOD: the total entropy H[p̄], the mutual information, and the negated maximum probability -max_k p̄_k (no mutual
  information for a predictive without epistemic spread, e.g. MAP's one draw: it is 0 there, so it ranks nothing);
* per attack (:class:`AttackCurve`): on the first ``images`` test examples, per ε: accuracy, mean authors'
  entropy / log K and entropy AUC of the predictive on the adversarial images (paper Figs. 3/4). At ε = 0 the
  clean test predictions of those images are reused, so the curve starts exactly at their clean accuracy. FGSM's
  step direction at x does not depend on ε (:func:`bbh.evaluation.attacks.fgsm_direction`), so a curve costs one
  gradient computation and one predictive per ε.

Methods that draw whole weight sets (BbH, BbB) serve every prediction of one evaluation from one set of
``n_samples`` draws (:meth:`bbh.Method.reusing_draws`): the predictive of every batch, OOD set and ε uses the
same S weight sets (the S-draw Monte Carlo predictive), and the FGSM gradient its own independent set; PGD
draws afresh at every step.

Every prediction uses ``n_samples`` posterior draws (MAP: 1, an ensemble: its M members; ``samples`` in the
results is the number actually used). The number of classes K is the last dimension of the method's outputs.
Nothing is written to disk; the method runs in eval mode (``method.evaluating()``) and its modes are restored;
with a ``seed`` all randomness (posterior draws, PGD starts) runs inside ``torch.random.fork_rng`` seeded with
it, so the numbers are reproducible and the caller's global RNG state is the same before and after; without a
seed the evaluation draws from the global RNG like any sampling code (nothing is ever reseeded). Data
loading (a DataLoader's shuffling or augmentation) draws from a separate fork, so a DataLoader and a tensor
pair with the same batches give identical numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Union

import torch
from torch import Tensor

from ..core import metrics
from ..core.predictive import iter_batches, predict_batches
from ..data.batches import as_batches
from ..posteriors.protocol import Method
from . import attacks as _attacks

Batches = Union[Tensor, "tuple[Tensor, Tensor]", Iterable[Any]]
"""What a data set may be: a tensor of inputs ``[N, ...]``, an ``(x, y)`` pair of tensors, or an iterable of
batches (a DataLoader), each a tensor of inputs or an ``(x, y, ...)`` tuple / list."""

ATTACKS = ("fgsm", "pgd")


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class AttackSpec:
    """One adversarial attack of the evaluation (docs/protocol.md §6.5).

    Attributes:
        attack: ``"fgsm"`` (:func:`bbh.evaluation.attacks.fgsm`) or ``"pgd"`` (:func:`~bbh.evaluation.attacks.pgd`,
            10 steps on the expected loss, random start).
        epsilons: the L∞ budgets ε (default: the paper's grid 0, 0.05, ..., 0.4).
        images: the first this many test examples are attacked (the authors' code: 100; the paper says 1,000).
        gradient: FGSM only: ``"authors"`` (x + ε · mean_s sign(g_s), the average of per-draw FGSM images) or
            ``"expectation"`` (x + ε · sign(∇_x mean_s CE_s)).
        clamp: ``(low, high)`` the adversarial inputs are clipped to, or None (the authors: none).
        samples: posterior draws per attack gradient; None: ``n_samples`` of the evaluation for FGSM,
            ``min(n_samples, 10)`` per step for PGD.
    """

    attack: str = "fgsm"
    epsilons: tuple[float, ...] = _attacks.PAPER_EPSILONS
    images: int = _attacks.PAPER_NUM_IMAGES
    gradient: str = "authors"
    clamp: tuple[float, float] | None = None
    samples: int | None = None

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; expected one of {', '.join(map(repr, ATTACKS))}")
        eps = tuple(float(e) for e in self.epsilons)
        if not eps or not all(math.isfinite(e) and e >= 0 for e in eps):
            raise ValueError(f"epsilons must be a non-empty sequence of finite numbers >= 0, got {self.epsilons!r}")
        object.__setattr__(self, "epsilons", eps)
        if isinstance(self.images, bool) or int(self.images) < 1:
            raise ValueError(f"images must be >= 1, got {self.images!r}")
        if self.gradient not in _attacks.GRADIENTS:
            raise ValueError(f"unknown gradient {self.gradient!r}; expected one of "
                             f"{', '.join(map(repr, _attacks.GRADIENTS))}")
        if self.clamp is not None:
            low, high = (float(v) for v in self.clamp)
            if not low <= high:
                raise ValueError(f"clamp must be a pair (low, high) with low <= high, got {self.clamp!r}")
            object.__setattr__(self, "clamp", (low, high))
        if self.samples is not None and (isinstance(self.samples, bool) or int(self.samples) < 1):
            raise ValueError(f"samples must be >= 1 or None, got {self.samples!r}")


@dataclass
class SetMetrics:
    """Metrics of the predictive on one data set; the label-dependent ones are None for an unlabelled set.

    Attributes:
        n: number of examples.
        entropy_auc: the paper's entropy AUC — area under the empirical CDF of H_1e-5[p̄] / log K, with the
            authors' clamp (:func:`bbh.core.metrics.entropy_auc`); high = confident.
        mean_entropy: mean over examples of H[p̄] / log K (exact entropy of the predictive).
        mean_expected_entropy: mean of E_s H[p_s] / log K (aleatoric part).
        mean_mutual_information: mean of I = H[p̄] - E_s H[p_s], nats (epistemic part).
        error_percent: 100 · (1/N) Σ_n [argmax_k p̄_nk ≠ y_n].
        nll: -(1/N) Σ_n log max(p̄_{n, y_n}, 1e-12).
        brier: (1/N) Σ_n Σ_k (p̄_nk - [y_n = k])².
        ece: Σ_b (n_b / N) |accuracy_b - confidence_b| over equal-width top-label confidence bins.
        reliability: the bins of the ECE (:func:`bbh.core.metrics.reliability`: ``lower``, ``upper``,
            ``confidence``, ``accuracy``, ``count``; empty bins have NaN confidence and accuracy).
        entropy_auc_se: the standard error of ``entropy_auc`` over the examples, std / sqrt(n) of each example's
            term of that mean (:func:`bbh.core.metrics.entropy_auc_se`; NaN, written None, below 2 examples).
    """

    n: int
    entropy_auc: float
    mean_entropy: float
    mean_expected_entropy: float
    mean_mutual_information: float
    error_percent: float | None = None
    nll: float | None = None
    brier: float | None = None
    ece: float | None = None
    reliability: dict[str, list[float] | list[int]] | None = None
    entropy_auc_se: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON-safe values (NaN and ±inf become None)."""
        return json_safe(asdict(self))


@dataclass
class OODResults:
    """One out-of-distribution set: its own (label-free) metrics and how well it is told apart from the test set.

    Attributes:
        metrics: :class:`SetMetrics` of the OOD set (label metrics None).
        detection: per score (``"entropy"``, ``"mutual_information"``, ``"max_prob"``), the
            :func:`bbh.core.metrics.ood_metrics` of test (negative) vs OOD (positive):
            ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr_at_95_tpr``. No ``"mutual_information"`` for a predictive
            without epistemic spread (one draw, as MAP's, or identical draws: :func:`has_epistemic_spread`).
    """

    metrics: SetMetrics
    detection: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON-safe values."""
        return {"metrics": self.metrics.to_dict(), "detection": json_safe(self.detection)}


@dataclass
class AttackPoint:
    """The predictive on adversarial images at one ε.

    Attributes:
        epsilon: the L∞ budget.
        accuracy: fraction of the attacked images still classified correctly.
        entropy: mean over the images of H_1e-5[p̄] / log K (authors' clamp, paper Figs. 3/4).
        entropy_auc: the paper's entropy AUC of those entropies.
    """

    epsilon: float
    accuracy: float
    entropy: float
    entropy_auc: float


@dataclass
class AttackCurve:
    """One attack over its ε grid: the resolved settings (``samples`` filled in) and one point per ε."""

    spec: AttackSpec
    points: list[AttackPoint]

    def rows(self) -> list[dict[str, float]]:
        """The points as ``{"epsilon", "accuracy", "entropy", "entropy_auc"}`` dicts (the figures' input)."""
        return [json_safe(asdict(p)) for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON-safe values: ``{"settings": {...}, "curve": [...]}``."""
        return {"settings": json_safe(asdict(self.spec)), "curve": self.rows()}


@dataclass
class EvaluationResults:
    """What :func:`evaluate` returns.

    Attributes:
        num_classes: K, the last dimension of the method's outputs.
        samples: posterior draws per prediction actually used (MAP 1, an ensemble M, else ``n_samples``).
        seed: the seed the evaluation ran under (None: it drew from the caller's global RNG).
        test: :class:`SetMetrics` of the test set.
        ood: per OOD set name, :class:`OODResults`.
        adversarial: per attack name (``"fgsm"``, ``"pgd"``), :class:`AttackCurve`.
        predictions: per set (``"test"`` and each OOD name), the per-example summaries of the predictive on the
            CPU — ``mean [N, K]``, ``entropy``, ``expected_entropy``, ``mutual_information`` ``[N]`` — for
            figures and further analysis; not part of :meth:`to_dict`.
    """

    num_classes: int
    samples: int
    seed: int | None
    test: SetMetrics
    ood: dict[str, OODResults] = field(default_factory=dict)
    adversarial: dict[str, AttackCurve] = field(default_factory=dict)
    predictions: dict[str, dict[str, Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but ``predictions`` as plain Python values that ``json.dumps(..., allow_nan=False)``
        accepts (NaN and ±inf become None)."""
        return {"num_classes": self.num_classes, "samples": self.samples, "seed": self.seed,
                "test": self.test.to_dict(), "ood": {k: v.to_dict() for k, v in self.ood.items()},
                "adversarial": {k: v.to_dict() for k, v in self.adversarial.items()}}


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, tuples as lists, tensors / numpy scalars as Python
    numbers (recursively through dicts and lists), so that strict JSON (``allow_nan=False``) accepts it."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (int, float)):  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, int):
        return obj
    if hasattr(obj, "__dataclass_fields__"):
        return json_safe({f.name: getattr(obj, f.name) for f in fields(obj)})
    return obj


# ---------------------------------------------------------------------------------------------- inputs
def _as_sets(ood: Batches | Mapping[str, Batches] | None) -> dict[str, Batches]:
    if ood is None:
        return {}
    if isinstance(ood, Mapping):
        return dict(ood)
    return {"ood": ood}


def _as_specs(attacks: Any) -> dict[str, AttackSpec]:
    """None | AttackSpec | [AttackSpec, ...] | {"fgsm": epsilons | None | AttackSpec, ...} -> {name: spec}."""
    if attacks is None:
        return {}
    if isinstance(attacks, AttackSpec):
        return {attacks.attack: attacks}
    if isinstance(attacks, str):
        return {attacks: AttackSpec(attack=attacks)}
    specs: dict[str, AttackSpec] = {}
    if isinstance(attacks, Mapping):
        for name, value in attacks.items():
            if isinstance(value, AttackSpec):
                if value.attack != name:
                    raise ValueError(f"attacks[{name!r}] is an AttackSpec of attack {value.attack!r}")
                specs[name] = value
            elif value is None:
                specs[name] = AttackSpec(attack=name)
            else:
                specs[name] = AttackSpec(attack=name, epsilons=tuple(value))
        return specs
    for spec in attacks:
        if not isinstance(spec, AttackSpec):
            raise TypeError(f"attacks must be None, an AttackSpec, a sequence of them or a dict "
                            f"{{attack: epsilons}}, got an element {type(spec).__name__}")
        if spec.attack in specs:
            raise ValueError(f"attack {spec.attack!r} given twice")
        specs[spec.attack] = spec
    return specs


def _cuda_devices() -> list[int]:
    """CUDA devices whose generators exist (none before CUDA is initialised): all are forked and seeded."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _seed(seed: int, devices: list[int]) -> None:
    """Seed the CPU generator and those of ``devices`` only (``torch.manual_seed`` would also queue a seed for
    CUDA devices not initialised yet, which would outlive the fork)."""
    torch.default_generator.manual_seed(seed)
    for i in devices:
        with torch.cuda.device(i):
            torch.cuda.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- metrics
def set_metrics(summary: Mapping[str, Tensor], y: Tensor | None, num_classes: int, bins: int = 15) -> SetMetrics:
    """:class:`SetMetrics` from per-example summaries (``mean``, ``entropy``, ``expected_entropy``,
    ``mutual_information``, as :func:`bbh.core.predictive.predict_batches` returns) and labels (or None).

    The entropy AUC uses the authors' clamp: ``metrics.entropy(mean)`` (docs/protocol.md §6.2); the mean entropies
    are the exact ones of the summaries, divided by log K.
    """
    mean = summary["mean"]
    log_k = math.log(num_classes)
    clamped = metrics.entropy(mean)
    out = SetMetrics(
        n=int(mean.shape[0]),
        entropy_auc=metrics.entropy_auc(clamped, num_classes),
        entropy_auc_se=metrics.entropy_auc_se(clamped, num_classes),
        mean_entropy=float(summary["entropy"].double().mean()) / log_k,
        mean_expected_entropy=float(summary["expected_entropy"].double().mean()) / log_k,
        mean_mutual_information=float(summary["mutual_information"].double().mean()),
    )
    if y is not None:
        out.error_percent = 100 * metrics.error_rate(mean, y)
        out.nll = metrics.nll(mean, y)
        out.brier = metrics.brier_score(mean, y)
        out.ece = metrics.ece(mean, y, bins=bins)
        out.reliability = metrics.reliability(mean, y, bins=bins)
    return out


NO_SPREAD_NATS = 1e-4
"""Mutual information (nats) below which, on every example of the sets, S > 1 draws count as identical: the
rounding of S equal float32 predictions leaves up to ~2e-6 (measured: K = 100 classes, S up to 1,000, chunked);
a posterior whose draws disagree on some input has far more there."""


def has_epistemic_spread(samples: int, *summaries: Mapping[str, Tensor]) -> bool:
    """Whether the predictive's draws disagree at all, so that the mutual information can tell anything apart.

    Decided on the predictive actually evaluated, not on the method's name: one draw (MAP, a Laplace probit
    predictive, a one-member ensemble, or any method evaluated with ``n_samples=1``) has I = H[p̄] - E_s H[p_s] = 0
    by definition; S draws that are all the same (a method without randomness) have I below
    :data:`NO_SPREAD_NATS` everywhere. Either way the MI score is a constant, whose AUROC of 0.5 and FPR of 1
    mean nothing.
    """
    if samples <= 1:
        return False
    values = [s["mutual_information"] for s in summaries if s["mutual_information"].numel()]
    return any(float(v.max()) > NO_SPREAD_NATS for v in values)


def ood_detection(summary_in: Mapping[str, Tensor], summary_out: Mapping[str, Tensor],
                  samples: int | None = None) -> dict[str, dict[str, float]]:
    """:func:`bbh.core.metrics.ood_metrics` of in- vs out-of-distribution for the scores: the exact entropy
    H[p̄], the mutual information, and the negated maximum probability -max_k p̄_k.

    The mutual information is left out when the predictive has no epistemic spread
    (:func:`has_epistemic_spread`; ``samples``: the draws per prediction, None: judged on the values alone).
    """
    scores = {"entropy": (summary_in["entropy"], summary_out["entropy"])}
    if has_epistemic_spread(2 if samples is None else samples, summary_in, summary_out):
        scores["mutual_information"] = (summary_in["mutual_information"], summary_out["mutual_information"])
    scores["max_prob"] = (-summary_in["mean"].max(-1).values, -summary_out["mean"].max(-1).values)
    return {name: metrics.ood_metrics(a, b) for name, (a, b) in scores.items()}


def _point(epsilon: float, mean: Tensor, y: Tensor, num_classes: int) -> AttackPoint:
    h = metrics.entropy(mean)  # the authors' clamp, as their FGSM figures
    return AttackPoint(epsilon=float(epsilon), accuracy=1 - metrics.error_rate(mean, y),
                       entropy=float(h.double().mean()) / math.log(num_classes),
                       entropy_auc=metrics.entropy_auc(h, num_classes))


GRADIENT_IMAGES = 100
"""Images per FGSM gradient pass in :func:`bbh.evaluate`: the pass keeps S x images activations for the
backward, so slices keep it in memory (and cache) whatever the number of attacked images."""


def _fgsm_direction(method: Method, spec: AttackSpec, x: Tensor, y: Tensor, chunk_size: int | None) -> Tensor:
    """FGSM's direction at every attacked image, :data:`GRADIENT_IMAGES` images at a time (each image's
    direction depends on its own loss only, and the draws are the evaluation's, so slicing changes nothing)."""
    return torch.cat([_attacks.fgsm_direction(method, x[i:i + GRADIENT_IMAGES], y[i:i + GRADIENT_IMAGES],
                                              n_samples=spec.samples or 1, gradient=spec.gradient,
                                              chunk_size=chunk_size)
                      for i in range(0, x.shape[0], GRADIENT_IMAGES)])


def _attack_curve(method: Method, spec: AttackSpec, x: Tensor, y: Tensor, clean_mean: Tensor, num_classes: int, *,
                  n_samples: int, chunk_size: int | None, batch_size: int) -> AttackCurve:
    device = x.device
    points = []
    direction = None
    for eps in spec.epsilons:
        if spec.attack == "fgsm":
            if eps == 0:
                x_adv = _attacks.apply_clamp(x.clone(), spec.clamp)
            else:
                if direction is None:  # one gradient for the whole curve: x_adv(ε) = clamp(x + ε d)
                    direction = _fgsm_direction(method, spec, x, y.to(device), chunk_size)
                x_adv = _attacks.apply_clamp(x + float(eps) * direction, spec.clamp).detach()
        else:
            with method.reusing_draws(False):  # PGD: fresh draws at every step (expectation over transformation)
                x_adv = _attacks.pgd(method, x, y.to(device), eps, n_samples=spec.samples, clamp=spec.clamp,
                                     chunk_size=chunk_size)
        if eps == 0 and torch.equal(x_adv, x):  # no perturbation: the clean predictions of these images
            mean = clean_mean
        else:
            mean = predict_batches(method, iter_batches(x_adv, batch_size), n_samples, chunk_size)["mean"]
        points.append(_point(eps, mean, y, num_classes))
    return AttackCurve(spec=spec, points=points)


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(method: Method, test: Batches, *, ood: Batches | Mapping[str, Batches] | None = None,
             attacks: AttackSpec | Sequence[AttackSpec] | Mapping[str, Any] | str | None = None,
             n_samples: int = 100, chunk_size: int | None = None, batch_size: int = 500,
             transform: Callable[[Tensor], Tensor] | None = None, seed: int | None = None, bins: int = 15,
             progress: Callable[[str], None] | None = None) -> EvaluationResults:
    """Evaluate a trained classifier method: test metrics, OOD detection, adversarial curves (module docstring).

    Args:
        method: a trained :class:`bbh.Method` whose outputs are class logits ``[S, B, K]``.
        test: the labelled test set: an ``(x, y)`` pair of tensors, or an iterable of ``(x, y, ...)`` batches
            (a DataLoader). Inputs without labels (a tensor, or batches without ``y``) give the label-free
            metrics only.
        ood: None, one OOD set (named ``"ood"``) or ``{name: set}``; a set is a tensor of inputs, an ``(x, y)``
            pair or an iterable of batches; labels are ignored.
        attacks: None; ``"fgsm"`` / ``"pgd"``; ``{"fgsm": epsilons or None, "pgd": ...}`` (None: the paper's
            grid); an :class:`AttackSpec` or a sequence of them (one per attack). The attacked images are the
            first ``spec.images`` test examples after ``transform`` (labels required).
        n_samples: posterior draws per prediction (MAP always 1, an ensemble its M members).
        chunk_size: evaluate at most this many draws at once (bounds memory; None: all at once).
        batch_size: examples per forward pass for tensor data (iterables keep their own batches).
        transform: applied to every input batch (test, OOD) before the method sees it; attacks act on
            transformed inputs (e.g. a task's ``eval_transform``).
        seed: with a seed every random draw of the evaluation runs in ``torch.random.fork_rng`` seeded with it:
            the numbers are reproducible and the caller's global RNG state is unchanged afterwards. None: the
            draws come from (and advance) the global RNG, as any sampling code's.
        bins: equal-width confidence bins of the ECE and the reliability diagram.
        progress: called with the name of each phase (``"test"``, ``"ood:NAME"``, ``"attack:NAME"``) as it starts.

    Returns:
        :class:`EvaluationResults`.

    Raises:
        ValueError: empty data, fewer than 2 classes, attacks on an unlabelled test set, bad arguments, a
            method with a regression likelihood (``likelihood.is_regression``).
    """
    if not isinstance(method, Method):
        raise TypeError(f"method must be a bbh Method, got {type(method).__name__}")
    if getattr(method.likelihood, "is_regression", False):
        raise ValueError(f"bbh.evaluate evaluates classifiers; this method has the regression likelihood "
                         f"{method.likelihood!r}: use method.predict(x, n) (a RegressionPredictive: mean, "
                         f"aleatoric_var, epistemic_var, log_density(y)) instead")
    if isinstance(n_samples, bool) or int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples!r}")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    n, batch_size = int(n_samples), int(batch_size)
    specs = _as_specs(attacks)
    specs = {k: replace(s, samples=s.samples or (n if s.attack == "fgsm" else min(n, 10))) for k, s in specs.items()}
    sets = _as_sets(ood)
    if "test" in sets:
        raise ValueError("an OOD set may not be named 'test'")
    devices = _cuda_devices()
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(torch.random.fork_rng(devices=devices))
            _seed(seed, devices)
        stack.enter_context(method.evaluating())
        stack.enter_context(method.reusing_draws())  # one set of n draws for every batch, set and ε
        return _run(method, test, sets, specs, n, chunk_size, batch_size, transform, seed, bins, progress)


def _run(method: Method, test: Batches, sets: dict[str, Batches], specs: dict[str, AttackSpec], n: int,
         chunk_size: int | None, batch_size: int, transform: Callable[[Tensor], Tensor] | None, seed: int | None,
         bins: int, progress: Callable[[str], None] | None) -> EvaluationResults:
    note = progress or (lambda _: None)
    keep = max((s.images for s in specs.values()), default=0)
    kept_x: list[Tensor] = []
    kept_y: list[Tensor] = []
    labels: list[Tensor] = []
    unlabelled = False

    def inputs(data: Batches, name: str, collect: bool) -> Iterator[Tensor]:
        nonlocal unlabelled
        kept = 0
        for xb, yb in as_batches(data, batch_size, name=name):
            if transform is not None:
                xb = transform(xb)
            if collect:
                if yb is None:
                    unlabelled = True
                else:
                    labels.append(yb.detach().cpu())
                if kept < keep and yb is not None:
                    kept_x.append(xb[:keep - kept])
                    kept_y.append(yb[:keep - kept])
                    kept += kept_x[-1].shape[0]
            yield xb

    note("test")
    test_summary = predict_batches(method, inputs(test, "test", True), n, chunk_size)
    num_classes = int(test_summary["mean"].shape[-1])
    if num_classes < 2:
        raise ValueError(f"the method's outputs have {num_classes} class; classification needs K >= 2")
    samples = method.draws(n)
    y = None if unlabelled or not labels else torch.cat(labels)
    results = EvaluationResults(num_classes=num_classes, samples=samples, seed=seed,
                                test=set_metrics(test_summary, y, num_classes, bins),
                                predictions={"test": test_summary})
    for name, data in sets.items():
        note(f"ood:{name}")
        summary = predict_batches(method, inputs(data, f"ood[{name!r}]", False), n, chunk_size)
        if summary["mean"].shape[-1] != num_classes:
            raise ValueError(f"the outputs on ood[{name!r}] have {summary['mean'].shape[-1]} classes, on the "
                             f"test set {num_classes}")
        results.ood[name] = OODResults(metrics=set_metrics(summary, None, num_classes, bins),
                                       detection=ood_detection(test_summary, summary, samples))
        results.predictions[name] = summary
    if specs:
        if y is None:
            raise ValueError("attacks need a labelled test set: pass (x, y) pairs or (x, y) batches")
        x_att, y_att = torch.cat(kept_x), torch.cat(kept_y).cpu()
        device = next((t.device for t in method.parameters()), x_att.device)
        x_att = x_att.to(device)
        for name, spec in specs.items():
            note(f"attack:{name}")
            m = min(spec.images, x_att.shape[0])
            results.adversarial[name] = _attack_curve(
                method, spec, x_att[:m], y_att[:m], test_summary["mean"][:m], num_classes,
                n_samples=n, chunk_size=chunk_size, batch_size=batch_size)
    return results


__all__ = ["ATTACKS", "NO_SPREAD_NATS", "AttackCurve", "AttackPoint", "AttackSpec", "EvaluationResults", "OODResults",
           "SetMetrics", "evaluate", "has_epistemic_spread", "json_safe", "ood_detection", "set_metrics"]
