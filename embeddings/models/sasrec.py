"""SASRec: a causal transformer over a user's click sequence (Kang & McAuley, 2018).

Read top to bottom: a config, the item encoder (where item vectors come from), one attention
block, the model. Sequences are right-padded with item 0, so plain causal attention already
keeps every real position away from padding (and runs the fused kernel), and item ``i`` of the
catalogue is token ``i + 1``. Positions count back from the newest item, which is what SASRec's
left padding gives.

Item encoders:

* ``id``: a trainable vector per listing (classic SASRec).
* ``lst-frozen``: the listing's lst features, fixed. They are padded (or, when wider than the
  model, projected on their principal components) to ``dim`` once and never trained; the same
  vectors feed the transformer and score the next item. ``frozen_linear`` adds one shared
  trainable ``dim x dim`` map over them.
* ``hybrid``: a trainable id vector (starting at zero) plus a learned projection of the lst
  features, so a listing nobody clicked still has a vector from its features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ITEM_ENCODERS = ("id", "lst-frozen", "hybrid")


@dataclass
class SASRecConfig:
    n_items: int
    max_len: int = 200
    dim: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    ffn_mult: int = 1  # hidden width of the position-wise MLP, in multiples of dim (SASRec: 1)
    item_encoder: str = "id"
    n_features: int = 0  # width of the lst feature matrix (lst-frozen, hybrid)
    frozen_linear: bool = False

    def __post_init__(self) -> None:
        if self.item_encoder not in ITEM_ENCODERS:
            raise ValueError(f"item_encoder must be one of {ITEM_ENCODERS}, got {self.item_encoder!r}")
        if self.item_encoder != "id" and self.n_features <= 0:
            raise ValueError(f"item_encoder={self.item_encoder!r} needs lst features (n_features > 0)")
        if self.dim % self.n_heads:
            raise ValueError("dim must be divisible by n_heads")


def fit_frozen_transform(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, projection, scale) turning lst features into fixed ``dim``-wide vectors of RMS norm sqrt(dim)/2:
    centred, then padded, or projected on the principal components when wider than ``dim``."""
    x = features.double()
    mean = x.mean(0)
    if x.shape[1] > dim:
        _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
        proj = v[:dim].T
    else:
        proj = torch.eye(x.shape[1], dim, dtype=torch.float64)
    y = (x - mean) @ proj
    scale = math.sqrt(dim) / 2 / y.pow(2).sum(1).mean().sqrt().clamp_min(1e-8)
    return mean.float(), proj.float(), scale.float()


class ItemEncoder(nn.Module):
    """Produces the (n_items + 1, dim) table of item vectors; row 0 is padding."""

    def __init__(self, cfg: SASRecConfig, features: torch.Tensor | None = None):
        super().__init__()
        self.kind = cfg.item_encoder
        # trainable vectors start small and are scaled up on input, as in SASRec; frozen ones are used as they are
        self.input_scale = 1.0 if self.kind == "lst-frozen" else math.sqrt(cfg.dim)
        if self.kind == "id":
            self.ids = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
            nn.init.normal_(self.ids.weight, std=0.02)
        else:
            if features is None or features.shape != (cfg.n_items, cfg.n_features):
                raise ValueError(f"expected lst features of shape {(cfg.n_items, cfg.n_features)}")
            self.register_buffer("features", F.pad(features.float(), (0, 0, 1, 0)))  # row 0 = padding
        if self.kind == "lst-frozen":
            mean, proj, scale = fit_frozen_transform(features, cfg.dim)
            self.register_buffer("frozen_mean", mean)
            self.register_buffer("frozen_proj", proj)
            self.register_buffer("frozen_scale", scale)
            self.register_buffer("frozen", F.pad(self._freeze(features.float()), (0, 0, 1, 0)))
            self.shared = nn.Linear(cfg.dim, cfg.dim, bias=False) if cfg.frozen_linear else None
            if self.shared is not None:
                nn.init.eye_(self.shared.weight)
        if self.kind == "hybrid":
            self.ids = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
            nn.init.zeros_(self.ids.weight)
            self.project = nn.Linear(cfg.n_features, cfg.dim, bias=False)

    def _freeze(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.frozen_mean) @ self.frozen_proj * self.frozen_scale

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Vectors for listings outside the catalogue, from their lst features (not for ``id``)."""
        if self.kind == "id":
            raise ValueError("an id item encoder cannot encode listings it was not trained on")
        if self.kind == "lst-frozen":
            vectors = self._freeze(features.float())
            return vectors if self.shared is None else self.shared(vectors)
        return self.project(features.float())  # hybrid: the id part of an unseen listing is zero

    def forward(self) -> torch.Tensor:
        if self.kind == "id":
            return self.ids.weight
        if self.kind == "lst-frozen":
            return self.frozen if self.shared is None else self.shared(self.frozen)
        vectors = self.ids.weight + self.project(self.features)
        return torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a position-wise MLP."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ln2 = nn.LayerNorm(cfg.dim)
        hidden = cfg.dim * cfg.ffn_mult
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True
        )  # no attention dropout: it costs more than it helps on CPU
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig, features: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.items = ItemEncoder(cfg, features)
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_blocks))
        self.ln_f = nn.LayerNorm(cfg.dim)

    def forward(self, tokens: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state (batch, time, dim) after each position of right-padded ``tokens``."""
        if item_vectors is None:
            item_vectors = self.items()
        # positions count back from each sequence's last item, as with SASRec's left padding: the newest click
        # is always position 0, so "how recent" means the same for every user and at every length
        lengths = (tokens > 0).sum(1, keepdim=True)
        back = (lengths - 1 - torch.arange(tokens.shape[1], device=tokens.device)).clamp_min(0)
        x = item_vectors[tokens] * self.items.input_scale + self.positions(back)
        x = self.drop(x) * (tokens > 0).unsqueeze(-1)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every catalogue item (without the padding token) for each hidden state."""
        if item_vectors is None:
            item_vectors = self.items()
        return hidden @ item_vectors[1:].T
