"""Several training processes through PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

``lst-embeddings train --workers N ...`` starts ``torchrun --standalone --nproc_per_node N`` on the same
command (or run ``torchrun ... -m embeddings.cli train ...`` yourself, e.g. across machines). Each
process sees ``RANK`` / ``WORLD_SIZE`` in its environment; :func:`setup` joins the process group (gloo on
CPU, NCCL on GPU). Training then gives each rank its share of every global batch, so N processes with
``batch_size`` B take the same optimisation steps as one process with B; only rank 0 writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist


def launched() -> bool:
    """True inside a process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "cpu") -> None:
    """Join the process group torchrun describes (no-op for a single process or when joined already); on GPUs
    each process takes the GPU of its ``LOCAL_RANK``."""
    if launched() and not dist.is_initialized():
        gpu = device.startswith("cuda")
        if gpu:
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if gpu else "gloo")


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def all_sum(*values: float) -> list[float]:
    """Sums of ``values`` over all ranks (the values themselves with one process)."""
    if world_size() == 1:
        return list(values)
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=on)  # NCCL reduces GPU tensors only
    dist.all_reduce(t)
    return t.tolist()


def from_main(value):
    """Rank 0's ``value`` on every rank (decisions that must agree: early stopping, time budget)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(workers: int, argv: list[str]) -> int:
    """Run ``python -m embeddings.cli argv`` as ``workers`` torchrun processes on this machine; their exit code."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
        "-m", "embeddings.cli", *argv,
    ]  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // workers)  # the cores are shared: one process must not take them all
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    return subprocess.run(cmd, env=env).returncode
