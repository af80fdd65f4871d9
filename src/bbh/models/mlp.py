"""A plain multilayer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected network ``in -> hidden... -> out`` with an activation between layers.

    The toy regression of paper Fig. 1 uses ``MLP(1, 1, hidden=(100,))`` (1-100-1, ReLU). With
    ``dropout > 0`` an ``nn.Dropout(dropout)`` precedes every linear layer, on the inputs and on every hidden
    layer: the network of Gal & Ghahramani's (2016) UCI experiments, which MC-Dropout keeps dropping at
    prediction time (``bbh.create("mc-dropout", MLP(..., dropout=0.05))`` uses these layers).

    Args:
        in_features: input size.
        out_features: output size.
        hidden: sizes of the hidden layers.
        activation: a module class instantiated between layers (default ``nn.ReLU``).
        dropout: the rate of an ``nn.Dropout`` before every linear layer (0: none, the layers are absent).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (100,),
                 activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        if any(int(s) <= 0 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects inputs [..., {self.in_features}], got {tuple(x.shape)}")
        return self.net(x)
