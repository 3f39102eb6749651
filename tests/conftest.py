import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
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


def on_redis(repo, server: tuple[int, str], monkeypatch):
    """``repo`` on its ``redis`` target against ``server`` (port, password), emptied first."""
    from embeddings.feature_store import Repo

    port, password = server
    for key, value in {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": password}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REDIS_SSL", "false")
    redis_repo = Repo(repo.path, "redis")
    redis_repo.redis().flushall()
    return redis_repo


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


@pytest.fixture()
def redis_server(tmp_path):
    """The Redis that .ci/run started (REDIS_PORT, REDIS_PASSWORD), else one of our own on a free port."""
    if os.environ.get("REDIS_PORT") and os.environ.get("REDIS_PASSWORD"):
        yield int(os.environ["REDIS_PORT"]), os.environ["REDIS_PASSWORD"]
        return
    with own_redis(tmp_path) as (port, password, _):
        yield port, password


@pytest.fixture()
def private_redis(tmp_path):
    """A Redis of this test's own (it may kill it): (port, password, process)."""
    with own_redis(tmp_path) as server:
        yield server


@contextlib.contextmanager
def own_redis(folder: Path):
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run installs it")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    port, password = free_port(), "s3cret-for-tests"
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield port, password, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "redis-cluster.sh"


def _free_block(n: int = 6) -> int:
    """A first port with ``n`` free ports after it, and their cluster bus ports (+10000) free too."""
    for _ in range(50):
        first = free_port()
        if first + n + 10000 > 65535:
            continue
        wanted = [first + i for i in range(n)] + [first + 10000 + i for i in range(n)]
        try:
            for port in wanted:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise AssertionError("no block of free ports")


@dataclass
class Cluster:
    """A Redis Cluster this test started: three masters on ``first``..``first + 2``, replicas on the next three."""

    nodes: str
    password: str
    first: int
    folder: Path

    def pid(self, port: int) -> int:
        return int((self.folder / f"redis-{port}.pid").read_text())


@contextlib.contextmanager
def own_cluster(folder: Path):
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run installs it")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    first, password = _free_block(), "cluster-s3cret"
    env = {**os.environ, "REDIS_CLUSTER_PASSWORD": password, "CLUSTER_NODE_TIMEOUT_MS": "1500"}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(first), str(folder)], env=env, capture_output=True, text=True, timeout=90
    )
    assert started.returncode == 0, started.stderr
    try:
        yield Cluster(exported(started.stdout)["REDIS_CLUSTER_NODES"], password, first, folder)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(first), str(folder)], timeout=60)


@pytest.fixture()
def redis_cluster(tmp_path):
    """The Redis Cluster .ci/run started (REDIS_CLUSTER_NODES, REDIS_CLUSTER_PASSWORD), else one of our own through
    scripts/redis-cluster.sh (three masters, three replicas): (nodes, password)."""
    if os.environ.get("REDIS_CLUSTER_NODES") and os.environ.get("REDIS_CLUSTER_PASSWORD"):
        yield os.environ["REDIS_CLUSTER_NODES"], os.environ["REDIS_CLUSTER_PASSWORD"]
        return
    with own_cluster(tmp_path / "cluster") as cluster:
        yield cluster.nodes, cluster.password


@pytest.fixture()
def private_cluster(tmp_path):
    """A Redis Cluster of this test's own (it may kill nodes), with replicas and a 1.5 s node timeout."""
    with own_cluster(tmp_path / "cluster") as cluster:
        yield cluster


def exported(stdout: str) -> dict[str, str]:
    """The variables of ``export NAME=value`` lines (what scripts/redis-cluster.sh start prints)."""
    return dict(line.removeprefix("export ").split("=", 1) for line in stdout.strip().splitlines())


def lay_out(layout, tables, scores=None):
    """A run folder (``pipeline.RunLayout``) as the stages leave it: vectors, scores and the run's record."""
    from embeddings.io import write_parquet

    write_parquet(tables.users, layout.user_embeddings)
    write_parquet(tables.items, layout.listing_embeddings)
    write_parquet(tables.scores if scores is None else scores, layout.scores)
    tables.record.write(layout.record)
    return layout
