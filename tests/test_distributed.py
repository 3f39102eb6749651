"""Two training processes (torchrun, DistributedDataParallel over gloo) against one, and resuming them."""

import os
import subprocess
import sys

import pytest
from conftest import day

from embeddings.io import load_checkpoint

# dropout 0: with it each process draws its own masks, and no two layouts could agree step by step
ARGS = ["--epochs", "3", "--batch-size", "32", "--dim", "16", "--max-len", "20", "--dropout", "0", "--fp32"]
ARGS += ["--patience", "100", "--cutoff", str(day(4)), "--lr", "0.003"]


def _train(data, out, workers, kill_at=None):
    env = {**os.environ, "LST_EMBEDDINGS_QUIET": "1"}
    env.pop("LST_EMBEDDINGS_KILL_AT", None)
    if kill_at:
        env["LST_EMBEDDINGS_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "embeddings.cli", "train", "--data", str(data), "--out", str(out), *ARGS]
    return subprocess.run([*cmd, "--workers", str(workers)], env=env, capture_output=True, text=True, timeout=600)


def _history(folder):
    return load_checkpoint(folder / "model.pt")["metrics"]["history"]


def _losses(folder):
    return [h["loss"] for h in _history(folder)]


@pytest.fixture(scope="module")
def one_process(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    done = _train(tiny_dir, out, 1)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_two_processes_follow_the_one_process_loss_curve(tiny_dir, one_process, tmp_path):
    done = _train(tiny_dir, tmp_path, 2)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = _losses(one_process), _losses(tmp_path)
    assert len(one) == len(two) == 3
    # same global batches, gradients weighted to the one-process mean: only summation order differs
    assert two == pytest.approx(one, rel=2e-3)
    # each process took half of every batch: together they saw each position once
    assert [h["processes"] for h in _history(tmp_path)] == [2, 2, 2]
    assert [h["positions"] for h in _history(tmp_path)] == [h["positions"] for h in _history(one_process)]
    assert not (tmp_path / "model.pt.tmp").exists()


def test_two_processes_killed_after_an_epoch_resume_where_they_stopped(tiny_dir, tmp_path):
    straight = tmp_path / "straight"
    assert _train(tiny_dir, straight, 2).returncode == 0
    crashed = tmp_path / "crashed"
    killed = _train(tiny_dir, crashed, 2, kill_at="train:epoch-end")
    assert killed.returncode != 0 and (crashed / "last.pt").exists() and not (crashed / "model.pt").exists()
    assert load_checkpoint(crashed / "last.pt")["epoch"] == 0
    resumed = _train(tiny_dir, crashed, 2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _losses(crashed) == pytest.approx(_losses(straight), rel=1e-6)
