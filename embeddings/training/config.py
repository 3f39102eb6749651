"""Training settings: :class:`TrainConfig` and the named presets (``--preset``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import torch

from embeddings.errors import InputError

LOSSES = ("auto", "softmax", "sampled", "logq")
# loss=auto: full softmax up to this many items, logq above. bench/losses.py, one step of 128 x 50 positions, both
# through the fused softmax (Intel VM, 2026-12-02): logq 1.9x faster at 5,000 items, 3.1x at 10,000, 5.9x at
# 20,000, 52x at 300,000; but HR@10 after the same training time (2026-11-29, before logq was fused): Video (23,715
# items) 0.0924 against full softmax's 0.0946, ML-1M (3,416 items) 0.2502 against 0.2728: where the full softmax
# is affordable it is the better loss
AUTO_FULL_SOFTMAX_MAX_ITEMS = 10_000
# batch widths are rounded up to a multiple of this: in bfloat16 on CPUs with AMX, oneDNN builds a kernel for
# each new matmul shape (~3.7 ms each on a Sapphire Rapids VM), and batches cut to their exact width made most
# of a short-sequence step's matmuls new shapes (Video: 33 ms a step where 13 ms is the work; see losses.ROWS)
WIDTH_STEP = 8
WINDOWS = ("last", "all", "overlap")
LR_SCHEDULES = ("constant", "cosine")
# named SASRec settings (SASRecConfig, TrainConfig fields) for `train` / `evaluate --preset`; without one the
# dataclass defaults hold, which are for short click sequences over a large catalogue (a week of listing clicks;
# bench/video.py)
PRESETS: dict[str, tuple[dict, dict]] = {
    # long histories over a small catalogue (ML-1M: 165 clicks a user, 3,416 items; bench/sasrec_quality.py). In 30
    # minutes (bench/sasrec_levers.py): LiGR layers HR@10 0.3253 / NDCG@10 0.1905 against 0.3147 / 0.1809; then
    # overlapping windows (each target with at least 100 clicks before it) 0.3371 / 0.1961, for 1.5x the epoch;
    # compiled steps: 1.30x faster epochs (another random stream: 0.3300 / 0.1933, within the runs' spread)
    "ml1m": (
        {"max_len": 200, "dropout": 0.2, "positions": "rotary", "layer": "ligr", "ffn_mult": 4},
        {"windows": "overlap", "batch_size": 128, "compile": True},
    ),
}
# settings that change the trajectory of a run: resuming with other values would not continue it
REFERENCE_USERS = 2000  # validation users whose vectors give the checkpoint's reference statistics
RESUME_MUST_MATCH = (
    "batch_size", "lr", "weight_decay", "loss", "n_negatives", "seed", "bf16", "windows", "profile_weight",
    "valid_users", "lr_schedule", "batch_positions", "compat_weight",
)  # fmt: skip


def _fast_bf16() -> bool:
    """bfloat16 matmuls are about 4x faster than float32 on CPUs with AVX512-BF16 or AMX, slower elsewhere."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


@dataclass
class TrainConfig:
    epochs: int = 200  # upper bound; early stopping usually ends training sooner
    batch_size: int = 0  # windows a batch; 0: as many as fit batch_positions padded positions
    # with batch_size 0: short sequences share a step's fixed costs and logQ gets more in-batch candidates (Video:
    # HR@10 0.1113 against 0.1011 with 128 windows a batch, epoch 4.4 s against 5.3 s; the synthetic week level)
    batch_positions: int = 4096
    lr: float = 2e-3
    lr_schedule: str = "constant"  # constant | cosine: warm up over the first epoch, then decay to 0 at `epochs`
    weight_decay: float = 0.0
    loss: str = "auto"  # softmax (full) | sampled (uniform negatives) | logq (in-batch + uniform, logQ) | auto
    n_negatives: int = 256  # uniform negatives per batch for loss=sampled and loss=logq
    patience: int = 10  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = 1
    seed: int = 0
    bf16: bool | None = None  # bfloat16 autocast for the matmuls (default: on a GPU, and on CPUs where it is fast)
    compile: bool = False  # training steps through torch.compile (needs a C++ compiler; 30-55 s compiling): long runs
    # (inductor fuses the elementwise work; dynamic shapes, so the batch widths share a graph. ML-1M preset, Intel VM:
    # epoch 12.7 s against 16.5 s eager)
    time_budget_s: float | None = None  # stop training after this many seconds
    windows: str = "last"  # last: each user's last max_len clicks (SASRec); all: the whole history in windows;
    # overlap: windows every max_len // 2 clicks, each target trained once with at least max_len // 2 before it
    profile_weight: float = 1.0  # weight of the profile head's loss (models with profile_horizon > 0)
    device: str = "cpu"  # cpu | cuda | cuda:N: where training runs (the fitted model comes back on the CPU)
    valid_users: int = 50_000  # early stopping ranks at most this many validation users (a fixed random sample)
    compat_weight: float = 0.0  # weight of the compatibility loss against the previous release's item vectors
    # (BC-Aligner style; the recommender's ``compat_target``): a learned linear map of this model's item vectors
    # onto the previous model's, trained with the model (bench/compat.py measures it; the product maps after training)

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = self.device.startswith("cuda") or _fast_bf16()
        if self.windows not in WINDOWS:
            raise InputError(f"windows must be one of {WINDOWS}, got {self.windows!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.compile and not self.device.startswith("cuda") and not any(map(shutil.which, ("c++", "g++", "cc"))):
            raise InputError("compile needs a C++ compiler on PATH (torch.compile builds its CPU kernels with it)")
        if self.compat_weight < 0:
            raise InputError(f"compat_weight must be 0 or more, got {self.compat_weight}")
        if self.epochs < 1 or self.valid_users < 1:
            raise InputError("epochs and valid_users must be at least 1")
        if self.batch_size < 0 or (self.batch_size == 0 and self.batch_positions < 1):
            raise InputError(
                f"a batch needs batch_size >= 1 windows, or batch_size 0 and batch_positions >= 1 positions; "
                f"got batch_size {self.batch_size}, batch_positions {self.batch_positions}"
            )
