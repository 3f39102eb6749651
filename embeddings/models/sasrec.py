"""SASRec: a causal transformer over a user's click sequence (Kang & McAuley, 2018).

Read top to bottom: a config, the item encoders (where item vectors come from), one attention
block, the model, then :class:`SASRecRecommender`: the model behind the shared ``fit`` / ``score``
shape, with its persistence (training itself is ``embeddings.training.loop``).

Sequences are right-padded with item 0, so plain causal attention already keeps every real
position away from padding (and runs the fused kernel), and item ``i`` of the catalogue is
token ``i + 1``. Positions count back from the newest item, which is what SASRec's left
padding gives.

Item encoders, one class each (adding one means adding a class to ``ITEM_ENCODERS``):

* ``id``: a trainable vector per listing (classic SASRec).
* ``lst-frozen``: the listing's lst features, fixed. They are padded (or, when wider than the
  model, projected on their principal components) to ``dim`` once and never trained; the same
  vectors feed the transformer and score the next item. ``frozen_linear`` adds one shared
  trainable ``dim x dim`` map over them.
* ``hybrid``: a trainable id vector (starting at zero) plus a learned projection of the lst
  features, so a listing nobody clicked still has a vector from its features.

Two user vectors come out of one pass: ``intent``, the final state, trained to score the next click
(what the user wants now); and, with ``profile_horizon > 0``, ``profile``, a linear head over the
same state trained to score any of the user's next ``profile_horizon`` clicks (PinnerFormer's dense
all-action objective: who the user is over the coming days). Both score items by dot product with
the same item vectors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embeddings.errors import InputError
from embeddings.io import load_checkpoint, save_torch
from embeddings.progress import progress
from embeddings.training.config import TrainConfig
from embeddings.training.loop import fit as train_loop

if TYPE_CHECKING:
    from embeddings.data.split import Split

FORMAT = "lst-embeddings/sasrec/1"
POSITIONS = ("learned", "rotary")
LAYERS = ("sasrec", "ligr")


@dataclass
class SASRecConfig:
    """The model's shape. ``n_items`` and ``n_features`` come from the data when the model is fitted."""

    max_len: int = 200  # clicks a user's state is computed from (the newest ones)
    dim: int = 64  # width of item, position and user vectors
    n_blocks: int = 2  # transformer blocks
    n_heads: int = 1  # attention heads (dim must divide by it)
    dropout: float = 0.5  # short sequences overfit fast (Video: HR@10 +12 % over 0.2); the ml1m preset has 0.2
    ffn_mult: int = 1  # hidden width of the position-wise MLP, in multiples of dim (SASRec: 1)
    positions: str = "learned"  # learned: a vector per place counted back from the newest click | rotary (RoPE)
    layer: str = "sasrec"  # sasrec: residual + GELU MLP | ligr: gated residuals + SwiGLU MLP (LiGR, as in eSASRec)
    item_encoder: str = "auto"  # id | lst-frozen | hybrid | auto (with listings: by data size, else id)
    frozen_linear: bool = False  # lst-frozen: one shared trainable dim x dim map over the frozen vectors
    profile_horizon: int = 0  # >0: a profile head trained on any of the next N clicks (0: intent vector only)
    n_items: int = 0  # catalogue size (from the data)
    n_features: int = 0  # width of the lst feature matrix (from the data; lst-frozen, hybrid)

    def __post_init__(self) -> None:
        if self.item_encoder not in (*ITEM_ENCODERS, "auto"):
            raise InputError(f"item_encoder must be one of {(*ITEM_ENCODERS, 'auto')}, got {self.item_encoder!r}")
        small = {k: v for k, v in (("max_len", self.max_len), ("dim", self.dim), ("n_blocks", self.n_blocks),
                                   ("n_heads", self.n_heads), ("ffn_mult", self.ffn_mult)) if v < 1}  # fmt: skip
        if small:
            raise InputError(f"{', '.join(f'{k} {v}' for k, v in small.items())}: must be at least 1")
        if not 0 <= self.dropout < 1:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dim % self.n_heads:
            raise InputError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.profile_horizon < 0:
            raise InputError(f"profile_horizon must be >= 0, got {self.profile_horizon}")
        if self.layer not in LAYERS:
            raise InputError(f"layer must be one of {LAYERS}, got {self.layer!r}")
        if self.positions not in POSITIONS:
            raise InputError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rotary" and (self.dim // self.n_heads) % 2:
            raise InputError(f"rotary positions need an even head width, got {self.dim // self.n_heads}")

    def resolve(self, has_features: bool, train_clicks: int = 0) -> SASRecConfig:
        """This config with ``item_encoder="auto"`` made concrete: without the catalogue's lst features ``id``;
        with them ``hybrid`` from :data:`AUTO_HYBRID_MIN_CLICKS` training clicks on, else ``lst-frozen`` (also
        where the clicks are not known yet: a model built without its split; ``zoo.make_model`` counts them)."""
        if self.item_encoder != "auto":
            return self
        if not has_features:
            return replace(self, item_encoder="id")
        return replace(self, item_encoder="hybrid" if train_clicks >= AUTO_HYBRID_MIN_CLICKS else "lst-frozen")

    @property
    def encoder(self) -> type[ItemEncoder]:
        if self.item_encoder == "auto":
            raise InputError("item_encoder 'auto' is resolved when the data is known: call SASRecConfig.resolve")
        return ITEM_ENCODERS[self.item_encoder]


def fixed_signs(components: torch.Tensor) -> torch.Tensor:
    """Principal components (rows) with each sign fixed: the product with a fixed generic vector is positive."""
    generic = torch.arange(1, components.shape[1] + 1, dtype=components.dtype).sqrt()
    return components * torch.where(components @ generic < 0, -1.0, 1.0).to(components.dtype)[:, None]


def fit_frozen_transform(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, projection, scale) turning lst features into fixed ``dim``-wide vectors of RMS norm sqrt(dim)/2:
    centred, then padded, or projected on the principal components when wider than ``dim``."""
    x = features.double()
    mean = x.mean(0)
    if x.shape[1] > dim:
        _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
        # a component's sign is arbitrary and LAPACK's pick changes with the thread count (one process against
        # two training processes): fix it by the sign of its product with a fixed generic vector. "Largest entry
        # positive" is not enough: one-hot features give components whose largest entries tie in size with
        # opposite signs, and rounding then picks either (AMD EPYC, 1 against 2 threads)
        proj = fixed_signs(v[:dim]).T
    else:
        proj = torch.eye(x.shape[1], dim, dtype=torch.float64)
    y = (x - mean) @ proj
    scale = math.sqrt(dim) / 2 / y.pow(2).sum(1).mean().sqrt().clamp_min(1e-8)
    return mean.float(), proj.float(), scale.float()


class ItemEncoder(nn.Module):
    """Produces the (n_items + 1, dim) table of item vectors; row 0 is padding."""

    kind: ClassVar[str]
    uses_features: ClassVar[bool]  # needs the lst feature matrix
    scores_unseen: ClassVar[bool]  # gives a vector to a listing nobody clicked (from its lst features)
    input_scale: float = 1.0  # trainable vectors start small and are scaled up on input, as in SASRec

    def __init__(self, cfg: SASRecConfig, features: torch.Tensor | None):
        super().__init__()
        if self.uses_features:
            if features is None or features.shape != (cfg.n_items, cfg.n_features):
                raise InputError(
                    f"item_encoder={self.kind!r} needs lst features of shape {(cfg.n_items, cfg.n_features)}: "
                    "give a data folder with listings.parquet"
                )
            self.register_buffer("features", F.pad(features.float(), (0, 0, 1, 0)))  # row 0 = padding

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Vectors for listings outside the catalogue, from their lst features."""
        raise InputError(f"an {self.kind!r} item encoder cannot encode listings it was not trained on")


class IdEncoder(ItemEncoder):
    """A trainable vector per listing (classic SASRec)."""

    kind, uses_features, scores_unseen = "id", False, False

    def __init__(self, cfg: SASRecConfig, features: torch.Tensor | None = None):
        super().__init__(cfg, None)
        self.input_scale = math.sqrt(cfg.dim)
        self.ids = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=0.02)

    def forward(self) -> torch.Tensor:
        return self.ids.weight


class FrozenLstEncoder(ItemEncoder):
    """lst features, fixed: centred, padded or PCA-projected to ``dim``; optionally one shared trainable map."""

    kind, uses_features, scores_unseen = "lst-frozen", True, True

    def __init__(self, cfg: SASRecConfig, features: torch.Tensor | None):
        super().__init__(cfg, features)
        mean, proj, scale = fit_frozen_transform(features, cfg.dim)
        self.register_buffer("frozen_mean", mean)
        self.register_buffer("frozen_proj", proj)
        self.register_buffer("frozen_scale", scale)
        self.register_buffer("frozen", F.pad(self._freeze(features.float()), (0, 0, 1, 0)))
        self.shared = nn.Linear(cfg.dim, cfg.dim, bias=False) if cfg.frozen_linear else None
        if self.shared is not None:
            nn.init.eye_(self.shared.weight)

    def _freeze(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.frozen_mean) @ self.frozen_proj * self.frozen_scale

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        vectors = self._freeze(features.float())
        return vectors if self.shared is None else self.shared(vectors)

    def forward(self) -> torch.Tensor:
        return self.frozen if self.shared is None else self.shared(self.frozen)


class HybridEncoder(ItemEncoder):
    """A trainable id vector (starting at zero) plus a learned projection of the lst features."""

    kind, uses_features, scores_unseen = "hybrid", True, True

    def __init__(self, cfg: SASRecConfig, features: torch.Tensor | None):
        super().__init__(cfg, features)
        self.input_scale = math.sqrt(cfg.dim)
        self.ids = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        nn.init.zeros_(self.ids.weight)
        self.project = nn.Linear(cfg.n_features, cfg.dim, bias=False)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(features.float())  # the id part of an unseen listing is zero

    def forward(self) -> torch.Tensor:
        vectors = self.ids.weight + self.project(self.features)
        return torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])


ITEM_ENCODERS: dict[str, type[ItemEncoder]] = {e.kind: e for e in (IdEncoder, FrozenLstEncoder, HybridEncoder)}
# item_encoder="auto" on data with listings: hybrid (a trainable id vector on top of the lst features) from this many
# training clicks on, lst-frozen below. bench/world_grid.py (Intel VM, 2026-12-03): with 3,000 users (~48,000 clicks)
# lst-frozen is ahead of hybrid on every catalogue (HR@10 0.500 / 0.438 at 1,500 listings), from 10,000 users
# (~160,000 clicks) hybrid is ahead on catalogues of 5,000 listings and more (0.165 / 0.123 at 100,000 x 50,000,
# the world nearest a site's week) and 2-3 % behind on 1,500 listings. Both score listings published after the
# cut-off from their features, which an id model cannot
AUTO_HYBRID_MIN_CLICKS = 100_000


def rotary_table(max_len: int, width: int) -> torch.Tensor:
    """(2, max_len, width) cosines and sines of RoPE (Su et al., 2021): pair ``i`` of a head turns by
    ``position / 10000 ** (2 i / width)``, so a query-key product depends only on how far apart they are."""
    freq = 10000.0 ** (-torch.arange(0, width, 2, dtype=torch.float64, device="cpu") / width)
    angle = torch.outer(torch.arange(max_len, dtype=torch.float64, device="cpu"), freq).repeat(1, 2)
    return torch.stack([angle.cos(), angle.sin()]).float()


def rotate(x: torch.Tensor, table: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
    """Queries or keys (..., t, width) turned by their position (``table`` from :func:`rotary_table`); with ``at``
    (one position per row) a (rows, heads, 1, width) ``x`` turned by its row's position."""
    cos, sin = table[:, : x.shape[-2]] if at is None else table[:, at, None, None]
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


@torch.compiler.disable
def dropout_bits(count: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``count`` tensors of ``shape`` holding 16 random bits per element, for :func:`dropout`, in one draw.

    One 64-bit draw gives four elements their bits, where ``F.dropout`` draws once per element: on a CPU this
    is 4x faster, and dropout was a tenth of an ML-1M epoch. Drawn outside the blocks, so that a compiled
    block holds no random op (``torch.compile``'s own dropout is 3x slower than this on a CPU)."""
    n = count * math.prod(shape)
    draws = torch.empty(n // 4 + 1, dtype=torch.int64, device=device).random_()
    return draws.view(torch.int16)[:n].view(count, *shape)


def dropout(x: torch.Tensor, p: float, bits: torch.Tensor | None) -> torch.Tensor:
    """``x`` with each element zeroed where its random ``bits`` (:func:`dropout_bits`) fall below ``p`` (to
    1/32768; a draw is in [0, 2**63), so each 16-bit lane's top bit is dropped) and the rest scaled by
    1 / (1 - p); ``bits`` None: ``x`` as it is (evaluation)."""
    if bits is None or p == 0:
        return x
    return (x * ((bits & 0x7FFF) >= round(p * 32768))).mul_(1 / (1 - p))


class SwiGLU(nn.Module):
    """Position-wise MLP with a SiLU-gated hidden layer (Shazeer, 2020), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(dim, 2 * hidden, bias=False)  # gate and value in one matmul
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * value)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a position-wise MLP. ``layer="ligr"`` (LiGR,
    Borisyuk et al. 2025; eSASRec's layer) scales each residual branch by a sigmoid gate of the block's
    input and uses a SwiGLU MLP."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ln2 = nn.LayerNorm(cfg.dim)
        hidden = cfg.dim * cfg.ffn_mult
        if cfg.layer == "ligr":
            self.mlp: nn.Module = SwiGLU(cfg.dim, hidden)
            self.gate_attention, self.gate_mlp = nn.Linear(cfg.dim, cfg.dim), nn.Linear(cfg.dim, cfg.dim)
        else:
            self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))
            self.gate_attention = self.gate_mlp = None
        # additive causal mask for the CPU path, RoPE's angles (neither saved with the weights); made on the host
        # like every parameter, moved with the model by .to(device)
        causal = torch.full((cfg.max_len, cfg.max_len), -math.inf, device="cpu").triu(1)
        self.register_buffer("causal", causal, persistent=False)
        rotary = rotary_table(cfg.max_len, cfg.dim // cfg.n_heads) if cfg.positions == "rotary" else None
        self.register_buffer("rotary", rotary, persistent=False)

    def attention(self, x: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """Causal self-attention at every position, or (``at``: one position per row) at that position only."""
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))  # no attention dropout
        if at is not None:  # one query a row, turned by its own position
            q = q[torch.arange(b, device=x.device), :, at].unsqueeze(2)
        if self.rotary is not None:
            table = self.rotary.to(q.dtype)
            q, k = rotate(q, table, at), rotate(k, table)
        rows = 1 if at is not None else t
        mask = self.causal[:t, :t] if at is None else self.causal[at, :t].repeat_interleave(h, 0).unsqueeze(1)
        if x.device.type == "cpu":  # plain attention: 1.7x faster than the CPU flash kernel at t = 200 (fwd + bwd)
            q, k, v = (z.reshape(b * h, -1, d // h) for z in (q, k, v))
            scores = torch.baddbmm(mask.to(q.dtype), q, k.transpose(1, 2), alpha=(d // h) ** -0.5)
            y = (scores.softmax(-1) @ v).view(b, h, rows, d // h)
        elif at is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.view(b, h, 1, t).to(q.dtype))
        return self.proj(y.transpose(1, 2).reshape(b, rows, d))

    def forward(
        self, x: torch.Tensor, at: torch.Tensor | None = None, noise: Sequence[torch.Tensor | None] = (None, None)
    ) -> torch.Tensor:
        """The block's output at every position, or (``at``) at one position per row, shape (batch, 1, dim).
        ``noise``: the dropout bits (:func:`dropout_bits`) of its attention and MLP branches; None: no dropout."""
        a = dropout(self.attention(self.ln1(x), at), self.dropout, noise[0])
        if at is not None:
            x = x[torch.arange(len(x), device=x.device), at].unsqueeze(1)
        x = x + (a if self.gate_attention is None else torch.sigmoid(self.gate_attention(x)) * a)
        m = dropout(self.mlp(self.ln2(x)), self.dropout, noise[1])
        return x + (m if self.gate_mlp is None else torch.sigmoid(self.gate_mlp(x)) * m)


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig, features: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg = cfg.resolve(has_features=features is not None)
        self.items = cfg.encoder(cfg, features)
        self.positions = nn.Embedding(cfg.max_len, cfg.dim) if cfg.positions == "learned" else None
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_blocks))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.profile = nn.Linear(cfg.dim, cfg.dim) if cfg.profile_horizon else None
        if self.profile is not None:  # starts as the intent vector
            nn.init.eye_(self.profile.weight)
            nn.init.zeros_(self.profile.bias)

    def forward(
        self, tokens: torch.Tensor, item_vectors: torch.Tensor | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """Hidden state (batch, time, dim) after each position of right-padded ``tokens``; ``last_only``: after
        each row's last item only, (batch, 1, dim), the last block computing that position alone."""
        if item_vectors is None:
            item_vectors = self.items()
        x = F.embedding(tokens, item_vectors) * self.items.input_scale  # its backward: 2x faster than indexing
        real = tokens > 0
        lengths = real.sum(1)
        if self.positions is not None:
            # learned positions count back from each sequence's last item, as with SASRec's left padding: the
            # newest click is always position 0, so "how recent" means the same for every user and length
            back = (lengths[:, None] - 1 - torch.arange(tokens.shape[1], device=tokens.device)).clamp_min(0)
            x = x + self.positions(back)
        # the dropout bits of the whole pass in one draw: the input's, then each block's two branches
        sites = 1 + 2 * len(self.blocks)
        dropping = self.training and self.cfg.dropout > 0
        noise = list(dropout_bits(sites, x.shape, x.device)) if dropping else [None] * sites
        x = dropout(x, self.cfg.dropout, noise[0]) * real.unsqueeze(-1)
        last = (lengths - 1).clamp_min(0) if last_only else None
        for i, block in enumerate(self.blocks):
            x = block(x, last if i == len(self.blocks) - 1 else None, noise[1 + 2 * i : 3 + 2 * i])
        return self.ln_f(x)

    def profile_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """Profile vectors from hidden states (the model must have a profile head)."""
        if self.profile is None:
            raise InputError("this model has no profile head (trained with profile_horizon = 0)")
        return self.profile(hidden)

    def logits(self, hidden: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every catalogue item (without the padding token) for each hidden state."""
        if item_vectors is None:
            item_vectors = self.items()
        return hidden @ item_vectors[1:].T


def pad_right(seqs: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """Last ``max_len`` items of each sequence as tokens (item index + 1), right-padded with 0."""
    width = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        out[i, : len(s)] = s + 1
    return torch.from_numpy(out)


def content_version(state: dict) -> str:
    """A hash of what defines the embedding space: weights, model config, item vocabulary.

    Metrics and timings stored beside them do not count, so retraining to the same weights keeps the version.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([state["model_config"], state["item_ids"]], sort_keys=True).encode())
    for name in sorted(state["model"]):
        digest.update(name.encode())
        digest.update(state["model"][name].contiguous().numpy().tobytes())
    return f"sasrec-{digest.hexdigest()[:12]}"


def compat_target(previous: SASRecRecommender, item_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous release's item vectors by this catalogue's tokens (row 0 padding) and the rows it has a
    trained vector for: the target of the training-time compatibility loss (``TrainConfig.compat_weight``)."""
    table = previous.item_table()
    index = {str(i): k + 1 for k, i in enumerate(previous.item_ids) if previous.scorable[k]}
    rows = torch.tensor([0] + [index.get(str(i), 0) for i in item_ids])
    return table[rows], rows > 0


class SASRecRecommender:
    """SASRec behind the shared recommender shape (``fit`` / ``score``), with its checkpoint format.

    ``features`` are the lst features of the catalogue (smooth encoding) for encoders that use them;
    ``feature_stats`` how they were normalised, so listings encoded later match. ``init_state``
    (from :meth:`load` or ``make_model(init_from=...)``) makes :meth:`fit` start from earlier weights:
    fine-tuning on next week's clicks, with listings matched by id.
    """

    def __init__(
        self,
        config: SASRecConfig | None = None,
        train_config: TrainConfig | None = None,
        features: np.ndarray | torch.Tensor | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        feature_stats: dict | None = None,
    ):
        self.features = None if features is None else torch.as_tensor(features, dtype=torch.float32)
        self.config = (config or SASRecConfig()).resolve(has_features=self.features is not None)
        self.train_config = train_config or TrainConfig()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_epoch_end = on_epoch_end
        self.feature_stats = feature_stats or {}  # how lst features were normalised (features.fit_stats)
        self.cutoff: str = ""  # end of the training data (temporal split), ISO format
        self.history: list[dict] = []
        self.best: dict = {}
        self.metrics: dict = {}
        self.init_state: dict | None = None  # {"model": state_dict, "item_ids": [...]} to start fitting from
        self.compat_target: tuple[torch.Tensor, torch.Tensor] | None = None  # see compat_target(); with
        # TrainConfig.compat_weight, fit learns ``aligner``: this model's item vectors -> the previous release's
        self.aligner: nn.Linear | None = None
        self.reference: dict = {}  # vector_stats of the validation users' vectors when training ended
        self.name = f"sasrec[{self.config.item_encoder}]"

    # ----------------------------------------------------------------- building
    def build(self, split: Split) -> SASRec:
        """A fresh model for ``split``'s catalogue; weights from ``init_state`` where they fit."""
        n_features = 0 if self.features is None else self.features.shape[1]
        cfg = replace(self.config, n_items=split.n_items, n_features=n_features)
        model = SASRec(cfg, self.features if cfg.encoder.uses_features else None)
        if self.init_state is not None:
            _warm_start(model, self.init_state, split.item_ids)
        self.model, self.config = model, cfg
        self.item_ids = split.item_ids
        self.cutoff = "" if split.cutoff is None else split.cutoff.isoformat()
        self._scorable = np.ones(split.n_items, bool) if cfg.encoder.scores_unseen else split.seen_in_train()
        return model

    def fit(self, split: Split, resume: bool = True) -> SASRecRecommender:
        return train_loop(self, split, resume=resume)

    # ------------------------------------------------------------------ scoring
    @property
    def encoder(self) -> ItemEncoder:
        return self.model.items

    @property
    def scorable(self) -> np.ndarray:
        """Catalogue items this model can rank (an id model: only those clicked in training)."""
        return self._scorable

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the CPU, except while training with ``TrainConfig.device``)."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """(n_items + 1, dim) item vectors, row 0 padding."""
        return self.model.items().detach()

    @torch.no_grad()
    def encode_listings(self, features: np.ndarray) -> torch.Tensor:
        """Vectors for listings outside the catalogue from their lst features (this model's normalisation)."""
        return self.encoder.encode(torch.from_numpy(features).to(self.device)).cpu()

    @property
    def heads(self) -> tuple[str, ...]:
        """The user vectors this model gives: ``intent``, and ``profile`` when it has a profile head."""
        return ("intent", "profile") if self.model.profile is not None else ("intent",)

    @torch.no_grad()
    def user_states(
        self,
        histories: Sequence[np.ndarray],
        batch_size: int = 1024,
        item_vectors: torch.Tensor | None = None,
        show_progress: bool = False,
        heads: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each head's vector (default: all of :attr:`heads`) after each history's last item (zeros for an
        empty history), from one pass.

        ``item_vectors`` replaces the catalogue's table (row 0 padding), e.g. extended with listings
        encoded from their lst features; histories then index into it (row = index + 1).
        """
        self.model.eval()
        device = self.device
        vectors = self.model.items() if item_vectors is None else item_vectors.to(device)
        heads = self.heads if heads is None else tuple(heads)
        if unknown := set(heads) - set(self.heads):
            raise InputError(f"this model has no {sorted(unknown)} head; it has {self.heads}")
        out = {head: torch.zeros(len(histories), self.model.cfg.dim, device="cpu") for head in heads}  # host
        # histories in order of length, so a batch is padded to the length of similar ones, not of the longest
        lengths = np.fromiter((min(len(h), self.model.cfg.max_len) for h in histories), np.int64, len(histories))
        order = np.argsort(lengths, kind="stable")
        starts = range(0, len(histories), batch_size)
        if show_progress:
            starts = progress(starts, desc="user embeddings", unit="batch")
        for start in starts:
            idx = order[start : start + batch_size]
            tokens = pad_right([histories[i] for i in idx], self.model.cfg.max_len).to(device)
            rows = self.model(tokens, vectors, last_only=True)[:, 0]
            has = (tokens > 0).any(1, keepdim=True)
            at = torch.from_numpy(idx)
            if "intent" in out:
                out["intent"][at] = torch.where(has, rows, torch.zeros_like(rows)).cpu()
            if "profile" in out:
                out["profile"][at] = torch.where(has, self.model.profile_of(rows), torch.zeros_like(rows)).cpu()
        return out

    def user_vectors(
        self,
        histories: Sequence[np.ndarray],
        batch_size: int = 1024,
        item_vectors: torch.Tensor | None = None,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """The intent vector (the transformer's state after the last item) of each history."""
        return self.user_states(histories, batch_size, item_vectors, show_progress, heads=("intent",))["intent"]

    @torch.no_grad()
    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        scores = self.model.logits(self.user_vectors(histories).to(self.device)).float()
        if not self._scorable.all():  # index the few unscorable columns, not a mask over all of them
            scores[:, torch.from_numpy(np.flatnonzero(~self._scorable)).to(scores.device)] = -torch.inf
        return scores.cpu().numpy()

    # -------------------------------------------------------------- persistence
    def export(self, metrics: dict | None = None) -> dict:
        """Weights, configs, item vocabulary and metrics: everything needed to score, nothing executable."""
        return {
            "format": FORMAT,
            "model_config": asdict(self.model.cfg),
            "train_config": asdict(self.train_config),
            "item_ids": [str(x) for x in self.item_ids],
            "scorable": torch.from_numpy(self._scorable),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "feature_stats": self.feature_stats,
            "cutoff": self.cutoff,
            "reference": self.reference,
            "metrics": metrics or {},
        }

    @property
    def version(self) -> str:
        return content_version(self.export())

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> Path:
        return save_torch(self.export(metrics), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SASRecRecommender:
        return cls.from_state(load_checkpoint(path), source=str(path))

    @classmethod
    def from_state(cls, state: dict, source: str = "checkpoint") -> SASRecRecommender:
        if state.get("format") != FORMAT:
            raise InputError(f"{source}: not an lst-embeddings SASRec checkpoint")
        cfg = SASRecConfig(**state["model_config"])
        features = state["model"].get("items.features")
        features = None if features is None else features[1:]
        self = cls(cfg, TrainConfig(**state["train_config"]), features, feature_stats=state.get("feature_stats"))
        self.cutoff = state.get("cutoff", "")
        self.model = SASRec(cfg, features)
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.item_ids = np.array(state["item_ids"], dtype=object)
        self._scorable = state["scorable"].numpy()
        self.metrics = state["metrics"]
        self.reference = state.get("reference") or {}
        self.init_state = {"model": state["model"], "item_ids": state["item_ids"]}  # fit() fine-tunes from here
        return self


def _warm_start(model: SASRec, init: dict, item_ids: np.ndarray) -> None:
    """Copy earlier weights into ``model``: item rows matched by listing id, everything else by name and shape.

    Buffers built from the lst features (``items.features``, ``items.frozen*``) stay the new catalogue's.
    """
    old = init["model"]
    state = model.state_dict()
    old_rows = {str(item): i + 1 for i, item in enumerate(init["item_ids"])}
    for name, value in state.items():
        if name.startswith(("items.features", "items.frozen")) or name not in old:
            continue
        if name == "items.ids.weight":
            rows = [(i + 1, old_rows[str(item)]) for i, item in enumerate(item_ids) if str(item) in old_rows]
            if rows:
                new_idx, old_idx = (torch.tensor(x) for x in zip(*rows, strict=True))
                value[new_idx] = old[name][old_idx].to(value.dtype)
        elif old[name].shape == value.shape:
            value.copy_(old[name])
        else:
            raise InputError(f"cannot start from the earlier weights: {name} has shape {tuple(old[name].shape)}")
    model.load_state_dict(state)
