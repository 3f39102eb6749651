"""Training SASRec behind the shared ``fit`` / ``score`` shape, with checkpoints and resume.

Batches are built from each user's last ``max_len + 1`` training items (input = all but the
last, target = all but the first), grouped by length so little time goes to padding. The loss
is computed on real positions only: full softmax cross-entropy over the items that existed
during training (default), or sampled softmax with ``n_negatives`` shared uniform negatives.

Every epoch's randomness (batch order, dropout) comes from ``seed + epoch``, so a run is
deterministic and an interrupted run resumed from ``last.pt`` ends bit-identical to one that
was never interrupted. Checkpoints hold only tensors and plain data and are read with
``torch.load(weights_only=True)``: loading one cannot execute code.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from embeddings.evaluate import evaluate
from embeddings.losses import full_softmax_ce, sampled_softmax_ce
from embeddings.models.sasrec import SASRec, SASRecConfig
from embeddings.progress import progress
from embeddings.split import Split

LOSSES = ("softmax", "sampled")


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    loss: str = "softmax"
    n_negatives: int = 256
    patience: int = 10  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = 1
    seed: int = 0
    bf16: bool = field(default_factory=lambda: _fast_bf16())  # bfloat16 autocast for the matmuls
    time_budget_s: float | None = None
    windows: str = "last"  # "last": each user's last max_len items (SASRec); "all": the whole history in windows

    def __post_init__(self) -> None:
        if self.windows not in ("last", "all"):
            raise ValueError(f"windows must be 'last' or 'all', got {self.windows!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")


def _fast_bf16() -> bool:
    """bfloat16 matmuls are about 4x faster than float32 on CPUs with AVX512-BF16 or AMX, slower elsewhere."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def _pad_right(seqs: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """Last ``max_len`` items of each sequence as tokens (item index + 1), right-padded with 0."""
    width = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        out[i, : len(s)] = s + 1
    return torch.from_numpy(out)


def training_windows(train: Sequence[np.ndarray], max_len: int, every: bool) -> list[np.ndarray]:
    """Training windows of at most ``max_len + 1`` items: each user's last one, or (``every``) the whole
    sequence cut back from its end, so each item after the first is a target exactly once."""
    out = []
    for seq in train:
        end = len(seq)
        while end >= 2:
            out.append(seq[max(0, end - max_len - 1) : end])
            if not every:
                break
            end -= max_len
    return out


def _batches(windows: Sequence[np.ndarray], max_len: int, batch_size: int, rng: np.random.Generator):
    """(inputs, targets) token batches: windows shuffled, then grouped by length within chunks."""
    order = rng.permutation(len(windows))
    lengths = np.array([len(windows[i]) for i in order])
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk][np.argsort(-lengths[start : start + chunk], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    for b in rng.permutation(len(batches)):
        chosen = [windows[i] for i in batches[b]]
        yield _pad_right([w[:-1] for w in chosen], max_len), _pad_right([w[1:] for w in chosen], max_len)


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint without executing anything it contains."""
    return torch.load(path, map_location="cpu", weights_only=True)


class SASRecRecommender:
    """SASRec behind the shared recommender shape. ``features`` are the lst features (smooth encoding)."""

    def __init__(
        self,
        model_config: dict | None = None,
        train_config: TrainConfig | None = None,
        features: np.ndarray | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        feature_stats: dict | None = None,
    ):
        self.model_config = dict(model_config or {})
        self.train_config = train_config or TrainConfig()
        self.features = None if features is None else torch.as_tensor(features, dtype=torch.float32)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_epoch_end = on_epoch_end
        self.feature_stats = feature_stats or {}  # how lst features were normalised (features.fit_stats)
        self.cutoff: str = ""  # end of the training data (temporal split), ISO format
        self.history: list[dict] = []
        self.name = f"sasrec[{self.model_config.get('item_encoder', 'id')}]"

    # ----------------------------------------------------------------- training
    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor, vectors: torch.Tensor, rng: torch.Generator):
        real = targets > 0
        h, y = hidden[real], targets[real] - 1
        items = vectors[1:]
        if self.train_config.loss == "softmax":
            loss = full_softmax_ce(h, items, y, self._unavailable, low_precision=self.train_config.bf16)
        else:
            pick = torch.randint(len(self._available_idx), (self.train_config.n_negatives,), generator=rng)
            loss = sampled_softmax_ce(h, items, y, self._available_idx[pick])
        return loss, len(y)

    def _state(self, epoch: int, optimizer: torch.optim.Optimizer, best: dict, waited: int) -> dict:
        """``last.pt``: the exported model plus what resuming needs."""
        return {
            **self.export(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "best": best,
            "waited": waited,
            "history": self.history,
        }

    def fit(self, split: Split, resume: bool = True) -> SASRecRecommender:
        tc = self.train_config
        torch.manual_seed(tc.seed)
        cfg = SASRecConfig(
            n_items=split.n_items,
            n_features=0 if self.features is None else self.features.shape[1],
            **{k: v for k, v in self.model_config.items() if k != "n_features"},
        )
        self.model = SASRec(cfg, self.features if cfg.item_encoder != "id" else None)
        self.item_ids = split.item_ids
        self.cutoff = "" if split.cutoff is None else split.cutoff.isoformat()
        available = torch.from_numpy(split.available)
        self._unavailable = None if bool(available.all()) else ~available
        self._available_idx = torch.from_numpy(np.flatnonzero(split.available))
        self._scorable = split.seen_in_train() if cfg.item_encoder == "id" else np.ones(split.n_items, bool)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))

        start_epoch, waited = 0, 0
        best: dict = {"epoch": -1, "ndcg@10": -1.0}
        self._best_weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        last = self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None
        if resume and last is not None and last.exists():
            state = load_checkpoint(last)
            if state["item_ids"] != [str(x) for x in split.item_ids] or state["model_config"] != asdict(cfg):
                raise ValueError(f"{last} belongs to another model or catalogue; remove it or pick another folder")
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, best, waited, self.history = (
                state["epoch"] + 1,
                state["best"],
                state["waited"],
                state["history"],
            )
            best_path = self.checkpoint_dir / "best.pt"
            if best_path.exists():
                self._best_weights = load_checkpoint(best_path)["model"]

        began = time.perf_counter()
        for epoch in range(start_epoch, tc.epochs):
            if waited >= tc.patience:
                break
            if tc.time_budget_s is not None and time.perf_counter() - began > tc.time_budget_s:
                break
            stats = self._train_epoch(split, optimizer, epoch)
            if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
                self.model.eval()
                metrics = evaluate(self, split.valid)
                stats.update({f"valid_{k}": v for k, v in metrics.items() if k.startswith(("hr", "ndcg"))})
                if metrics["ndcg@10"] > best["ndcg@10"]:
                    best, waited = {"epoch": epoch, "ndcg@10": metrics["ndcg@10"]}, 0
                    self._best_weights = {k: v.clone() for k, v in self.model.state_dict().items()}
                    if self.checkpoint_dir:
                        _save_atomic(
                            self.export(metrics={"valid": metrics, "epoch": epoch}), self.checkpoint_dir / "best.pt"
                        )
                else:
                    waited += 1
            self.history.append(stats)
            if last is not None:
                _save_atomic(self._state(epoch, optimizer, best, waited), last)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, stats)
        self.model.load_state_dict(self._best_weights)
        self.model.eval()
        self.best = best
        return self

    def _train_epoch(self, split: Split, optimizer: torch.optim.Optimizer, epoch: int) -> dict:
        tc, cfg = self.train_config, self.model.cfg
        rng = np.random.default_rng([tc.seed, epoch])
        torch_rng = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)
        torch.manual_seed(tc.seed * 1_000_003 + epoch)
        self.model.train()
        windows = training_windows(split.train, cfg.max_len, tc.windows == "all")
        n_batches = math.ceil(len(windows) / tc.batch_size)
        total_loss, total_pos, t0 = 0.0, 0, time.perf_counter()
        batches = _batches(windows, cfg.max_len, tc.batch_size, rng)
        bar = progress(batches, total=n_batches, desc=f"epoch {epoch + 1}")
        for inputs, targets in bar:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
                vectors = self.model.items()
                hidden = self.model(inputs, vectors)
                loss, n_pos = self._loss(hidden, targets, vectors, torch_rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * n_pos
            total_pos += n_pos
            bar.set_postfix(
                loss=f"{total_loss / max(total_pos, 1):.4f}",
                pos_s=f"{total_pos / (time.perf_counter() - t0):.0f}",
                refresh=False,  # the bar redraws on its own interval, with the batch count up to date
            )
        seconds = time.perf_counter() - t0
        return {"epoch": epoch, "loss": total_loss / max(total_pos, 1), "positions": total_pos, "seconds": seconds}

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def user_vectors(
        self,
        histories: Sequence[np.ndarray],
        batch_size: int = 1024,
        item_vectors: torch.Tensor | None = None,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """The transformer's state after each history's last item (zeros for an empty history).

        ``item_vectors`` replaces the catalogue's table (row 0 padding), e.g. extended with listings
        encoded from their lst features; histories then index into it (row = index + 1).
        """
        self.model.eval()
        vectors = self.model.items() if item_vectors is None else item_vectors
        out = torch.zeros(len(histories), self.model.cfg.dim)
        starts = range(0, len(histories), batch_size)
        if show_progress:
            starts = progress(starts, desc="user embeddings", unit="batch")
        for start in starts:
            part = histories[start : start + batch_size]
            tokens = _pad_right(part, self.model.cfg.max_len)
            last = (tokens > 0).sum(1) - 1
            hidden = self.model(tokens, vectors)
            rows = hidden[torch.arange(len(part)), last.clamp_min(0)]
            out[start : start + len(part)] = torch.where((last >= 0)[:, None], rows, torch.zeros_like(rows))
        return out

    @torch.no_grad()
    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        scores = self.model.logits(self.user_vectors(histories)).numpy()
        scores[:, ~self._scorable] = -np.inf
        return scores

    # -------------------------------------------------------------- persistence
    def export(self, metrics: dict | None = None) -> dict:
        """Weights, config, item vocabulary and metrics: everything needed to score, nothing executable."""
        return {
            "format": "lst-embeddings/sasrec/1",
            "model_config": asdict(self.model.cfg),
            "train_config": asdict(self.train_config),
            "item_ids": [str(x) for x in self.item_ids],
            "scorable": torch.from_numpy(self._scorable),
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "feature_stats": self.feature_stats,
            "cutoff": self.cutoff,
            "metrics": metrics or {},
        }

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> Path:
        path = Path(path)
        _save_atomic(self.export(metrics), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SASRecRecommender:
        state = load_checkpoint(path)
        if state.get("format") != "lst-embeddings/sasrec/1":
            raise ValueError(f"{path}: not an lst-embeddings SASRec checkpoint")
        cfg = SASRecConfig(**state["model_config"])
        features = state["model"].get("items.features")
        features = None if features is None else features[1:]
        self = cls(
            state["model_config"],
            TrainConfig(**state["train_config"]),
            features,
            feature_stats=state.get("feature_stats") or {},
        )
        self.cutoff = state.get("cutoff", "")
        self.model = SASRec(cfg, features)
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.item_ids = np.array(state["item_ids"], dtype=object)
        self._scorable = state["scorable"].numpy()
        self.metrics = state["metrics"]
        return self
