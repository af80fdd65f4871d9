"""The adversarial KL estimator of the paper's Appendix A (AVB-style; Mescheder et al. 2017).

A discriminator T: R -> R on *scalar* weights is trained to tell posterior samples (label 1) from prior
samples (label 0):

    L_T = -E_q[log sigmoid(T(w))] - E_p[log(1 - sigmoid(T(w)))].

At its optimum T(w) = log q(w) - log p(w), so Σ_i E_q[T(w_i)] estimates KL(q || p) for a posterior that
factorises over weights; the estimate is the sum over weights of the mean logit over the n samples
(docs/protocol.md §3.4). The posterior gets its gradient through T's input; T gets its own gradient only from
L_T, in :meth:`AdversarialKL.update`, which the method's ``post_step`` calls after every main step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..core.priors import Prior
from .base import KLEstimator, flatten_samples


class AdversarialKL(KLEstimator):
    """Discriminator-based KL estimate (paper Appendix A, Table 5 "AVB").

    Args:
        hidden: hidden sizes of the discriminator MLP (ReLU; authors: (64, 64) for BbB, (64, 64, 64) for BbH).
        pretrain_steps: discriminator steps on the first samples before the first estimate (authors: 100).
        steps_per_update: discriminator steps per main step (paper text: 5; authors' code: 1).
        lr: Adam learning rate of the discriminator.
        max_weights: train the discriminator on a random subset of at most this many scalars per step
            (None: all n x D, as the authors).
    """

    trainable = True

    def __init__(self, hidden: Sequence[int] = (64, 64), pretrain_steps: int = 100, steps_per_update: int = 1,
                 lr: float = 1e-3, max_weights: int | None = None) -> None:
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive sizes, got {hidden}")
        if pretrain_steps < 0 or steps_per_update < 0:
            raise ValueError(f"pretrain_steps and steps_per_update must be >= 0, got {pretrain_steps}, "
                             f"{steps_per_update}")
        sizes = [1, *[int(h) for h in hidden], 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            lin = nn.Linear(a, b)
            nn.init.xavier_uniform_(lin.weight)  # the authors' Glorot init, zero biases
            nn.init.zeros_(lin.bias)
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.discriminator = nn.Sequential(*layers)
        self.pretrain_steps, self.steps_per_update = int(pretrain_steps), int(steps_per_update)
        self.max_weights = max_weights
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr)
        self.register_buffer("pretrained", torch.zeros((), dtype=torch.bool))

    def get_extra_state(self) -> dict:
        """The discriminator's optimizer state travels with ``state_dict()`` (checkpoints resume exactly)."""
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def logits(self, w: Tensor) -> Tensor:
        """T(w) elementwise, differentiable in w but not in the discriminator's parameters."""
        params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (w.reshape(-1, 1),)).view_as(w)

    def forward(self, samples: dict[str, Tensor], prior: Prior) -> Tensor:
        q = flatten_samples(samples)
        if not bool(self.pretrained):
            self._train(q.detach(), prior, self.pretrain_steps)
            self.pretrained.fill_(True)
        return self.logits(q).mean(0).sum()

    def update(self, samples: dict[str, Tensor], prior: Prior) -> dict[str, float]:
        loss = self._train(flatten_samples(samples).detach(), prior, self.steps_per_update)
        return {} if loss is None else {"disc_loss": loss}

    def _train(self, q: Tensor, prior: Prior, steps: int) -> float | None:
        self.discriminator.to(q.device)
        loss_value = None
        flat = q.reshape(-1)
        for _ in range(steps):
            wq = flat
            if self.max_weights is not None and flat.numel() > self.max_weights:
                wq = flat[torch.randint(0, flat.numel(), (self.max_weights,), device=flat.device)]
            wp = prior.sample(wq.shape, device=wq.device, dtype=wq.dtype)
            tq = self.discriminator(wq.view(-1, 1))
            tp = self.discriminator(wp.view(-1, 1))
            # -log sigmoid(t) = softplus(-t);  -log(1 - sigmoid(t)) = softplus(t)
            loss = F.softplus(-tq).mean() + F.softplus(tp).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_value = float(loss.detach())
        return loss_value

    def extra_repr(self) -> str:
        return f"pretrain_steps={self.pretrain_steps}, steps_per_update={self.steps_per_update}"


__all__ = ["AdversarialKL"]
