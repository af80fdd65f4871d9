"""Options of bbh: string options as ``str`` Enums with :func:`parse_option`, and the checks of numeric options.

Every string option of the library is either one of these enums or accepts its value as a plain string;
invalid values fail at construction with a message that lists the valid ones. Integer, real and size-list
options go through :func:`check_int`, :func:`check_float` and :func:`check_sizes`, which reject values of
the wrong type (``"1"``, ``1.5``, ``True``) instead of converting them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


class Layout(str, Enum):
    """How the hypernetwork(s) generate the posterior weights (paper Table 1)."""

    LAYERWISE = "layerwise"
    """One hypernet per parameter tensor emitting the whole tensor (the paper's main architecture)."""
    SLICED = "sliced"
    """One hypernet per tensor, conditioned on a one-hot index of an output-channel slice."""
    SINGLE = "single"
    """One hypernet for all parameters, conditioned on a chunk index over the flat parameter vector."""
    CHUNKED = "chunked"
    """One hypernet for all parameters, conditioned on a learned embedding of the chunk index (instead of a
    one-hot vector); all chunks of all samples are generated in one batched call. Scales to any network."""
    RANK1 = "rank1"
    """A point-estimated base weight per tensor modulated by rank-1 factors that layer-wise hypernets generate
    from noise: W = W0 * ((1 + a)(1 + b)^T). Only the factors are random. Scales to any network."""
    AUTO = "auto"
    """``layerwise`` where its hypernets fit the budget of :data:`bbh.posteriors.sizing.AUTO_BUDGET_BYTES`,
    ``rank1`` above it (the default of ``bbh.create("bbh", model)``)."""


class Noise(str, Enum):
    """How the noise z is shared between hypernetworks (paper Table 2)."""

    SHARED = "shared"
    """One z per sample feeds every hypernet (the authors' default, "aligned" noise)."""
    INDEPENDENT = "independent"
    """Every hypernet draws its own z per sample (paper Table 3's BbH)."""


class Init(str, Enum):
    """Initialisation of the hypernetworks."""

    HYPERFAN = "hyperfan"
    """Kaiming hidden layers and an output layer scaled so that the generated weights start at the scale of
    the main network's own initialisation (hyperfan-in, Chang et al., ICLR 2020). The default."""
    GLOROT = "glorot"
    """The authors' TensorFlow default: Glorot-uniform kernels and zero biases on every hypernet layer."""


class LikelihoodSamples(str, Enum):
    """Which of the S weight samples generated per step enter the likelihood term."""

    ONE = "one"
    """Only the first sample, for the whole minibatch (the authors' code; all S still enter the KL)."""
    AVERAGE = "average"
    """The mean over all S samples of the NLL: the standard Monte Carlo ELBO, S times the main-net cost."""
    MIXTURE = "mixture"
    """-log mean_s p(y | x, w_s): the log-mean-exp mixture likelihood (the authors' ``-m`` flag)."""
    SPLIT = "split"
    """The minibatch cut into S contiguous parts, part s under sample s: every sample enters the likelihood at the
    main-net cost of ``one`` (each example is seen under one sample), as BatchEnsemble and rank-1 BNNs train
    their members (Wen et al. 2020; Dusenberry et al. 2020). Needs a batch of at least S examples."""


class Covariance(str, Enum):
    """The covariance of a semi-implicit posterior's Gaussian layer (:mod:`bbh.posteriors.semi_implicit`)."""

    DIAGONAL = "diagonal"
    """One learned std per weight."""
    KRONECKER = "kronecker"
    """Per tensor seen as a matrix [out, in]: AAᵀ ⊗ BBᵀ with lower-triangular A, B (matrix-variate Gaussian)."""


class OptimizerName(str, Enum):
    """Optimizers the Trainer builds."""

    ADAM = "adam"
    """torch Adam (fused kernel where available)."""
    RMSPROP_TF = "rmsprop-tf"
    """RMSProp with TensorFlow 1 semantics: decay 0.9, epsilon inside the square root, accumulator
    initialised to 1 (what the authors' BbH runs used)."""


class LRSchedule(str, Enum):
    """How the Trainer's learning rate moves over training."""

    CONSTANT = "constant"
    """The learning rate as given at every step (the paper's runs)."""
    COSINE = "cosine"
    """lr_t = lr * (1 + cos(pi * t / T)) / 2 over the T steps training will take (Loshchilov & Hutter 2017,
    SGDR without restarts): full at the first step, near zero at the last, so the final weights are not a
    snapshot taken at full step size."""


class KLName(str, Enum):
    """The KL estimators built by name (:func:`bbh.kl.make_kl_estimator`; a :class:`~bbh.kl.KLEstimator` works too)."""

    NN_PER_WEIGHT = "nn-per-weight"
    """The paper's Eq. 2, per scalar weight."""
    NN_FULL = "nn-full"
    """Eq. 2 on whole weight vectors."""
    NN_ENTROPY = "nn-entropy"
    """Exact cross-entropy to the prior minus a k-NN entropy of whole vectors."""
    NN_ENTROPY_PER_WEIGHT = "nn-entropy-per-weight"
    """Exact cross-entropy minus per-weight k-NN entropies."""
    SEMI_IMPLICIT = "semi-implicit"
    """The SIVI entropy bound on a Gaussian layer over the hypernet's draws (Yin & Zhou 2018)."""
    STEIN = "stein"
    """The entropy gradient of the spectral Stein estimator (Shi et al. 2018)."""
    ADVERSARIAL = "adversarial"
    """A discriminator's density-ratio estimate (the paper's Appendix A)."""


class LikelihoodName(str, Enum):
    """Likelihoods built by name (:func:`bbh.likelihoods.as_likelihood`; a likelihood object works too)."""

    CATEGORICAL = "categorical"
    """Softmax over the outputs' last dimension."""
    GAUSSIAN = "gaussian"
    """N(y; f(x), σ²) with σ learned."""
    HETEROSCEDASTIC = "heteroscedastic"
    """The network outputs the mean and the log-variance."""


class BBBEstimator(str, Enum):
    """How Bayes by Backprop samples its weights."""

    SHARED = "shared"
    """One weight sample per minibatch (the authors')."""
    LOCAL = "local"
    """The local reparameterisation: pre-activations sampled per example (Kingma et al. 2015)."""


class MNFKLLayers(str, Enum):
    """Which layers' KL enters MNF's objective."""

    ALL = "all"
    """Every Linear and Conv2d layer."""
    DENSE = "dense"
    """Dense layers only (the authors': their conv layers were trained by the likelihood alone)."""


class LaplaceStructure(str, Enum):
    """The Hessian approximation of the last-layer Laplace."""

    KRON = "kron"
    """Kronecker-factored (K-FAC)."""
    DIAG = "diag"
    """Diagonal."""
    FULL = "full"
    """Full (small last layers only)."""


class LaplacePredictive(str, Enum):
    """How the last-layer Laplace turns its Gaussian over logits into class probabilities."""

    MC = "mc"
    """Monte Carlo over logit draws."""
    PROBIT = "probit"
    """The probit approximation (MacKay 1992)."""


class ResNetVariant(str, Enum):
    """``ResNet32(variant=...)``."""

    PAPER = "paper"
    """The authors' network."""
    STANDARD = "standard"
    """He et al.'s."""


class NormKind(str, Enum):
    """``ResNet32(norm=...)``: the normalisation layers."""

    RUNNING = "running"
    """BatchNorm with running statistics at test time."""
    BATCH = "batch"
    """BatchNorm with the batch's statistics also at test time."""
    INSTANCE = "instance"
    """Instance normalisation (the authors')."""


class DropoutPlacement(str, Enum):
    """``ResNet32(dropout_placement=...)``: where the MC-Dropout sites are."""

    EVERY_CONV = "every-conv"
    """After every convolution."""
    ONE_PER_UNIT = "one-per-unit"
    """One site per residual unit."""


class Padding(str, Enum):
    """``ResNet32(padding=...)``: how the stride-2 3x3 convolutions pad their input."""

    TF = "tf"
    """TensorFlow's SAME padding (asymmetric)."""
    TORCH = "torch"
    """Symmetric padding 1."""


class ResNetInit(str, Enum):
    """``ResNet32(init=...)``: initialisation of the conv and dense layers."""

    VARIANCE_SCALING = "variance-scaling"
    """TensorFlow's variance scaling (the authors')."""
    KAIMING = "kaiming"
    """He et al.'s."""
    TORCH = "torch"
    """PyTorch's layer defaults."""


class ShortcutMode(str, Enum):
    """How a ResNet unit's shortcut changes resolution."""

    AVGPOOL = "avgpool"
    """Average pooling and zero-padded channels."""
    SUBSAMPLE = "subsample"
    """Strided subsampling and zero-padded channels."""


def choices(enum: type[Enum]) -> tuple[str, ...]:
    """The string values of an option's enum, in declaration order."""
    return tuple(m.value for m in enum)


def parse_option(enum: type[E], value: E | str, name: str) -> E:
    """Return ``value`` as a member of ``enum`` or raise a ``ValueError`` listing the valid values.

    Args:
        enum: the option's enum class.
        value: a member or its string value (case-insensitive).
        name: the option's name, for the error message.
    """
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        for member in enum:
            if member.value == value.lower():
                return member
    valid = ", ".join(repr(m.value) for m in enum)
    raise ValueError(f"unknown {name} {value!r}; expected one of {valid}")


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer (Python, NumPy or a 0-d integer tensor) >= ``minimum``.

    Strings, floats (even ``2.0``) and bools are rejected rather than converted.

    Args:
        name: the option's name, for the error message.
        value: what the user passed.
        minimum: the smallest valid value (None: no bound).

    Raises:
        ValueError: ``value`` is not an integer or is below ``minimum``.
    """
    bound = "" if minimum is None else f" >= {minimum}"
    integer = None
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        try:
            integer = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            integer = None
    if integer is None or (minimum is not None and integer < minimum):
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
    return integer


def check_float(name: str, value: object, low: float = -math.inf, high: float = math.inf, *,
                open_low: bool = False, open_high: bool = False) -> float:
    """Return ``value`` as a ``float`` if it is a finite real number in the interval from ``low`` to ``high``.

    Ints and floats (Python or NumPy) are accepted; strings, bools, NaN and infinities are rejected.

    Args:
        name: the option's name, for the error message.
        value: what the user passed.
        low, high: the bounds (infinite: none).
        open_low, open_high: exclude the bound itself.

    Raises:
        ValueError: ``value`` is not a finite real number in the interval.
    """
    number = None
    if not isinstance(value, (bool, str, bytes)) and type(value).__name__ != "bool_":
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = None
    inside = number is not None and math.isfinite(number) and \
        (number > low if open_low else number >= low) and (number < high if open_high else number <= high)
    if not inside:
        if math.isinf(low) and math.isinf(high):
            what = "a finite number"
        elif math.isinf(high):
            what = f"a number {'>' if open_low else '>='} {low:g}"
        elif math.isinf(low):
            what = f"a number {'<' if open_high else '<='} {high:g}"
        else:
            what = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number  # type: ignore[return-value]


def check_sizes(name: str, value: object, example: str = "(64, 256, 512)") -> tuple[int, ...]:
    """Return ``value`` as a tuple of ints if it is a non-empty sequence of integers >= 1 (layer sizes).

    Args:
        name: the option's name, for the error message.
        value: what the user passed (a list or tuple; a bare int or a string is rejected).
        example: a valid value shown in the error message.

    Raises:
        ValueError: ``value`` is not a non-empty sequence of positive integers.
    """
    message = f"{name} must be a sequence of layer sizes such as {example}, got {value!r}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(message)
    try:
        return tuple(check_int(name, v, 1) for v in value)
    except ValueError:
        raise ValueError(message + " (every size must be an int >= 1)") from None
