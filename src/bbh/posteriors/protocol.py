"""The method protocol shared by every posterior in bbh (:class:`Method`) and parameter selection.

A *method* wraps a plain ``nn.Module`` (the main network) and owns a distribution over a chosen subset of
its parameters (or, for MC-Dropout and MNF, stochastic layers). See :class:`Method` for the interface and
the capabilities a method declares; :mod:`bbh.posteriors.factory` builds methods by name.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..elbo import LossTerms
from ..likelihoods import Likelihood, as_likelihood
from ..options import check_int
from ..priors import Prior, as_prior

if TYPE_CHECKING:
    from ..evaluation.predictive import Predictive, RegressionPredictive

ParamFilter = Callable[[str, nn.Parameter], bool] | Iterable[str] | None

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
"""Layers whose weight and bias are random variables by default. Normalisation layers are not among
them: their affine parameters stay point estimates (as in the authors' ResNets)."""


CONV_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}
_LOW_PRECISION = (torch.float16, torch.bfloat16, torch.float32)


class NonFiniteInputError(ValueError, FloatingPointError):
    """Inputs or targets holding NaN or inf, found by :meth:`Method.check_inputs` before any forward pass.

    A ``ValueError`` (bad data) and a ``FloatingPointError``, so that the Trainer reports it as a
    :class:`~bbh.training.trainer.NonFiniteLossError` at its step, the parameters left as they were.
    """


@dataclass(frozen=True)
class InputLayer:
    """The model's first Linear / Conv layer in module order: what a method checks its inputs against.

    Attributes:
        name: the layer's name in the model (``""``: the model itself).
        kind: its class name (``"Conv2d"``, ``"Linear"``, ...).
        size: ``in_features`` (Linear) or ``in_channels`` (Conv).
        spatial: the number of spatial dimensions N of a ConvNd; 0 for a Linear layer.
    """

    name: str
    kind: str
    size: int
    spatial: int

    def describe(self) -> str:
        """``"its first layer `c1` is Conv2d with 1 input channel"``."""
        unit = "input feature" if self.spatial == 0 else "input channel"
        where = f"its first layer `{self.name}` is" if self.name else "it is"
        return f"{where} {self.kind} with {self.size} {unit}{'' if self.size == 1 else 's'}"

    def expected(self, lead: Sequence[str]) -> str:
        """The expected input shape, ``"[B, 1, H, W]"``, with the leading batch dimensions ``lead``."""
        rest = f"{self.size}" if self.spatial == 0 else f"{self.size}, {_SPATIAL_NAMES.get(self.spatial, '...')}"
        return f"[{', '.join(lead)}, {rest}]"

    def fits(self, example: Sequence[int]) -> bool:
        """Whether one example's shape (without batch dimensions) is what the layer takes directly."""
        if self.spatial == 0:
            return len(example) >= 1 and example[-1] == self.size
        return len(example) == self.spatial + 1 and example[0] == self.size

    def receives(self, shape: Sequence[int]) -> bool:
        """Whether the layer can run on an input of ``shape`` (batched or not, as PyTorch allows)."""
        if self.spatial == 0:
            return len(shape) >= 1 and shape[-1] == self.size
        return len(shape) in (self.spatial + 1, self.spatial + 2) and shape[-self.spatial - 1] == self.size


def find_input_layer(model: nn.Module) -> InputLayer | None:
    """The first Linear / Conv layer of ``model`` in module order, or None where the inputs cannot be
    checked against one: no such layer, an embedding before it (integer inputs), or a lazy layer."""
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag, nn.modules.lazy.LazyModuleMixin)):
            return None
        if isinstance(mod, nn.Linear):
            return InputLayer(name, type(mod).__name__, int(mod.in_features), 0)
        if isinstance(mod, CONV_LAYERS):
            return InputLayer(name, type(mod).__name__, int(mod.in_channels), len(mod.kernel_size))
    return None


class _Reached(Exception):
    """Raised by the dry run's hook once the input layer has seen its input."""


def _dtype_fits(dtype: torch.dtype, param_dtype: torch.dtype, device_type: str) -> bool:
    if dtype == param_dtype:
        return True
    return dtype in _LOW_PRECISION and param_dtype in _LOW_PRECISION and torch.is_autocast_enabled(device_type)


def _conversion(dtype: torch.dtype) -> str:
    names = {torch.float32: "float", torch.float64: "double", torch.float16: "half", torch.bfloat16: "bfloat16"}
    return f"x.{names[dtype]}()" if dtype in names else f"x.to({dtype})"


def _non_finite_message(name: str, t: Tensor, batch_dims: int) -> str:
    bad = ~torch.isfinite(t)
    nan, count = int(torch.isnan(t).sum()), int(bad.sum())
    rows = bad.reshape(*t.shape[:batch_dims], -1).any(-1).nonzero().tolist()
    where = ", ".join(str(r[0]) if batch_dims == 1 else str(tuple(r)) for r in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return (f"{name} holds {count} non-finite value{'' if count == 1 else 's'} ({nan} NaN, {count - nan} inf) "
            f"among its {t.numel()} entries, in batch example{'' if len(rows) == 1 else 's'} {where}{more}; "
            f"the data must be finite (nothing was computed)")


def select_parameters(model: nn.Module, params: ParamFilter = None) -> list[str]:
    """Names of the parameters of ``model`` that a posterior covers.

    Args:
        model: the main network.
        params: None (every weight and bias of Linear and Conv layers), a predicate
            ``f(name, parameter) -> bool``, or names / glob patterns (``"fc*.weight"``).

    Raises:
        ValueError: a name that does not exist, a pattern that matches nothing, or an empty selection.
    """
    named = dict(model.named_parameters())
    if params is None:
        chosen = []
        for mod_name, mod in model.named_modules():
            if isinstance(mod, WEIGHT_LAYERS):
                for p_name, p in mod.named_parameters(recurse=False):
                    if p is not None:
                        chosen.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    elif callable(params):
        chosen = [n for n, p in named.items() if params(n, p)]
    else:
        if isinstance(params, str):
            params = [params]
        chosen = []
        for pattern in params:
            hits = [n for n in named if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(
                    f"parameter {pattern!r} does not exist in {type(model).__name__}; "
                    f"its parameters are: {', '.join(named)}"
                )
            chosen.extend(h for h in hits if h not in chosen)
    if not chosen:
        raise ValueError(f"no parameters of {type(model).__name__} selected for the posterior "
                         f"(parameters: {', '.join(named) or 'none'})")
    order = list(named)
    return sorted(chosen, key=order.index)


class Method(nn.Module):
    """The one door: the base class of every bbh method (BbH, MAP and the baselines).

    Every consumer — the Trainer, evaluation, attacks, probes, posterior plots, reports — talks to a method
    only through this interface and the capabilities it declares; none names a concrete method class.

    What a subclass implements (the public :meth:`loss` and :meth:`sample_outputs` check the inputs with
    :meth:`check_inputs`, before any forward pass, and then call these):

    * :meth:`_loss` ``(x, y, *, num_data, kl_weight) -> LossTerms`` — the per-datum negative ELBO with its
      terms apart and the per-example ``outputs`` the NLL came from (:func:`bbh.elbo.elbo`).
    * :meth:`_sample_outputs` ``(x, n_samples, *, chunk_size=None) -> Tensor[S, B, ...]`` — network outputs
      under S posterior draws, at most ``chunk_size`` draws evaluated at once.

    What it may override (capabilities, with safe defaults):

    * :attr:`fixed_draws` — ``None`` where ``sample_outputs`` draws as many samples as asked, else the fixed
      number it always returns (MAP: 1, a deep ensemble: M members).
    * :meth:`weight_samples` ``(n) -> dict[name, Tensor[n, *shape]] | None`` — samples of the weight
      posterior, or None for methods without one (MAP, MC-Dropout).
    * :meth:`_per_copy_outputs` ``(xs [S, B, ...]) -> [S, B, ...]`` — S fresh draws where draw s sees only
      ``xs[s]`` (per-sample input gradients for the authors' FGSM; public: :meth:`per_copy_outputs`); the
      default loops over draws.
    * :attr:`loss_lead` — the batch dimensions of ``loss``'s inputs (``("B",)``; an ensemble trained on one
      minibatch per member: ``("M", "B")``).
    * :meth:`post_step` — an auxiliary update after each optimizer step (a trainable KL estimator).
    * :meth:`trainable_parameters` — what the main optimizer updates.

    The main network is ``self.model``; parameters a method replaces by samples have ``requires_grad =
    False``. ``state_dict()`` holds tensors only and round-trips through ``torch.load(weights_only=True)``.
    """

    name: ClassVar[str] = "method"
    fixed_draws: int | None = None
    """None: ``sample_outputs`` returns as many draws as asked; else the fixed number it always returns."""
    default_lr: ClassVar[dict[str, float]] = {}
    """Learning rate per optimizer name used by the Trainer when none is given (falls back to
    :data:`bbh.training.optim.DEFAULT_LR`)."""
    loss_lead: tuple[str, ...] = ("B",)
    """Names of the batch dimensions leading ``loss``'s ``x`` and ``y``."""

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical",
                 prior: Prior | float = 1.0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.likelihood = as_likelihood(likelihood)
        self.prior = as_prior(prior)
        self.input_layer: InputLayer | None = find_input_layer(model)
        """The layer the inputs are checked against (found at construction, by module order)."""
        self._inputs_seen: set[tuple] = set()  # inputs (:meth:`_input_key`) the dry run let through

    # ---- the public door: inputs checked, then the subclass's implementation ------------------------------
    def loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        """Per-datum negative ELBO on one minibatch: ``mean NLL + kl_weight * KL / num_data``.

        Raises:
            ValueError: inputs or targets that do not fit the model (:meth:`check_inputs`), found before any
                forward pass, so no state (BatchNorm statistics) is touched; :class:`NonFiniteInputError` for
                NaN or inf in them.
        """
        self.check_inputs(x, y, lead=self.loss_lead)
        return self._loss(x, y, num_data=num_data, kl_weight=kl_weight)

    def sample_outputs(self, x: Tensor, n_samples: int | None = None, *, chunk_size: int | None = None) -> Tensor:
        """Outputs under ``n_samples`` posterior draws, ``[S, B, ...]`` (S = :attr:`fixed_draws` if set, when
        ``n_samples`` is ignored).

        Raises:
            ValueError: inputs that do not fit the model or hold NaN / inf (:meth:`check_inputs`), or
                ``n_samples`` not an int >= 1.
        """
        self.check_inputs(x)
        if self.fixed_draws is None:
            n_samples = check_int("n_samples", n_samples, 1)
        return self._sample_outputs(x, n_samples, chunk_size=chunk_size)

    def per_copy_outputs(self, xs: Tensor) -> Tensor:
        """``xs [S, B, ...] -> outputs [S, B, ...]``: S fresh posterior draws, draw s evaluated on ``xs[s]``
        only (so that one backward pass yields each draw's own input gradient). Inputs checked as
        :meth:`sample_outputs`, then :meth:`_per_copy_outputs`."""
        self.check_inputs(xs, lead=("S", "B"))
        return self._per_copy_outputs(xs)

    # ---- what every method implements -----------------------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        """:meth:`loss` on checked inputs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _loss()")

    def _sample_outputs(self, x: Tensor, n_samples: int | None, *, chunk_size: int | None = None) -> Tensor:
        """:meth:`sample_outputs` on checked inputs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _sample_outputs()")

    # ---- input checks -------------------------------------------------------------------------------------
    def check_inputs(self, x: Tensor, y: Tensor | None = None, *, lead: Sequence[str] = ("B",)) -> None:
        """Check a batch before any forward pass; the messages name what was expected and what was found.

        * ``x`` is a tensor on the model's device with batch dimensions ``lead``;
        * where the model has a Linear / Conv layer (:attr:`input_layer`, the first in module order): x is
          floating point of the parameters' dtype (any of float32 / float16 / bfloat16 under autocast) and
          one example has the layer's shape (``[C, H, W]`` with C its input channels, ``[..., F]`` with F its
          input features). An input that does not (LeNet-5's flat ``[B, 784]``, a model that casts or
          reshapes its inputs itself) is dry-run once per example shape and dtype on the ``meta`` device
          (no data, no state touched): it is rejected only if the model raises, or hands the layer an input
          it cannot take;
        * ``y`` (if given) is a tensor on x's device with the same batch dimensions, of the kind the
          likelihood takes (its ``check_targets``, if it has one);
        * x and a floating-point y hold no NaN or inf (:class:`NonFiniteInputError`).

        Args:
            x: inputs ``[*lead, ...]``.
            y: targets ``[*lead, ...]`` or None.
            lead: names of the batch dimensions (``("B",)``; ``("S", "B")`` for per-copy inputs).

        Raises:
            TypeError: x or y not a tensor.
            ValueError: any other mismatch (:class:`NonFiniteInputError` for NaN / inf).
        """
        n, model = len(lead), type(self.model).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__} (convert it with torch.as_tensor)")
        if x.dim() < n:
            raise ValueError(f"x must have the batch dimension{'s' if n > 1 else ''} [{', '.join(lead)}, ...], "
                             f"got shape {list(x.shape)}")
        ref = self._reference_parameter()
        if ref is not None and ref.device.type != "meta" and x.device != ref.device:
            raise ValueError(f"x is on {x.device} but {model} is on {ref.device}: move it with x.to('{ref.device}')")
        layer = self.input_layer
        if layer is not None and ref is not None:
            if not (layer.fits(tuple(x.shape[n:])) and _dtype_fits(x.dtype, ref.dtype, x.device.type)) \
                    and self._input_key(x, n) not in self._inputs_seen:
                self._dry_run(x, lead, layer, ref.dtype)
        if y is not None:
            if not isinstance(y, Tensor):
                raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__} (convert it with torch.as_tensor)")
            if y.device != x.device:
                raise ValueError(f"y is on {y.device} but x is on {x.device}")
            if y.shape[:n] != x.shape[:n]:
                raise ValueError(f"x and y must have the same batch dimensions [{', '.join(lead)}]: x is "
                                 f"{list(x.shape)}, y is {list(y.shape)}")
            check_targets = getattr(self.likelihood, "check_targets", None)
            if callable(check_targets):
                check_targets(y.flatten(0, n - 1) if n > 1 else y, math.prod(x.shape[:n]))
        checked = [(name, t) for name, t in (("x", x), ("y", y))
                   if t is not None and (t.is_floating_point() or t.is_complex())]
        if checked:
            # NaN and inf propagate through a sum, a single pass (``isfinite(t).all()`` is several times slower);
            # a sum that overflows is re-checked entry by entry. One device sync for x and y together.
            finite = torch.isfinite(checked[0][1].sum())
            for _, t in checked[1:]:
                finite = finite & torch.isfinite(t.sum())
            if not bool(finite):
                bad = [(name, t) for name, t in checked if not bool(torch.isfinite(t).all())]
                if bad:
                    raise NonFiniteInputError("; ".join(_non_finite_message(name, t, n) for name, t in bad))

    def _reference_parameter(self) -> Tensor | None:
        """A parameter of the input layer (else of the model): the dtype and device inputs must have."""
        if self.input_layer is not None:
            try:
                ref = next(self.model.get_submodule(self.input_layer.name).parameters(), None)
            except AttributeError:  # the layer was replaced by one without that name
                ref = None
            if ref is not None:
                return ref
        return next(self.model.parameters(), None)

    def _dry_run(self, x: Tensor, lead: Sequence[str], layer: InputLayer, dtype: torch.dtype) -> None:
        """Run the model on an empty ``meta`` copy of one batch of x up to the input layer; raise ``ValueError``
        when the model rejects it or would hand the layer an input it cannot take, and remember the example
        shape and dtype otherwise. Inconclusive runs (an operation the meta device lacks) raise nothing."""
        n, model = len(lead), type(self.model).__name__
        example = tuple(x.shape[n:])
        shape_problem = (f"{model} expects inputs of shape {layer.expected(lead)} ({layer.describe()}); "
                         f"got {list(x.shape)}")
        dtype_problem = (f"{model} expects inputs of dtype {dtype} (the dtype of its parameters); got {x.dtype}: "
                         f"convert them with {_conversion(dtype)}")
        seen: list[Tensor] = []

        def reached(module: nn.Module, args: tuple) -> None:
            seen.extend(a for a in args[:1] if isinstance(a, Tensor))
            raise _Reached

        try:
            state = {k: torch.empty_like(v, device="meta")
                     for k, v in chain(self.model.named_parameters(), self.model.named_buffers())}
            handle = self.model.get_submodule(layer.name).register_forward_pre_hook(reached)
        except Exception:  # noqa: BLE001 - lazy or unusual modules: nothing certain to say
            return self._remember(x, n)
        try:
            with torch.no_grad():
                functional_call(self.model, state, (torch.empty(x.shape[n - 1:], dtype=x.dtype, device="meta"),))
        except _Reached:
            pass
        except Exception as err:  # noqa: BLE001
            if "meta" in str(err).lower():
                return self._remember(x, n)  # the dry run itself failed, not the input
            problems = [shape_problem] if not layer.fits(example) else []
            if not _dtype_fits(x.dtype, dtype, x.device.type):
                problems.append(dtype_problem)
            raise ValueError("; ".join(problems) + f" ({model} raised: {err})") from err
        finally:
            handle.remove()
        if seen:
            got = seen[0]
            problems = []
            if not layer.receives(tuple(got.shape)):
                received = tuple(got.shape) != tuple(x.shape[n - 1:])
                problems.append(shape_problem + (f" (`{layer.name}` received {list(got.shape)})" if received else ""))
            if not _dtype_fits(got.dtype, dtype, x.device.type):
                problems.append(dtype_problem)
            if problems:
                raise ValueError("; ".join(problems))
        self._remember(x, n)

    @staticmethod
    def _input_key(x: Tensor, batch_dims: int) -> tuple:
        """What decides the dry run's verdict: one example's shape, the dtype, and whether autocast is on."""
        return tuple(x.shape[batch_dims:]), x.dtype, torch.is_autocast_enabled(x.device.type)

    def _remember(self, x: Tensor, batch_dims: int) -> None:
        """Skip the dry run for inputs like ``x`` from now on (at most 64 kinds kept)."""
        if len(self._inputs_seen) < 64:
            self._inputs_seen.add(self._input_key(x, batch_dims))

    # ---- capabilities with defaults ---------------------------------------------------------------------
    def weight_samples(self, n: int) -> dict[str, Tensor] | None:
        """``{name: Tensor[n, *shape]}`` samples of the weight posterior; None: the method has none."""
        return None

    def _per_copy_outputs(self, xs: Tensor) -> Tensor:
        """:meth:`per_copy_outputs` on checked inputs. Default: one ``sample_outputs(xs[s], 1)`` call per
        draw; methods override it with a vectorised path."""
        return torch.stack([self.sample_outputs(xs[s], 1)[0] for s in range(xs.shape[0])])

    def draws(self, n_samples: int) -> int:
        """How many draws ``sample_outputs(x, n_samples)`` returns: :attr:`fixed_draws` or ``n_samples``."""
        return int(n_samples) if self.fixed_draws is None else int(self.fixed_draws)

    def post_step(self) -> dict[str, float]:
        """Hook run after each optimizer step (auxiliary updates); returns values to log."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the main optimizer updates (auxiliary models excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ---- prediction ---------------------------------------------------------------------------------------
    @contextmanager
    def evaluating(self) -> Iterator[Method]:
        """Evaluation mode for the duration of the block, then every submodule's own mode restored.

        Deterministic layers (BatchNorm's running statistics, a model's own ``nn.Dropout`` outside
        MC-Dropout) switch to eval mode; the method's own stochasticity (weight samples, MC-Dropout masks,
        MNF noise) stays on, because it does not depend on the mode.
        """
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield self
        finally:
            for m, mode in modes:
                m.training = mode

    @contextmanager
    def reusing_draws(self, enabled: bool = True) -> Iterator[Method]:
        """Within the block, every request for S posterior draws is served by one set of S draws, drawn at its
        first use: the predictive of a whole test set then comes from the same S weight sets for every batch
        (the S-draw Monte Carlo predictive, as an ensemble of S members), and an expensive draw (a BbH
        hypernet pass generating every weight) is made once instead of once per batch. ``per_copy_outputs``
        (attack gradients) is served by its own set, independent of the predictive's. Default: nothing to
        reuse (the method's draws are cheap or tied to the inputs: MAP, ensembles, MC-Dropout's masks, MNF's
        local noise); methods that draw whole weight sets override it. :func:`bbh.evaluate` uses it.
        ``enabled=False`` suspends an enclosing block's reuse (fresh draws on every call, as PGD's steps want)."""
        yield self

    def predict(self, x: Tensor, n_samples: int = 100, *,
                chunk_size: int | None = None) -> Predictive | RegressionPredictive:
        """The posterior predictive on ``x``, as the likelihood builds it (``likelihood.predictive``):

        * classification (``Categorical``): a :class:`bbh.evaluation.predictive.Predictive` (per-sample
          probabilities ``[S, B, K]``, mean, entropy, expected entropy, mutual information);
        * regression (the Gaussian likelihoods): a :class:`bbh.evaluation.predictive.RegressionPredictive`
          (mean (1/S) Σ_s μ_s, ``aleatoric_var`` (1/S) Σ_s σ_s², ``epistemic_var`` Var_s[μ_s], ``variance``,
          ``log_density(y)`` = log (1/S) Σ_s N(y; μ_s, σ_s²)).

        Runs in :meth:`evaluating` mode without gradients; the caller's modes are restored."""
        from ..evaluation.predictive import predict

        with self.evaluating():
            return predict(self, x, n_samples, chunk_size=chunk_size)

    # ---- helpers for subclasses ---------------------------------------------------------------------------
    def mean_nll(self, outputs: Tensor, y: Tensor) -> Tensor:
        """Mean over the minibatch of -log p(y | outputs)."""
        return -self.likelihood.log_prob(outputs, y).mean()


def check_finite(name: str, value: Tensor) -> None:
    """Raise ``FloatingPointError`` naming ``name`` when ``value`` holds NaN or inf."""
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(f"{name} is not finite ({value.detach().flatten()[:4].tolist()}...)")
