"""A small transformer text classifier: the model on which BbH's ``rank1`` layout is shown to wrap a transformer.

    tokens [B, L] -> embedding + learned positions -> nn.TransformerEncoder (pre-built torch layers)
                  -> mean over positions -> Linear -> logits [B, classes]

Nothing in it is Bayesian. Under BbH's default parameter selection (Linear and Conv weights and biases) the
random weights are the encoder's feed-forward layers, its attention output projections and the head; the
embeddings, the positions, the attention's packed input projection (a bare parameter of
``nn.MultiheadAttention``) and the layer norms stay point estimates (``params=`` chooses otherwise).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TransformerClassifier(nn.Module):
    """Token embedding + learned positions, ``layers`` ``nn.TransformerEncoderLayer`` (post-norm, ReLU, no
    dropout), mean pooling and a dense head.

    Args:
        vocab: number of token ids.
        length: sequence length L (the learned positions are [L, d]).
        classes: outputs of the head.
        d: model width; ``heads`` must divide it.
        heads: attention heads.
        layers: encoder layers.
        feedforward: width of each layer's feed-forward block.
    """

    def __init__(self, vocab: int = 20, length: int = 16, classes: int = 2, d: int = 32, heads: int = 4,
                 layers: int = 2, feedforward: int = 64) -> None:
        super().__init__()
        self.length = int(length)
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=feedforward, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"TransformerClassifier expects token ids [B, {self.length}], got {tuple(tokens.shape)}")
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))


__all__ = ["TransformerClassifier"]
