"""The method protocol shared by every posterior in bbh (:class:`Method`) and parameter selection.

A *method* wraps a plain ``nn.Module`` (the main network) and owns a distribution over a chosen subset of
its parameters (or, for MC-Dropout and MNF, stochastic layers). See :class:`Method` for the interface and
the capabilities a method declares; :mod:`bbh.posteriors.factory` builds methods by name.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..core.elbo import LossTerms
from ..core.likelihoods import Likelihood, as_likelihood
from ..core.options import check_int
from ..core.priors import Prior, as_prior

if TYPE_CHECKING:
    from ..core.predictive import Predictive, RegressionPredictive

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


_STRUCTURE_VERSION = [0]
"""Bumped by torch's global registration hooks whenever a module or parameter is assigned to a module anywhere in
the process (a layer replaced or appended); a method re-walks its model's parameters only when this changed or
one of its model's module / parameter tables shrank (a layer deleted). See :meth:`Method.check_model`."""


def _structure_changed(module: nn.Module, name: str, value: object) -> None:
    _STRUCTURE_VERSION[0] += 1


nn.modules.module.register_module_module_registration_hook(_structure_changed)
nn.modules.module.register_module_parameter_registration_hook(_structure_changed)


def _parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


_TAKES_OUTPUTS: dict[object, bool] = {}


def _takes_outputs(check: Callable[..., object]) -> bool:
    """Whether a likelihood's ``check_targets`` accepts the ``outputs`` keyword (bbh's own do)."""
    func = getattr(check, "__func__", check)
    if func not in _TAKES_OUTPUTS:
        try:
            _TAKES_OUTPUTS[func] = "outputs" in inspect.signature(check).parameters
        except (TypeError, ValueError):
            _TAKES_OUTPUTS[func] = False
    return _TAKES_OUTPUTS[func]


@contextmanager
def _attributes_kept(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's plain attributes after a dry run (a module that caches a tensor computed in
    ``forward`` must not keep a ``meta`` one)."""
    saved = [(m, dict(m.__dict__)) for m in model.modules()]
    try:
        yield
    finally:
        for m, attrs in saved:
            if len(m.__dict__) != len(attrs) or any(m.__dict__.get(k, attrs) is not v for k, v in attrs.items()):
                m.__dict__.clear()
                m.__dict__.update(attrs)


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
        self._outputs_seen: dict[tuple, Tensor | None] = {}  # :meth:`_dry_outputs`
        self._record_model()

    # ---- the public door: inputs checked, then the subclass's implementation ------------------------------
    def loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        """Per-datum negative ELBO on one minibatch: ``mean NLL + kl_weight * KL / num_data``.

        Raises:
            ValueError: a model changed since the method was built (:meth:`check_model`), an empty batch, or
                inputs or targets that do not fit the model (:meth:`check_inputs`: shapes, dtypes, label range,
                a batch or a ``split`` part the model cannot run on), all found before any forward pass, so no
                state (BatchNorm statistics, random numbers) is touched; :class:`NonFiniteInputError` for NaN or
                inf in them.
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

        * the model is the one the method was built on (:meth:`check_model`);
        * ``x`` is a tensor on the model's device with batch dimensions ``lead``, not empty when ``y`` is given
          (a loss);
        * where the model has a Linear / Conv layer (:attr:`input_layer`, the first in module order): x is
          floating point of the parameters' dtype (any of float32 / float16 / bfloat16 under autocast) and
          one example has the layer's shape (``[C, H, W]`` with C its input channels, ``[..., F]`` with F its
          input features). An input that does not (LeNet-5's flat ``[B, 784]``, a model that casts or
          reshapes its inputs itself) is dry-run once per example shape and dtype on the ``meta`` device
          (no data, no state touched): it is rejected only if the model raises, or hands the layer an input
          it cannot take;
        * ``y`` (if given) is a tensor on x's device with the same batch dimensions, of the kind the
          likelihood takes (its ``check_targets``, if it has one). With ``y`` the model is also dry-run to its
          outputs on ``meta`` (once per example shape, dtype, pass size and mode: :meth:`_dry_outputs`), so
          that a model that cannot run on the batch (a later layer's shape, BatchNorm on one example, a
          ``split`` part) is refused here, and the targets are checked against the outputs (labels in [0, K),
          regression targets' shape and dtype) where the likelihood's ``check_targets`` takes ``outputs``;
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
        self.check_model()
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__} (convert it with torch.as_tensor)")
        if x.dim() < n:
            raise ValueError(f"x must have the batch dimension{'s' if n > 1 else ''} [{', '.join(lead)}, ...], "
                             f"got shape {list(x.shape)}")
        if y is not None and math.prod(x.shape[:n]) == 0:
            raise ValueError(f"the batch is empty (x has shape {list(x.shape)}): a loss needs at least one example "
                             f"(nothing was computed)")
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
            outputs = self._dry_outputs(x, lead)
            check_targets = getattr(self.likelihood, "check_targets", None)
            if callable(check_targets):
                flat = y.flatten(0, n - 1) if n > 1 else y
                if outputs is not None and _takes_outputs(check_targets):
                    check_targets(flat, math.prod(x.shape[:n]), outputs=outputs)
                else:
                    check_targets(flat, math.prod(x.shape[:n]))
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
            with torch.no_grad(), _attributes_kept(self.model):
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

    def _forward_rows(self, batch: int) -> tuple[int, str]:
        """The examples the smallest forward pass of :meth:`loss` runs on for a batch of ``batch``, and how the
        batch was cut into passes ("" when it runs whole); raises ``ValueError`` for a batch that cannot be cut
        as the method needs. Default: the whole batch (BbH's ``likelihood_samples="split"`` overrides it)."""
        return batch, ""

    def _dry_outputs(self, x: Tensor, lead: Sequence[str]) -> Tensor | None:
        """An empty ``meta`` tensor of the outputs ``[B, *out]`` one pass of the model gives on ``x`` (B: all
        batch dimensions together), from a dry run on ``meta`` of the smallest pass (:meth:`_forward_rows`) in the
        current mode, remembered per example shape, dtype, autocast, pass size and mode (64 kinds). None where the
        run is inconclusive (an operation the meta device lacks, a model that returns no tensor).

        Raises:
            ValueError: the model raised on it (a later layer's shape, BatchNorm in training mode on one value
                per channel, ...): nothing was computed, no state touched.
        """
        n, model = len(lead), type(self.model).__name__
        rows, note = self._forward_rows(int(x.shape[n - 1]))
        key = (*self._input_key(x, n), rows, self.model.training)
        if key not in self._outputs_seen:
            if len(self._outputs_seen) >= 64:
                self._outputs_seen.pop(next(iter(self._outputs_seen)))
            state = {k: torch.empty_like(v, device="meta")
                     for k, v in chain(self.model.named_parameters(), self.model.named_buffers())}
            found: Tensor | None = None
            try:
                with torch.no_grad(), _attributes_kept(self.model):
                    out = functional_call(self.model, state,
                                          (torch.empty((rows, *x.shape[n:]), dtype=x.dtype, device="meta"),))
                if isinstance(out, Tensor) and out.dim() >= 1 and out.shape[0] == rows:
                    found = out.new_empty((math.prod(x.shape[:n]), *out.shape[1:]))
            except Exception as err:  # noqa: BLE001
                if not isinstance(err, NotImplementedError) and "meta" not in str(err).lower():
                    what = (f"{rows} example{'' if rows == 1 else 's'}, {note}" if note
                            else f"a batch of shape {list(x.shape)}")
                    raise ValueError(f"{model} cannot run on {what}: it raised {type(err).__name__}: "
                                     f"{' '.join(str(err).split())} (nothing was computed)") from err
            self._outputs_seen[key] = found
        found = self._outputs_seen[key]
        total = math.prod(x.shape[:n])
        if found is None or found.shape[0] == total:
            return found
        return found.new_empty((total, *found.shape[1:]))

    # ---- the model the method was built on --------------------------------------------------------------------
    def _record_model(self) -> None:
        """Record the model's parameter names and shapes, which :meth:`check_model` compares with. Run at
        construction; a method that restructures its model (MNF) runs it again at the end of its own."""
        self._model_shapes = _parameter_shapes(self.model)
        self._model_walk: tuple[int, list[dict], int] | None = None  # (structure version, tables, their sizes)
        self._own_reference: str | None = None  # the name of the method's first own floating-point parameter
        self._slots: tuple[dict, str, dict, str] | None = None  # where that one and the model's reference are

    def check_model(self) -> None:
        """Raise ``ValueError`` (one line) when the model is not the one the method was built on: a parameter
        replaced by one of another shape, added (a layer appended or replaced) or gone since construction — the
        posterior still describes the old parameters: rebuild the method with ``bbh.create`` — or the model
        converted to another dtype or device without the method's own parameters (``model.double()`` instead
        of ``method.double()``). Run by :meth:`check_inputs`, so by every ``loss``, ``sample_outputs``,
        ``per_copy_outputs`` and ``predict``.

        Cost: the parameters are walked (about 10 us for an MLP, 0.25 ms for a ResNet-18) only on the first
        call and after a module or parameter was registered anywhere in the process or one of the model's
        module / parameter tables shrank; otherwise it compares two dtypes and devices. Not detected: a
        parameter's ``.data`` swapped for a tensor of another shape.
        """
        walk = self._model_walk
        if walk is None or walk[0] != _STRUCTURE_VERSION[0] or sum(map(len, walk[1])) != walk[2]:
            version, shapes = _STRUCTURE_VERSION[0], _parameter_shapes(self.model)
            if shapes != self._model_shapes:
                raise ValueError(self._change_message(shapes))
            tables = [t for m in self.model.modules() for t in (m._modules, m._parameters)]
            self._model_walk = version, tables, sum(map(len, tables))
            self._own_reference = next((name for name, p in self.named_parameters()
                                        if not name.startswith(("model.", "likelihood.")) and p.is_floating_point()),
                                       None)
            ref = self._reference_parameter()
            self._slots = None
            if self._own_reference is not None and ref is not None:  # the parameter tables holding both
                owner, _, attr = self._own_reference.rpartition(".")
                ref_owner = next(m for m in self.model.modules() if any(p is ref for p in m._parameters.values()))
                ref_attr = next(k for k, p in ref_owner._parameters.items() if p is ref)
                self._slots = self.get_submodule(owner)._parameters, attr, ref_owner._parameters, ref_attr
        if self._slots is None:
            return
        own, ref = self._slots[0].get(self._slots[1]), self._slots[2].get(self._slots[3])
        if own is None or ref is None or not ref.is_floating_point():
            return
        model, name = type(self.model).__name__, type(self).__name__
        if own.device != ref.device:
            raise ValueError(f"{model} is on {ref.device} but {name}'s own parameters (`{self._own_reference}`) are "
                             f"on {own.device}: move the method as a whole, method.to('{ref.device}'), not its "
                             f"model alone")
        if own.dtype != ref.dtype:
            raise ValueError(f"{model} is {ref.dtype} but {name}'s own parameters (`{self._own_reference}`) are "
                             f"{own.dtype}: convert the method as a whole, method.to({ref.dtype}), not its model "
                             f"alone (then give it inputs of that dtype)")

    def _change_message(self, shapes: dict[str, tuple[int, ...]]) -> str:
        old = self._model_shapes
        changes = [f"`{k}` is {list(v)} (was {list(old[k])})" for k, v in shapes.items() if k in old and v != old[k]]
        changes += [f"`{k}` {list(v)} is new" for k, v in shapes.items() if k not in old]
        changes += [f"`{k}` {list(v)} is gone" for k, v in old.items() if k not in shapes]
        listed = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        return (f"{type(self.model).__name__} changed since this {type(self).__name__} was built on it ({listed}): "
                f"the method still describes the old parameters; rebuild it with bbh.create(...) on the changed "
                f"model")

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

        * classification (``Categorical``): a :class:`bbh.core.predictive.Predictive` (per-sample
          probabilities ``[S, B, K]``, mean, entropy, expected entropy, mutual information);
        * regression (the Gaussian likelihoods): a :class:`bbh.core.predictive.RegressionPredictive`
          (mean (1/S) Σ_s μ_s, ``aleatoric_var`` (1/S) Σ_s σ_s², ``epistemic_var`` Var_s[μ_s], ``variance``,
          ``log_density(y)`` = log (1/S) Σ_s N(y; μ_s, σ_s²)).

        Runs in :meth:`evaluating` mode without gradients; the caller's modes are restored."""
        from ..core.predictive import predict

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
