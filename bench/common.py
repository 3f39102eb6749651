"""Shared bits of the benchmark scripts: data paths, result files, tables, machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from embeddings.models.sasrec import SASRecConfig

RESULTS = Path(os.environ.get("LST_BENCH_RESULTS", Path(__file__).parent / "results"))  # --quick runs: results/quick
ML1M = Path(os.environ.get("ML1M", Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m.txt"))


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype = torch.bfloat16, reps: int = 5, trials: int = 5) -> float:
    """Measured FLOP/s of an (m x k) @ (k x n) product on this machine: the best of ``trials`` timings of
    ``reps`` products (a bound should not move with the machine's noise; one timing did, 600-830 GFLOP/s)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n * reps / best


def block_flops_per_token(cfg: SASRecConfig, length: float) -> float:
    """Forward FLOPs of one transformer block for a token of a ``length``-token sequence. Multiply-adds: qkv and
    output projection; SwiGLU's up (gate + value) and down plus LiGR's two gates, or the plain MLP's two layers;
    QK^T and AV over the half of the sequence a token attends to on average (causal)."""
    d, hidden = cfg.dim, cfg.dim * cfg.ffn_mult
    macs = 4 * d * d + (3 * d * hidden + 2 * d * d if cfg.layer == "ligr" else 2 * d * hidden)
    return 2 * macs + 2 * length * d


def training_flops(
    cfg: SASRecConfig, positions: float, length: float, n_items: int, targets: float | None = None
) -> dict[str, float]:
    """Forward + backward matmul FLOPs of training on ``positions`` tokens of ``length``-token windows: the
    transformer on every token, the full softmax on every position (logits, and their gradients for hidden
    states and for item vectors: two more products of the same size) on every position, or on ``targets`` of
    them (windows with context-only positions)."""
    return {
        "transformer": 3 * positions * cfg.n_blocks * block_flops_per_token(cfg, length),
        "loss": 3 * (positions if targets is None else targets) * 2 * n_items * cfg.dim,
    }


def loss_matmul_rate(n_items: int, dim: int) -> float:
    """The best bfloat16 FLOP/s of the full softmax's three products (logits, their gradients for hidden states
    and for item vectors) on this machine: what bounds training from below."""
    return max(matmul_rate(16384, dim, n_items), matmul_rate(16384, n_items, dim), matmul_rate(n_items, 16384, dim))


def test_figures(model, cases) -> dict:
    """HR@10 and NDCG@10 of ``model`` on ``cases`` with their standard errors over the users (the test set's own
    sampling noise, which no seed moves), and each user's rank as one character (``0``-``9``, ``-`` past 10), so
    that runs on the same users can be set side by side user by user (:func:`paired`)."""
    from embeddings.stages.evaluate import rank_cases

    ranks, _ = rank_cases(model, cases)
    chars = "".join(str(int(r)) if r < 10 else "-" for r in ranks)
    hit, gain = _hit(_codes(chars)), _gain(_codes(chars))
    root_n = np.sqrt(max(len(ranks) - 1, 1))
    return {
        "hr@10": float(hit.mean()),
        "ndcg@10": float(gain.mean()),
        "hr@10_se": float(hit.std() / root_n),
        "ndcg@10_se": float(gain.std() / root_n),
        "ranks@10": chars,
    }


def paired(ranks: str, reference: str) -> dict[str, float]:
    """Difference in HR@10 and NDCG@10 between two runs' :func:`test_figures` ranks on the same users, with the
    standard error of the per-user difference (smaller than either run's own: the users' noise cancels)."""
    a, b = _codes(ranks), _codes(reference)
    if len(a) != len(b):
        raise ValueError(f"ranks of {len(a)} and {len(b)} users: not the same test set")
    out = {}
    for name, of in (("hr@10", _hit), ("ndcg@10", _gain)):
        d = of(a) - of(b)
        out[f"{name}_diff"], out[f"{name}_diff_se"] = float(d.mean()), float(d.std() / np.sqrt(max(len(d) - 1, 1)))
    return out


def _codes(ranks: str) -> np.ndarray:
    return np.frombuffer(ranks.encode(), dtype=np.uint8)


def _hit(codes: np.ndarray) -> np.ndarray:
    """1.0 where the user's target ranked in the top 10, else 0.0."""
    return (codes != ord("-")).astype(float)


def _gain(codes: np.ndarray) -> np.ndarray:
    """NDCG@10 of each user: 1 / log2(rank + 2) in the top 10, else 0."""
    hit = codes != ord("-")
    return np.where(hit, 1 / np.log2(np.where(hit, codes.astype(float) - ord("0"), 0) + 2), 0.0)


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    tmp.replace(path)
    return path


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def disk_write_rate(folder: Path, megabytes: int = 256) -> float:
    """Bytes per second of a sequential write with fsync in ``folder``."""
    data = os.urandom(1 << 20)
    path = Path(folder) / ".disk-rate.tmp"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return megabytes * (1 << 20) / seconds


def memory_copy_rate(megabytes: int = 512) -> float:
    """Bytes per second of a large in-memory copy (read + write counted once)."""
    import numpy as np

    a = np.ones(megabytes * (1 << 20) // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    start = time.perf_counter()
    np.copyto(b, a)
    return a.nbytes / (time.perf_counter() - start)


@contextlib.contextmanager
def local_redis(folder: str | os.PathLike | None = None, password: str = "bench-password"):
    """A real redis-server on a free loopback port (no persistence) for a benchmark; yields the environment that
    the redis target's yaml reads (REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_SSL)."""
    import shutil
    import socket
    import subprocess

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password, "--save", ""]
    argv += ["--appendonly", "no", *(["--dir", str(folder)] if folder else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"redis-server did not listen on port {port}") from None
                time.sleep(0.1)
        yield {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": password, "REDIS_SSL": "false"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
