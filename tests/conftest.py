import os
import shutil
import socket

import pytest

os.environ.setdefault("LST_EMBEDDINGS_QUIET", "1")

from embeddings.synthetic import WeekConfig, generate_week, write_week  # noqa: E402

TINY = WeekConfig(users=300, listings=400, days=7, seed=3)


@pytest.fixture(scope="session")
def tiny_week():
    """(listings, events, labels) of a tiny synthetic week."""
    return generate_week(TINY)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("week")
    write_week(TINY, out)
    return out


@pytest.fixture(scope="session")
def tiny_hybrid_model(tiny_week, tmp_path_factory):
    """A hybrid SASRec checkpoint trained briefly on the tiny week (temporal split)."""
    from embeddings.models.sasrec import SASRecConfig
    from embeddings.split import temporal_split
    from embeddings.train import TrainConfig
    from embeddings.zoo import make_model

    listings, events, _ = tiny_week
    split = temporal_split(events, listings)
    model = make_model(
        "sasrec",
        split,
        listings,
        sasrec=SASRecConfig(item_encoder="hybrid", max_len=20, dim=16),
        train=TrainConfig(epochs=2, batch_size=32, bf16=False),
    )
    path = tmp_path_factory.mktemp("tiny-hybrid") / "model.pt"
    model.fit(split).save(path)
    return path


@pytest.fixture()
def feature_repo(tmp_path):
    """A scratch copy of feature_repo/ (without its data) to publish into."""
    from embeddings.feature_store import REPO, Repo

    shutil.copytree(REPO, tmp_path / "feature_repo", ignore=shutil.ignore_patterns("data", "__pycache__"))
    return Repo(tmp_path / "feature_repo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
