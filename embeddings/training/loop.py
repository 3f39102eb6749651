"""The SASRec training loop (the model, its scoring and its checkpoint format are ``models/sasrec.py``, the
settings ``training/config.py``).

Batches are built from each user's last ``max_len + 1`` training items (input = all but the
last, target = all but the first), or with ``windows="all"`` from the whole history cut into
such windows (``"overlap"``: windows every half window, each trained on its newest half), grouped
by length so little time goes to padding. The loss is computed on real positions only: full
softmax cross-entropy over the items that existed during training (default), or sampled softmax
with ``n_negatives`` shared uniform negatives.

With a profile head (``profile_horizon > 0``) every position also has a profile target: one of the
user's next ``profile_horizon`` clicks in the window, drawn uniformly each time (an unbiased sample
of the dense all-action loss, at the cost of one more softmax), weighted by ``profile_weight``.

Every epoch's randomness (batch order, dropout) comes from ``seed + epoch`` and deterministic
algorithms are on, so a run repeats bit for bit under its seed (on any thread count, on one machine),
and an interrupted run resumed from ``last.pt`` ends where one that was never interrupted would;
resuming checks that the settings that shape the run are the checkpoint's. Under ``torchrun`` (see
``embeddings.training.distributed``) the model and its loss are wrapped in DistributedDataParallel, each rank
takes its rows of every global batch and weighs its loss by its share of the batch's positions, so
the averaged gradient is the one-process gradient; rank 0 decides early stopping and writes the
checkpoints, and every rank resumes from the same ``last.pt``. Checkpoints hold only
tensors and plain data and are read with ``torch.load(weights_only=True)``: loading one cannot
execute code.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from embeddings.data.split import Sequences, Split
from embeddings.errors import InputError
from embeddings.io import kill_point, load_checkpoint, save_torch
from embeddings.metrics import vector_stats
from embeddings.models.losses import full_softmax_ce, log_inclusion, logq_softmax_ce, sampled_softmax_ce
from embeddings.progress import note, progress
from embeddings.stages.evaluate import evaluate
from embeddings.training import distributed as dist
from embeddings.training.config import (
    AUTO_FULL_SOFTMAX_MAX_ITEMS,
    REFERENCE_USERS,
    RESUME_MUST_MATCH,
    WIDTH_STEP,
    TrainConfig,
)


class Trainable(Protocol):
    """What the loop needs of a recommender (``models.sasrec.SASRecRecommender``): its settings, a way to build
    the module for a split, a checkpoint folder and export, and where the results go."""

    train_config: TrainConfig
    checkpoint_dir: Path | None
    history: list[dict]
    best: dict | None
    reference: dict
    on_epoch_end: Any

    def build(self, split: Split) -> torch.nn.Module: ...

    def export(self, metrics: dict | None = None) -> dict: ...

    def user_states(self, histories: list, *args, **kwargs) -> dict[str, torch.Tensor]: ...


def training_windows(train: Sequences, max_len: int, windows: str) -> tuple[Sequences, np.ndarray]:
    """Training windows of at most ``max_len + 1`` items, and how many of each window's first targets are context
    only (no loss). ``last``: each user's last window. ``all``: the whole sequence cut back from its end, so each
    item after the first is a target exactly once. ``overlap``: windows every ``max_len // 2`` items back from the
    end, each training its newest half (the user's oldest window: all it has), so every target but a user's first
    ``max_len // 2`` sees at least ``max_len // 2`` items before it. Windows are ranges of ``train``'s item array,
    in user order and, within a user, from the newest back."""
    lengths = train.lengths
    stride = max(1, max_len // 2) if windows == "overlap" else max_len
    older = -(-np.maximum(lengths - 1 - max_len, 0) // stride)  # windows before the newest one
    count = np.where(lengths >= 2, 1 + older if windows != "last" else 1, 0)
    user = np.repeat(np.arange(len(train)), count)
    back = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)  # 0 = the user's newest window
    ends = train.ends[user] - back * stride
    lead = np.where(back < count[user] - 1, max_len - stride, 0)  # targets a newer window trains with more context
    return Sequences(train.items, np.maximum(train.starts[user], ends - max_len - 1), ends), lead


def lr_factor(schedule: str, progress: float, epochs: int) -> float:
    """The learning rate's multiplier ``progress`` epochs into training (fractions within an epoch): ``constant``
    1; ``cosine`` a linear warm-up over the first epoch, then half a cosine down to 0 at ``epochs``."""
    if schedule == "constant":
        return 1.0
    if progress < 1:
        return max(progress, 1e-3)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - 1) / max(epochs - 1, 1))))


def training_device(name: str) -> torch.device:
    """The device ``TrainConfig.device`` names; under torchrun on GPUs, each process its own (``LOCAL_RANK``)."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: no CUDA device is visible here (torch.cuda.is_available() is False)")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank() if dist.world_size() > 1 else torch.cuda.current_device())
    elif device.type != "cpu":
        raise InputError(f"device must be cpu, cuda or cuda:N, got {name!r}")
    return device


def resolve_loss(loss: str, n_items: int) -> str:
    """The loss ``loss="auto"`` stands for on a catalogue of ``n_items``; any other value as it is."""
    if loss != "auto":
        return loss
    return "softmax" if n_items <= AUTO_FULL_SOFTMAX_MAX_ITEMS else "logq"


def future_targets(targets: torch.Tensor, horizon: int, generator: torch.Generator) -> torch.Tensor:
    """For each position of right-padded ``targets`` (batch, time), one of the targets at that position
    or the next ``horizon - 1`` ones (0 where the position is padding), drawn uniformly."""
    length = (targets > 0).sum(1, keepdim=True)
    t = torch.arange(targets.shape[1], device=targets.device)
    ahead = (length - t).clamp(min=1, max=horizon)  # real targets from t on, within the horizon
    offset = (torch.rand(targets.shape, generator=generator, device=targets.device) * ahead).long()
    offset = offset.clamp_max(ahead - 1)
    pick = (t + offset).clamp_max(targets.shape[1] - 1)
    return torch.where(targets > 0, targets.gather(1, pick), torch.zeros_like(targets))


def batch_plan(
    windows: Sequences, max_len: int, batch_size: int, rng: np.random.Generator, batch_positions: int = 0
) -> list[np.ndarray]:
    """Window indices of each batch, in training order: windows shuffled, then sorted by length within chunks
    of about 32 batches and cut into batches of ``batch_size`` windows or, with ``batch_size`` 0, of as many
    windows as fit ``batch_positions`` padded positions (short windows: more of them a batch, so a step's fixed
    costs, such as updating every item vector, are shared by more clicks). A batch is :func:`batch_width` wide."""
    order = rng.permutation(len(windows))
    width = np.clip(windows.lengths[order] - 1, 1, max_len)  # sorted by its own width, sized by its batch's
    if not batch_size:
        ends = np.searchsorted(np.cumsum(width), np.arange(32 * batch_positions, width.sum(), 32 * batch_positions))
        bounds = [0, *ends.tolist(), len(order)]
    else:
        bounds = [*range(0, len(order), batch_size * 32), len(order)]
    batches = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        sort = np.argsort(-width[lo:hi], kind="stable")
        part, part_width = order[lo:hi][sort], width[lo:hi][sort]
        i = 0
        while i < len(part):
            rows = batch_size or max(1, batch_positions // batch_width(part_width[i], max_len))
            batches.append(part[i : i + rows])
            i += rows
    return [batches[b] for b in rng.permutation(len(batches))]


def batch_width(longest: int, max_len: int) -> int:
    """Width of a batch whose longest window has ``longest`` targets: rounded up to a multiple of
    :data:`WIDTH_STEP`, at most ``max_len``."""
    return min(max_len, -(-max(1, int(longest)) // WIDTH_STEP) * WIDTH_STEP)


def _batches(windows: Sequences, lead: np.ndarray, max_len: int, plan: list[np.ndarray]):
    """(inputs, targets) token batches of ``plan``, :func:`batch_width` wide; each gathered from the flat item
    array in one step (tokens = item + 1, right-padded with 0; a window's ``lead`` first targets 0 too)."""
    tokens = np.append(windows.items + 1, 0)  # a trailing 0: where padding reads from
    for batch in plan:
        starts, n = windows.starts[batch], windows.lengths[batch] - 1
        width = np.arange(batch_width(n.max(), max_len))
        at = np.where(width < n[:, None], starts[:, None] + width, len(tokens) - 1)
        trained = (width < n[:, None]) & (width >= lead[batch][:, None])
        yield torch.from_numpy(tokens[at]), torch.from_numpy(tokens[np.where(trained, at + 1, len(tokens) - 1)])


def compiled_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` through ``torch.compile`` as ``TrainConfig.compile`` trains it (the same weights; evaluation keeps
    calling ``model`` itself): dynamic shapes, so the batch widths share a graph."""
    return torch.compile(model, dynamic=True)


class _Step(torch.nn.Module):
    """The model and its loss as one module: what DistributedDataParallel wraps."""

    def __init__(self, loop: _Loop):
        super().__init__()
        self.model = compiled_for_training(loop.model) if loop.tc.compile else loop.model
        self.aligner = loop.aligner  # trained with the model (compatibility loss), or None
        self.loss_of = loop.loss

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, n_pos: int, rng: torch.Generator):
        vectors = self.model.items()
        return self.loss_of(self.model(inputs, vectors), targets, n_pos, vectors, rng)


class _Loop:
    """One fit of a recommender (:class:`Trainable`) on a split: state of the optimiser, early stopping, checkpoints."""

    def __init__(self, rec: Trainable, split: Split):
        self.rec, self.split, self.tc = rec, split, rec.train_config
        self.valid = split.valid
        if len(self.valid) > self.tc.valid_users:  # a site-size week: ranking every user each epoch costs an epoch
            keep = np.random.default_rng(self.tc.seed).choice(len(self.valid), self.tc.valid_users, replace=False)
            self.valid = self.valid.subset(np.isin(np.arange(len(self.valid)), keep))
        self.device = training_device(self.tc.device)
        torch.manual_seed(self.tc.seed)
        self.model = rec.build(split).to(self.device)
        self.available = torch.from_numpy(split.available).to(self.device)
        self.unavailable = None if bool(split.available.all()) else ~self.available
        self.available_idx = torch.from_numpy(np.flatnonzero(split.available)).to(self.device)
        self.loss_kind = resolve_loss(self.tc.loss, split.n_items)
        if self.loss_kind == "logq":  # how often each item is a training target: logq's in-batch sampling
            targets = split.train.trim(head=1).flat()
            self.popularity = torch.from_numpy(np.bincount(targets, minlength=split.n_items)).to(self.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.aligner, self.compat = None, None
        target = getattr(rec, "compat_target", None)  # (previous release's item vectors by token, known rows)
        if target is not None and self.tc.compat_weight > 0:
            old, known = (t.to(self.device) for t in target)
            self.compat = old.float(), known
            self.aligner = torch.nn.Linear(self.model.cfg.dim, old.shape[1]).to(self.device)
            trainable += list(self.aligner.parameters())
        self.optimizer = torch.optim.AdamW(
            trainable, lr=self.tc.lr, weight_decay=self.tc.weight_decay, betas=(0.9, 0.98), fused=True
        )
        self.best: dict = {"epoch": -1, "ndcg@10": -1.0}
        self.best_weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.waited, self.start_epoch = 0, 0
        self.folder = rec.checkpoint_dir if dist.is_main() else None  # only rank 0 writes
        self.resume_from = rec.checkpoint_dir
        self.readback = 1 if self.device.type == "cpu" else 50  # progress figures: on a GPU, no sync each step
        self.step = _Step(self)
        if dist.world_size() > 1:
            from torch.nn.parallel import DistributedDataParallel

            gpu = [self.device] if self.device.type == "cuda" else None
            self.step = DistributedDataParallel(self.step, device_ids=gpu)

    def resume(self) -> None:
        last = self.resume_from / "last.pt" if self.resume_from else None
        if last is None or not last.exists():
            return
        state = load_checkpoint(last)
        if state["item_ids"] != [str(x) for x in self.split.item_ids] or state["model_config"] != asdict(
            self.model.cfg
        ):
            raise InputError(f"{last} belongs to another model or catalogue; remove it or pick another folder")
        saved = state.get("train_config", {})
        must_match = RESUME_MUST_MATCH + (("epochs",) if self.tc.lr_schedule != "constant" else ())  # the horizon
        changed = [k for k in must_match if k in saved and saved[k] != getattr(self.tc, k)]
        if changed:
            diff = ", ".join(f"{k} {saved[k]!r} -> {getattr(self.tc, k)!r}" for k in changed)
            raise InputError(f"{last}: cannot resume with other settings ({diff}); remove it to start over")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = state["epoch"] + 1
        self.best, self.waited, self.rec.history = state["best"], state["waited"], state["history"]
        best_path = self.resume_from / "best.pt"
        if best_path.exists():
            self.best_weights = load_checkpoint(best_path)["model"]

    def loss(
        self, states: torch.Tensor, targets: torch.Tensor, n_pos: int, vectors: torch.Tensor, rng: torch.Generator
    ) -> torch.Tensor:
        """Mean loss over the ``n_pos`` real positions (counted on the host: no device sync per step)."""
        real = targets > 0
        # sampled losses index the token table (row 0 padding) directly: slicing it would cost a catalogue-sized
        # gradient buffer per step
        if self.loss_kind == "softmax":
            items = vectors[1:]

            def ce(h, tokens):
                return full_softmax_ce(h, items, tokens - 1, self.unavailable, low_precision=self.tc.bf16)

        elif self.loss_kind == "logq":
            log_q = F.pad(log_inclusion(self.popularity, n_pos, self.tc.n_negatives, self.available), (1, 0))

            def ce(h, tokens):
                pick = torch.randint(len(self.available_idx), (self.tc.n_negatives,), generator=rng, device=rng.device)
                extra = self.available_idx[pick] + 1  # by token
                return logq_softmax_ce(h, vectors, tokens, extra, log_q, low_precision=self.tc.bf16)

        else:

            def ce(h, tokens):
                pick = torch.randint(len(self.available_idx), (self.tc.n_negatives,), generator=rng, device=rng.device)
                return sampled_softmax_ce(h, vectors, tokens, self.available_idx[pick] + 1)

        loss = ce(states[real], targets[real])
        horizon = self.model.cfg.profile_horizon
        if horizon:
            future = future_targets(targets, horizon, rng)
            # the head on every position, padding too: a fixed shape a batch width (see WIDTH_STEP)
            loss = loss + self.tc.profile_weight * ce(self.model.profile_of(states)[real], future[real])
        if self.compat is not None:  # the learned map of this model's item vectors onto the previous release's
            old, known = self.compat
            gap = ((self.aligner(vectors[known].float()) - old[known]) ** 2).sum(-1).mean()
            loss = loss + self.tc.compat_weight * gap / (old[known] ** 2).sum(-1).mean()
        return loss

    def epoch(self, epoch: int) -> dict:
        tc, cfg = self.tc, self.model.cfg
        rng = np.random.default_rng([tc.seed, epoch])
        torch_rng = torch.Generator(self.device).manual_seed(tc.seed * 1_000_003 + epoch)
        torch.manual_seed(tc.seed * 1_000_003 + epoch)
        self.model.train()
        windows, lead = training_windows(self.split.train, cfg.max_len, tc.windows)
        plan = batch_plan(windows, cfg.max_len, tc.batch_size, rng, tc.batch_positions)
        n_batches = len(plan)
        running = torch.zeros((), dtype=torch.float64, device=self.device)
        total_loss, total_pos, t0 = 0.0, 0, time.perf_counter()
        bar = progress(_batches(windows, lead, cfg.max_len, plan), total=n_batches, desc=f"epoch {epoch + 1}")
        rank, world = dist.rank(), dist.world_size()
        for step, (inputs, targets) in enumerate(bar):
            idle = rank >= len(inputs)  # a batch with fewer rows than ranks: this one takes part with weight 0
            if world > 1:  # this rank's rows of the global batch
                mine = slice(0, 1) if idle else slice(rank, None, world)
                inputs, targets = inputs[mine], targets[mine]
            n_pos = int((targets > 0).sum())
            for group in self.optimizer.param_groups:
                group["lr"] = tc.lr * lr_factor(tc.lr_schedule, epoch + step / n_batches, tc.epochs)
            inputs, targets = self.to_device(inputs), self.to_device(targets)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                loss = self.step(inputs, targets, n_pos, torch_rng)
            if world > 1:
                n_pos = 0 if idle else n_pos
                (n_all,) = dist.all_sum(n_pos)
                weighted = loss * (world * n_pos / n_all)  # DDP averages: this makes it the one-process mean
            else:
                weighted = loss
            self.optimizer.zero_grad(set_to_none=True)
            weighted.backward()
            self.optimizer.step()
            running += loss.detach() * n_pos
            total_pos += n_pos
            if step % self.readback == 0 or step == n_batches - 1:
                total_loss = float(running)
                bar.set_postfix(
                    loss=f"{total_loss / max(total_pos, 1):.4f}",
                    pos_s=f"{total_pos / (time.perf_counter() - t0):.0f}",
                    refresh=False,  # the bar redraws on its own interval, with the batch count up to date
                )
        total_loss, total_pos = dist.all_sum(float(running), total_pos)
        total_pos = int(total_pos)
        seconds = time.perf_counter() - t0
        return {
            "epoch": epoch,
            "loss": total_loss / max(total_pos, 1),
            "positions": total_pos,  # over all processes
            "processes": world,
            "loss_function": self.loss_kind,
            "seconds": seconds,
        }

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A host batch on the training device: through pinned memory and without waiting, on a GPU."""
        if self.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.device, non_blocking=True)

    def validate(self, epoch: int, stats: dict) -> None:
        self.model.eval()
        metrics = dist.from_main(evaluate(self.rec, self.valid) if dist.is_main() else None)
        stats.update({f"valid_{k}": v for k, v in metrics.items() if k.startswith(("hr", "ndcg"))})
        if metrics["ndcg@10"] > self.best["ndcg@10"]:
            self.best, self.waited = {"epoch": epoch, "ndcg@10": metrics["ndcg@10"]}, 0
            self.best_weights = {k: v.clone() for k, v in self.model.state_dict().items()}
            if self.folder:
                save_torch(self.rec.export(metrics={"valid": metrics, "epoch": epoch}), self.folder / "best.pt")
        else:
            self.waited += 1

    def _report(self, epoch: int, stats: dict) -> None:
        """One line an epoch: its loss and, when validated, validation NDCG@10 against the best so far."""
        line = f"epoch {epoch + 1}/{self.tc.epochs}: loss {stats['loss']:.4f}, {stats['seconds']:.1f} s"
        if "valid_ndcg@10" in stats:
            best = self.best["epoch"] == epoch
            line += f", validation NDCG@10 {stats['valid_ndcg@10']:.4f}" + (" (best)" if best else "")
            if not best and self.waited >= self.tc.patience:
                line += f"; no better for {self.waited} epochs: stopping, best epoch {self.best['epoch'] + 1}"
        note(line)

    def checkpoint(self, epoch: int) -> None:
        """``last.pt``: the exported model plus what resuming needs."""
        if self.folder:
            state = {
                **self.rec.export(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": epoch,
                "best": self.best,
                "waited": self.waited,
                "history": self.rec.history,
            }
            save_torch(state, self.folder / "last.pt")
            kill_point("train:epoch-end")

    def run(self, resume: bool) -> Trainable:
        if len(self.valid) == 0:
            raise InputError("no validation case: every user has fewer than two clicks before the cut-off")
        if resume:
            self.resume()
        tc, began = self.tc, time.perf_counter()
        for epoch in range(self.start_epoch, tc.epochs):
            if self.waited >= tc.patience:
                break
            if dist.from_main(tc.time_budget_s is not None and time.perf_counter() - began > tc.time_budget_s):
                break
            stats = self.epoch(epoch)
            if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
                self.validate(epoch, stats)
            self.rec.history.append(stats)
            self.checkpoint(epoch)
            if dist.is_main():
                self._report(epoch, stats)
            if self.rec.on_epoch_end is not None:
                self.rec.on_epoch_end(epoch, stats)
        self.model.load_state_dict(self.best_weights)
        self.model.to("cpu").eval()
        self.rec.best = self.best
        if self.aligner is not None:  # its weights as trained to the end (the best epoch's are not kept apart)
            self.rec.aligner = self.aligner.to("cpu").eval()
        states = self.rec.user_states(self.valid.histories[:REFERENCE_USERS])
        self.rec.reference = vector_stats(states["intent"].numpy())
        if "profile" in states:
            self.rec.reference["profile"] = vector_stats(states["profile"].numpy())
        return self.rec


def fit(rec: Trainable, split: Split, resume: bool = True) -> Trainable:
    """Train ``rec`` on ``split`` (resuming from ``rec.checkpoint_dir/last.pt`` when there is one).

    Deterministic algorithms are on while it trains: with several threads the embedding gradients are
    otherwise summed in a varying order, and a seeded run would not repeat bit for bit (measured: no cost,
    once the NaN filling of new tensors that comes with that mode is off).
    """
    dist.setup(rec.train_config.device)
    was = torch.are_deterministic_algorithms_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    # deterministic mode also fills every new tensor with NaN (in case a kernel reads memory it never wrote):
    # 15,000 fills an ML-1M epoch, a fifth of its time; no kernel used here reads unwritten memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        return _Loop(rec, split).run(resume)
    finally:
        torch.use_deterministic_algorithms(was)
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
