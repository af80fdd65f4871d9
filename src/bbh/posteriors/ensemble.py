"""Deep ensembles (Lakshminarayanan, Pritzel & Blundell 2017), trained as one vectorised model."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..core.elbo import LossTerms, elbo
from ..core.likelihoods import Likelihood
from ..core.options import check_float, check_int
from .factory import register
from .protocol import Method, check_finite, select_parameters


def _reinitialise(module: nn.Module, generator_seed: int) -> None:
    """Fresh default initialisation of every submodule that has ``reset_parameters`` (Linear, Conv, BN...)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()


@register("ensemble")
class DeepEnsemble(Method):
    """M independently initialised copies of the network, each trained on its own loss.

    Member k minimises (docs/protocol.md §4.3; no prior, no L2)

        loss_k = alpha * NLL_k(x, y) + (1 - alpha) * NLL_k(x_adv, y),   x_adv = x + eps * sign(∇_x NLL_k(x, y))

    (``adversarial=False``: loss_k = NLL_k(x, y)). The training loss is Σ_k loss_k, so that every member
    gets exactly the gradient of its own loss (members share no parameters); ``nll`` is logged as the
    members' mean. Prediction: the M members' outputs; averaging their softmaxes gives the ensemble's
    predictive distribution.

    Members are ``self.members`` (an ``nn.ModuleList`` of deep copies of ``model``, re-initialised with
    their own seeds; ``model`` itself stays the template). Where the model has no buffers (no BatchNorm
    running statistics), all members can run as one ``vmap``-ed forward over their stacked parameters
    instead of a Python loop: ``vectorize="auto"`` does so on GPUs, where it parallelises the members, and
    loops on the CPU, where it was measured faster (see :meth:`_use_vmap`).

    Minibatches: by default every member sees the step's minibatch. With ``member_batches=True`` the loss
    expects ``x [M, B, ...]`` and ``y [M, B, ...]``, one minibatch per member (the authors drew a separate
    minibatch per member); :class:`bbh.data.MemberBatches` yields such batches with one shuffling order
    per member.

    Args:
        model: the network (template for the members).
        likelihood: ``"categorical"`` or a likelihood object.
        members: M (authors: 10 on MNIST, 5 on CIFAR-5).
        adversarial: train with FGSM examples (authors: yes).
        alpha: weight of the clean loss (authors: 0.5).
        epsilon: FGSM step in input units (authors: 0.01).
        member_batches: expect one minibatch per member (see above).
        vectorize: ``"auto"`` (vmap on GPUs where the model has no buffers), True, or False (a loop).
        seed: base seed of the members' initialisation (member k uses seed + k); None draws one.
    """

    default_lr = {"adam": 1e-3, "rmsprop-tf": 1e-4}

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical", members: int = 10,
                 adversarial: bool = True, alpha: float = 0.5, epsilon: float = 0.01, member_batches: bool = False,
                 vectorize: bool | str = "auto", seed: int | None = None) -> None:
        super().__init__(model, likelihood)
        self.num_members = check_int("members", members, 1)
        alpha, epsilon = check_float("alpha", alpha, 0.0, 1.0), check_float("epsilon", epsilon, 0.0)
        if vectorize not in ("auto", True, False) or isinstance(vectorize, int) and not isinstance(vectorize, bool):
            raise ValueError(f"vectorize must be 'auto', True or False, got {vectorize!r}")
        self.fixed_draws = self.num_members
        self.adversarial, self.alpha, self.epsilon = bool(adversarial), alpha, epsilon
        self.member_batches = bool(member_batches)
        self.loss_lead = ("M", "B") if self.member_batches else ("B",)
        base_seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else check_int("seed", seed)
        copies = []
        for k in range(self.num_members):
            member = copy.deepcopy(model)
            _reinitialise(member, base_seed + k)
            copies.append(member)
        self.members = nn.ModuleList(copies)
        for p in model.parameters():
            p.requires_grad_(False)  # the template is not trained
        has_buffers = any(True for _ in model.buffers())
        if vectorize is True and has_buffers:
            raise ValueError("vectorize=True needs a model without buffers (BatchNorm running statistics "
                             "cannot be updated under vmap); use vectorize='auto' or False")
        self.vectorize = vectorize
        self.vectorizable = not has_buffers

    def _use_vmap(self, x: Tensor) -> bool:
        """vmap when asked, or under ``"auto"`` on a GPU: on the CPU the loop was measured faster (LeNet-5,
        10 members, batch 100: 795 vs 1,111 ms per adversarial step; vmap turns the convolutions into
        grouped ones, which the CPU kernels run slowly)."""
        if not self.vectorizable or self.vectorize is False:
            return False
        return self.vectorize is True or x.device.type == "cuda"

    def _forward(self, x: Tensor, per_member: bool) -> Tensor:
        """Outputs of every member, ``[M, B, ...]``; ``per_member``: x is ``[M, B, ...]``."""
        if self._use_vmap(x):
            member_params = [dict(m.named_parameters()) for m in self.members]
            stacked = {n: torch.stack([p[n] for p in member_params]) for n, _ in self.model.named_parameters()}

            def one(params: dict[str, Tensor], xi: Tensor) -> Tensor:
                return functional_call(self.model, params, (xi,))

            try:
                return vmap(one, in_dims=(0, 0 if per_member else None), randomness="different")(stacked, x)
            except RuntimeError as err:  # an operation without a batching rule: fall back for good
                warnings.warn(f"vmap over ensemble members failed ({err}); using a loop", stacklevel=2)
                self.vectorizable = False
        return torch.stack([m(x[k] if per_member else x) for k, m in enumerate(self.members)])

    def _member_nll(self, outputs: Tensor, y: Tensor, per_member: bool) -> Tensor:
        """Mean NLL of each member, ``[M]``."""
        if per_member:
            return torch.stack([self.mean_nll(outputs[k], y[k]) for k in range(self.num_members)])
        return -self.likelihood.log_prob(outputs, y).mean(dim=1)

    def check_inputs(self, x: Tensor, y: Tensor | None = None, *, lead: Sequence[str] = ("B",)) -> None:
        """:meth:`Method.check_inputs`, after checking the member dimension of ``[M, B, ...]`` inputs."""
        if tuple(lead) == ("M", "B") and isinstance(x, Tensor) and isinstance(y, Tensor) \
                and (x.dim() == 0 or y.dim() == 0 or x.shape[0] != self.num_members or y.shape[0] != self.num_members):
            raise ValueError(f"member_batches=True expects x and y with a leading member dimension of "
                             f"{self.num_members}, got {tuple(x.shape)} and {tuple(y.shape)}")
        super().check_inputs(x, y, lead=lead)

    def _loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        per_member = self.member_batches
        if self.adversarial:  # FGSM (Goodfellow et al. 2015) on each member's own input gradient
            xs = (x if per_member else x.unsqueeze(0).expand(self.num_members, *x.shape)).detach()
            xs.requires_grad_(True)
            outputs = self._forward(xs, True)
            clean = self._member_nll(outputs, y, per_member)
            (grad,) = torch.autograd.grad(clean.sum(), xs, retain_graph=True)
            x_adv = xs.detach() + self.epsilon * grad.sign()
            adv = self._member_nll(self._forward(x_adv, True), y, per_member)
            per = self.alpha * clean + (1 - self.alpha) * adv
        else:
            outputs = self._forward(x, per_member)
            clean = per = self._member_nll(outputs, y, per_member)
        check_finite("the ensemble loss", per.detach())
        # Σ_k loss_k, so that each member gets exactly the gradient of its own loss; no KL (no prior).
        terms = elbo(per.sum(), 0.0, num_data=num_data, kl_weight=kl_weight,
                     outputs=None if per_member else self._predictive_outputs(outputs))
        terms.nll = clean.mean()  # logged: the members' mean clean NLL
        if self.adversarial:
            terms.extras["nll_adv"] = float(adv.detach().mean())
        return terms

    def _predictive_outputs(self, outputs: Tensor) -> Tensor:
        """What the ensemble predicts per example (detached): for a classifier the log of the members' mean
        softmax ``[B, K]``, for a regression likelihood the members' mean output."""
        out = outputs.detach().float()
        if getattr(self.likelihood, "is_regression", False):
            return out.mean(0)
        return torch.logsumexp(out.log_softmax(-1), dim=0) - math.log(out.shape[0])

    def _sample_outputs(self, x: Tensor, n_samples: int | None = None, *, chunk_size: int | None = None) -> Tensor:
        """The M members' outputs ``[M, B, ...]`` (an ensemble has exactly M draws: ``n_samples`` is
        ignored)."""
        return self._forward(x, False)

    def _per_copy_outputs(self, xs: Tensor) -> Tensor:
        """Member k on copy k: ``xs [M, B, ...] -> [M, B, ...]``."""
        if xs.shape[0] != self.num_members:
            raise ValueError(f"an ensemble of {self.num_members} members needs {self.num_members} input copies, "
                             f"got {xs.shape[0]}")
        return self._forward(xs, True)

    def weight_samples(self, n: int | None = None) -> dict[str, Tensor]:
        """The M members' parameters ``{name: Tensor[M, *shape]}`` (the Linear/Conv weights and biases, the
        other methods' default random parameters), whatever ``n`` is."""
        names = select_parameters(self.model)
        own = [dict(m.named_parameters()) for m in self.members]
        return {k: torch.stack([p[k] for p in own]) for k in names}

    def extra_repr(self) -> str:
        return (f"members={self.num_members}, adversarial={self.adversarial}, alpha={self.alpha}, "
                f"epsilon={self.epsilon}, vectorize={self.vectorize!r}")


__all__ = ["DeepEnsemble"]
