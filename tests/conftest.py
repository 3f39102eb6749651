import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("LST_EMBEDDINGS_QUIET", "1")

from embeddings.data.synthetic import WeekConfig, generate_week, write_week  # noqa: E402

TINY = WeekConfig(users=300, listings=400, days=7, seed=3)  # dated to end at today's midnight (UTC)


def fit_scores(embedder, users, events, listings, cutoff, **kwargs):
    """``fit_preference`` as the classify stage runs it: the classifier's features from ``embedder``'s vectors as
    of the label window's start."""
    from embeddings.stages.classify import LABEL_DAYS, fit_preference

    start = cutoff - pd.Timedelta(days=kwargs.get("label_days", LABEL_DAYS))
    past = embedder.embed_users(events, start, progress=False)
    return fit_preference(users, past, events, listings, cutoff, **kwargs)


def day(n: float) -> pd.Timestamp:
    """Midnight (UTC) ``n`` days after the tiny week's first one: day(6) is the usual cut-off, day(7) its end."""
    return TINY.start + pd.Timedelta(days=n)


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
    from embeddings.data.split import temporal_split
    from embeddings.models.sasrec import SASRecConfig
    from embeddings.models.zoo import make_model
    from embeddings.training.config import TrainConfig

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


@contextlib.contextmanager
def feast_serve(repo_path):
    """A real ``feast serve`` on a free loopback port in ``repo_path``; yields ``ask(users) -> {feature: values}``."""
    port = free_port()
    feast = str(Path(sys.executable).with_name("feast"))
    server = subprocess.Popen(
        [feast, "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log"],
        cwd=repo_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ask(users: list[str], wait_s: float = 90) -> dict:
        body = json.dumps({"feature_service": "user_profile", "entities": {"user_id": users}}).encode()
        deadline = time.time() + wait_s
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/get-online-features",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                reply = json.loads(urllib.request.urlopen(req, timeout=5).read())
                names = reply["metadata"]["feature_names"]
                return {name: reply["results"][i]["values"] for i, name in enumerate(names)}
            except OSError:
                if server.poll() is not None:
                    raise AssertionError("feast serve exited") from None
                if time.time() > deadline:
                    raise AssertionError("feast serve did not answer") from None
                time.sleep(0.5)

    try:
        yield ask
    finally:
        server.terminate()
        server.wait(timeout=20)
