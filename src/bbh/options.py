"""String options of bbh as ``str`` Enums, and one helper that turns user input into them.

Every option of the library is either one of these enums or accepts its value as a plain string.
Invalid values fail at construction with a message that lists the valid ones.
"""

from __future__ import annotations

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


class OptimizerName(str, Enum):
    """Optimizers the Trainer builds."""

    ADAM = "adam"
    """torch Adam (fused kernel where available)."""
    RMSPROP_TF = "rmsprop-tf"
    """RMSProp with TensorFlow 1 semantics: decay 0.9, epsilon inside the square root, accumulator
    initialised to 1 (what the authors' BbH runs used)."""


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
