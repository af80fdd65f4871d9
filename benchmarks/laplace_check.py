"""Cross-check bbh's last-layer KFAC Laplace against laplace-torch (Daxberger et al. 2021) where it is installed.

    python benchmarks/laplace_check.py [--samples 20000] [--seed 0]

A small MLP (2 -> 32 -> 32 -> 4, tanh) is trained to its MAP on synthetic 2-D Gaussian blobs; both libraries fit
a last-layer Laplace with the Kronecker-factored (KFAC) GGN and the prior precision δ maximising the Laplace
marginal likelihood (laplace-torch: ``optimize_prior_precision(method="marglik")``, a scalar δ, Adam on log δ;
bbh: bisection on the root of its derivative). Printed, on test points that include some far from the data:

* the two chosen prior precisions;
* the max absolute difference of the predictive probabilities: MC (``--samples`` draws each, so about
  1/sqrt(samples) of it is Monte Carlo noise) and probit (deterministic);
* the same with bbh's δ set to laplace-torch's (the GGN and predictive alone), and the two log marginal
  likelihoods at that δ.

Two last layers are compared. Without a bias both libraries approximate the same matrix (A ⊗ B over the weight
matrix): the numbers should agree to rounding and MC noise. With a bias they do not: bbh augments the features
with a 1 (one Kronecker product over [W | b]), laplace-torch keeps the bias as a separate block (its exact
C x C GGN) with no weight-bias correlation, so the differences there measure that modelling choice.

laplace-torch is not a dependency of bbh and is not installed by it: it pulls torchvision, which pins a
multi-GB CUDA build of torch. Without it this script prints that it is skipped and exits 0.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bbh.posteriors.laplace import fit_last_layer_laplace


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs in 2-D (classes 0..3)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    y = torch.randint(0, 4, (n,), generator=g)
    return centres[y] + 0.8 * torch.randn(n, 2, generator=g), y


def train_mlp(x: torch.Tensor, y: torch.Tensor, *, bias: bool, seed: int) -> nn.Sequential:
    """Full-batch Adam on the cross-entropy plus a small weight decay (the MAP)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4, bias=bias))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(500):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def laplace_torch_fit(model: nn.Module, loader: DataLoader):
    """laplace-torch's last-layer KFAC Laplace with a scalar marglik prior precision (any recent version)."""
    from laplace import Laplace

    la = Laplace(model, "classification", subset_of_weights="last_layer", hessian_structure="kron")
    la.fit(loader)
    params = inspect.signature(la.optimize_prior_precision).parameters
    kwargs: dict = {"method": "marglik", "n_steps": 500}
    if "pred_type" in params:
        kwargs["pred_type"] = "glm"
    if "prior_structure" in params:
        kwargs["prior_structure"] = "scalar"  # newer versions default to one δ per parameter
    la.optimize_prior_precision(**kwargs)
    return la


def laplace_torch_predict(la, x: torch.Tensor, link: str, samples: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.as_tensor(la(x, pred_type="glm", link_approx=link, n_samples=samples)).float()


def compare(bias: bool, samples: int, seed: int) -> None:
    x, y = blobs(400, seed)
    x_test = torch.cat([blobs(200, seed + 1)[0], 3 * torch.randn(50, 2, generator=torch.Generator().manual_seed(7))])
    model = train_mlp(x, y, bias=bias, seed=seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=100)

    theirs = laplace_torch_fit(model, loader)
    ours = fit_last_layer_laplace(model, loader, structure="kron", prior_precision="marglik")
    their_delta = float(torch.as_tensor(theirs.prior_precision).flatten()[0])
    our_delta = ours.prior_precision

    def predictives() -> dict[str, float]:
        torch.manual_seed(seed)
        ours.predictive = "mc"
        mc = ours.predict(x_test, samples).mean
        ours.predictive = "probit"
        probit = ours.predict(x_test).mean
        return {"mc": float((mc - laplace_torch_predict(theirs, x_test, "mc", samples)).abs().max()),
                "probit": float((probit - laplace_torch_predict(theirs, x_test, "probit", samples)).abs().max())}

    own = predictives()
    ours.prior_precision = their_delta
    same = predictives()
    their_lml = float(theirs.log_marginal_likelihood(torch.tensor([their_delta])))
    our_lml = float(ours.log_marginal_likelihood(their_delta))

    label = ("with bias (bbh: one Kronecker product over [W | b]; laplace-torch: the bias block apart)" if bias
             else "without bias (the same approximation)")
    print(f"\nlast layer {label}, P = {ours.n_params}")
    print(f"  prior precision δ (marglik): bbh {our_delta:.6g}   laplace-torch {their_delta:.6g}   "
          f"(ratio {our_delta / their_delta:.4f})")
    print(f"  max |Δ predictive| with each own δ:        MC ({samples} draws) {own['mc']:.4f}   probit "
          f"{own['probit']:.2e}")
    print(f"  max |Δ predictive| with laplace-torch's δ: MC ({samples} draws) {same['mc']:.4f}   probit "
          f"{same['probit']:.2e}")
    print(f"  log marginal likelihood at laplace-torch's δ: bbh {our_lml:.6f}   laplace-torch {their_lml:.6f}")
    print(f"  (MC noise scale: about {1 / math.sqrt(samples):.4f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20_000, help="MC draws per predictive")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import laplace  # noqa: F401
    except ImportError as err:
        print(f"laplace_check: skipped: laplace-torch is not importable ({err}). It is not a dependency of bbh and "
              f"is not installed on purpose: it pulls torchvision, which pins a multi-GB CUDA build of torch. "
              f"Install it by hand (pip install laplace-torch) in a separate environment to run this check.")
        return 0
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    for bias in (False, True):
        compare(bias, args.samples, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
