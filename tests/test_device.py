"""The GPU path (``TrainConfig.device``), checked where no GPU is: every tensor the training step makes names its
device, so on ``cuda`` nothing lands on the host by accident; a missing GPU is a clear error."""

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import embeddings
from embeddings.data.split import temporal_split
from embeddings.errors import InputError
from embeddings.models.sasrec import SASRecConfig, SASRecRecommender
from embeddings.training.config import TrainConfig
from embeddings.training.loop import training_device

FACTORIES = {
    torch.empty, torch.zeros, torch.ones, torch.full, torch.arange, torch.rand, torch.randn, torch.randint,
    torch.randperm, torch.tensor, torch.eye, torch.linspace,
}  # fmt: skip
PACKAGE = str(Path(embeddings.__file__).parent)


class HostFactories(TorchFunctionMode):
    """Records each tensor factory called from the package's own code without a ``device`` argument."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1).f_code
        if func in FACTORIES and "device" not in kwargs and caller.co_filename.startswith(PACKAGE):
            self.calls.append(f"{func.__name__} in {Path(caller.co_filename).name}:{caller.co_name}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("loss", ["softmax", "sampled", "logq"])
def test_every_tensor_the_training_step_makes_names_its_device(tiny_week, loss):
    listings, events, _ = tiny_week
    split = temporal_split(events, listings)
    rec = SASRecRecommender(
        SASRecConfig(max_len=20, dim=16, profile_horizon=4),
        TrainConfig(epochs=1, batch_size=64, loss=loss, device="cpu", bf16=False),
    )
    with HostFactories() as mode:
        rec.fit(split)
    assert mode.calls == [], sorted(set(mode.calls))
    assert rec.device == torch.device("cpu") and rec.history[0]["positions"] > 0


def test_a_missing_or_unknown_device_is_a_clear_error():
    assert training_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="cpu, cuda or cuda:N"):
        training_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device is visible"):
            training_device("cuda")


def test_a_gpu_config_defaults_to_bf16_and_a_cpu_one_to_what_the_cpu_does_fast():
    assert TrainConfig(device="cuda").bf16 is True
    assert TrainConfig(device="cuda", bf16=False).bf16 is False
    assert isinstance(TrainConfig().bf16, bool)
