"""Fresh vectors between weekly runs: click events on a real Redis Stream, real Feast pushes, the published
release's model and maps."""

import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import day, on_redis

from embeddings import pipeline as pl
from embeddings.feature_store import Repo, historical_features, online_features
from embeddings.release import CLASSIFIER, release_dir
from embeddings.stages.classify import PreferenceModel, score_users
from embeddings.stages.embed import Embedder
from embeddings.stream import STREAM, ClickStore, RedisStreamSource, StreamWorker, status, write_clicks


@pytest.fixture(scope="module")
def model(tiny_week, tmp_path_factory):
    """A hybrid model with a profile head, trained briefly on the tiny week."""
    from embeddings.data.split import temporal_split
    from embeddings.models.sasrec import SASRecConfig
    from embeddings.models.zoo import make_model
    from embeddings.training.config import TrainConfig

    listings, events, _ = tiny_week
    split = temporal_split(events, listings, day(6))
    cfg = SASRecConfig(item_encoder="hybrid", max_len=20, dim=16, profile_horizon=4)
    rec = make_model("sasrec", split, listings, sasrec=cfg, train=TrainConfig(epochs=3, batch_size=32, bf16=False))
    return rec.fit(split).save(tmp_path_factory.mktemp("stream-model") / "model.pt")


@pytest.fixture()
def published(tiny_dir, tiny_week, model, feature_repo, redis_server, monkeypatch, tmp_path):
    """A run (the tiny week's model, cut-off day 6) published to Redis, and the clicks store seeded with the clicks
    before its cut-off."""
    return _publish(on_redis(feature_repo, redis_server, monkeypatch), tiny_dir, tiny_week, model, tmp_path)


def _publish(repo: Repo, tiny_dir, tiny_week, model, tmp_path):
    import shutil

    layout = pl.RunLayout(tmp_path / "run")
    layout.model_dir.mkdir(parents=True)
    shutil.copyfile(model, layout.model)
    pl.embed(pl.load_data(tiny_dir), layout, cfg=pl.EmbedConfig(cutoff=str(day(6))))
    pl.classify(pl.load_data(tiny_dir), layout)
    manifest = pl.publish(tiny_dir, repo, layout)
    _, events, _ = tiny_week
    before = events[events["event_timestamp"] < day(6)]
    ClickStore(repo.redis(), repo.config().project).seed(before, tiny_week[0])
    return repo, manifest, events


def _clicks(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp", "event_type"])


def test_a_click_moves_the_online_vectors_to_the_batch_paths_and_bad_events_go_to_the_dead_letters(
    published, tiny_week, model
):
    repo, manifest, events = published
    listings = tiny_week[0]
    client = repo.redis()
    old_user = str(events[events["event_timestamp"] < day(6)]["user_id"].iloc[0])
    items = list(listings["item_id"].drop_duplicates()[:3])
    now = pd.Timestamp.now(tz="UTC").floor("s")
    clicks = _clicks(
        [
            (old_user, items[0], now - pd.Timedelta(minutes=5), "view"),
            (old_user, items[1], now - pd.Timedelta(minutes=4), "favorite"),
            ("U-new", items[2], now - pd.Timedelta(minutes=3), "view"),  # a user the batch never saw
            (old_user, "no-such-listing", now, "view"),
            (old_user, items[0], "yesterday-ish", "view"),
            (old_user, items[0], now + pd.Timedelta(hours=5), "view"),
            (old_user, items[0], now, "swipe"),
        ]
    )
    before = online_features(repo, [old_user]).iloc[0]
    write_clicks(client, clicks)
    worker = StreamWorker(repo, RedisStreamSource(client, consumer="w1"))
    report = worker.run(idle_stop_s=0.5)
    assert (report.events, report.dead) == (7, 4)

    dead = client.xrange("lst_embeddings:clicks:dead")
    reasons = sorted(fields[b"reason"].decode() for _, fields in dead)
    assert any("item_id" in r and "unknown" in r for r in reasons)
    assert any("event_timestamp" in r and "clock skew" in r for r in reasons)
    assert any("event_type" in r for r in reasons) and len(reasons) == 4
    assert status(client) == {"length": 7, "pending": 0, "dead": 4}
    project = repo.config().project
    for part in ("ids", "items", "stats"):  # a user's clicks are kept as long as their vectors, not for ever
        assert 0 < client.ttl(f"lst_embeddings:clicks:{project}:{{U-new}}:{part}") <= 8 * 86_400

    # the batch path on the same clicks: the published model embeds every click so far, as the weekly embed does
    embedder = Embedder.from_checkpoint(model, listings)
    so_far = pd.concat([events[events["event_timestamp"] < day(6)], clicks.iloc[:3]], ignore_index=True)
    so_far["event_timestamp"] = pd.to_datetime(so_far["event_timestamp"], utc=True)
    batch = embedder.embed_users(so_far, now + pd.Timedelta(minutes=1), progress=False).set_index("user_id")
    online = online_features(repo, [old_user, "U-new"]).set_index("user_id")
    for user in (old_user, "U-new"):
        np.testing.assert_allclose(online.loc[user, "embedding"], batch.loc[user, "embedding"], atol=1e-5)
        np.testing.assert_allclose(
            online.loc[user, "profile_embedding"], batch.loc[user, "profile_embedding"], atol=1e-5
        )
        assert online.loc[user, "n_events"] == batch.loc[user, "n_events"]
        assert online.loc[user, "model_version"] == manifest["model_version"]
        assert online.loc[user, "space_version"] == manifest["space_version"]
    assert not np.allclose(online.loc[old_user, "embedding"], before["embedding"])
    # the score: the release's classifier on the same vector and click history, as the batch scores
    classifier = PreferenceModel.load(release_dir(repo.data, manifest["model_version"]) / CLASSIFIER)
    assert classifier.version == manifest["classifier_version"] == online.loc[old_user, "classifier_version"]
    scores = score_users(classifier, batch.loc[[old_user, "U-new"]].reset_index(), so_far, listings)
    np.testing.assert_allclose(online.loc[[old_user, "U-new"], "p_rent"], scores["p_rent"], atol=1e-5)
    assert list(online.loc[[old_user, "U-new"], "predicted_deal_type"]) == list(scores["predicted_deal_type"])

    # point in time: the streamed value from its last click on, the batch value before it
    entity = pd.DataFrame(
        {"user_id": [old_user, old_user], "event_timestamp": [now - pd.Timedelta(minutes=30), now]}
    ).astype({"event_timestamp": "datetime64[us, UTC]"})
    rows = historical_features(repo, entity).sort_values("event_timestamp")
    np.testing.assert_allclose(rows["embedding"].iloc[0], before["embedding"], atol=1e-6)
    np.testing.assert_allclose(rows["embedding"].iloc[1], batch.loc[old_user, "embedding"], atol=1e-5)

    # at least once: the same entries delivered again (a worker that died before acknowledging) change nothing
    entries = [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in client.xrange(STREAM)]
    worker.process(entries)
    twice = online_features(repo, [old_user, "U-new"]).set_index("user_id")
    for user in (old_user, "U-new"):
        np.testing.assert_allclose(twice.loc[user, "embedding"], online.loc[user, "embedding"], atol=1e-7)
        assert twice.loc[user, "n_events"] == online.loc[user, "n_events"]


def _cli_worker(
    repo: Repo, consumer: str, env: dict | None = None, wait: bool = True, batch: int = 4, extra: tuple = ()
):
    argv = [sys.executable, "-m", "embeddings.cli", "stream", "--repo", str(repo.path), "--target", "redis"]
    argv += ["--consumer", consumer, "--batch-size", str(batch), "--idle-stop-s", "1.5", "--claim-idle-ms", "60000"]
    argv += list(extra)
    proc = subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def _valid_clicks(events: pd.DataFrame, listings: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` clicks of known users on known listings in the last hour, in time order."""
    rng = np.random.default_rng(seed)
    users = rng.choice(events["user_id"].unique(), n)
    items = rng.choice(listings["item_id"].unique(), n)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    stamps = sorted(now - pd.Timedelta(seconds=int(s)) for s in rng.integers(60, 3600, n))
    return _clicks(list(zip(users, items, stamps, ["view"] * n, strict=True)))


def _expected(model, listings, events, clicks, users) -> pd.DataFrame:
    embedder = Embedder.from_checkpoint(model, listings)
    so_far = pd.concat([events[events["event_timestamp"] < day(6)], clicks], ignore_index=True)
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=5)
    return embedder.embed_users(so_far, later, progress=False).set_index("user_id").loc[users]


def test_a_worker_killed_before_acknowledging_loses_nothing_and_counts_nothing_twice(published, tiny_week, model):
    """SIGKILL after the vectors of a micro-batch are online but before its events are acknowledged; the restarted
    worker (same consumer name) takes its pending events first: every click counted once, every vector the batch
    path's."""
    repo, _, events = published
    client = repo.redis()
    clicks = _valid_clicks(events, tiny_week[0], 24, seed=1)
    write_clicks(client, clicks)
    code, _ = _cli_worker(repo, "w1", {"LST_EMBEDDINGS_KILL_AT": "stream:before-ack"})
    assert code == -signal.SIGKILL
    assert 0 < status(client)["pending"] <= 24  # micro-batches online, their events not acknowledged
    code, output = _cli_worker(repo, "w1")
    assert code == 0, output
    assert status(client) == {"length": 24, "pending": 0, "dead": 0}
    users = sorted(set(clicks["user_id"]))
    want = _expected(model, tiny_week[0], events, clicks, users)
    got = online_features(repo, users).set_index("user_id").loc[users]
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]), atol=1e-5)
    assert (got["n_events"].to_numpy() == want["n_events"].to_numpy()).all()


def test_two_workers_share_a_stream(published, tiny_week, model):
    """Two workers of one consumer group: every event processed once, by one of them, none left pending."""
    repo, _, events = published
    client = repo.redis()
    clicks = _valid_clicks(events, tiny_week[0], 60, seed=2)
    write_clicks(client, clicks)
    # each stops after 30 events, so neither can take the whole stream, whichever starts first
    workers = [_cli_worker(repo, name, wait=False, batch=2, extra=("--max-events", "30")) for name in ("w1", "w2")]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    counts = [int(out.split(" events")[0].replace(",", "")) for out, _ in outputs]
    assert counts == [30, 30], counts
    assert status(client) == {"length": 60, "pending": 0, "dead": 0}
    users = sorted(set(clicks["user_id"]))
    want = _expected(model, tiny_week[0], events, clicks, users)
    got = online_features(repo, users).set_index("user_id").loc[users]
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]), atol=1e-5)


def test_a_new_release_switches_the_worker_and_no_user_keeps_vectors_of_two(
    published, tiny_dir, tiny_week, model, tmp_path
):
    """Clicks streamed under release A; release B is published (a declared new space, switched at once); the
    worker moves to B by itself and embeds again every user it streamed since B's cut-off: their intent and profile
    vectors come from B (the batch path with B's model), and so do all later clicks'."""

    from embeddings.data.split import temporal_split
    from embeddings.models.sasrec import SASRecConfig
    from embeddings.models.zoo import make_model
    from embeddings.training.config import TrainConfig

    repo, first, events = published
    listings = tiny_week[0]
    client = repo.redis()
    early = _valid_clicks(events, listings, 8, seed=3)
    write_clicks(client, early)
    worker = StreamWorker(repo, RedisStreamSource(client, consumer="w1"), batch_size=4)
    worker.run(idle_stop_s=0.5)
    streamed = sorted(set(early["user_id"]))
    under_a = online_features(repo, streamed).set_index("user_id").loc[streamed]
    assert set(under_a["model_version"]) == {first["model_version"]}
    assert set(under_a["classifier_version"]) == {first["classifier_version"]}

    split = temporal_split(events, listings, day(6))
    cfg = SASRecConfig(item_encoder="hybrid", max_len=20, dim=16, profile_horizon=4)
    train = TrainConfig(epochs=3, batch_size=32, bf16=False, seed=7)
    layout = pl.RunLayout(tmp_path / "release-b")
    layout.model_dir.mkdir(parents=True)
    make_model("sasrec", split, listings, sasrec=cfg, train=train).fit(split).save(layout.model)
    pl.embed(pl.load_data(tiny_dir), layout, cfg=pl.EmbedConfig(cutoff=str(day(6))))
    pl.classify(pl.load_data(tiny_dir), layout)
    b = pl.publish(
        tiny_dir, repo, layout, pl.PublishConfig("test: another model", new_space="test: switch", transition_releases=0)
    )
    assert b["space_version"] == b["model_version"] != first["model_version"]
    # B's rows (as of its cut-off) are older than the streamed ones: those users keep A's newer values, all of
    # them (vectors and score), until the worker moves them to B; the others get B's at once
    kept = online_features(repo, streamed).set_index("user_id").loc[streamed]
    np.testing.assert_allclose(np.stack(kept["embedding"]), np.stack(under_a["embedding"]), atol=0)
    assert (kept["p_rent"] == under_a["p_rent"]).all() and (kept["n_events"] == under_a["n_events"]).all()
    assert set(kept["classifier_version"]) == {first["classifier_version"]}
    others = sorted(set(events[events["event_timestamp"] < day(6)]["user_id"]) - set(streamed))[:5]
    assert set(online_features(repo, others)["model_version"]) == {b["model_version"]}

    later = _valid_clicks(events, listings, 4, seed=4)
    write_clicks(client, later)
    report = worker.run(idle_stop_s=0.5)
    assert report.switched == 1 and report.release == b["model_version"]
    users = sorted(set(streamed) | set(later["user_id"]))
    got = online_features(repo, users).set_index("user_id").loc[users]
    assert set(got["model_version"]) == {b["model_version"]} and set(got["space_version"]) == {b["model_version"]}
    assert set(got["profile_model_version"]) == {b["model_version"] + "-profile"}
    assert set(got["classifier_version"]) == {b["classifier_version"]}
    want = _expected(layout.model, listings, events, pd.concat([early, later]), users)
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]), atol=1e-5)
    np.testing.assert_allclose(np.stack(got["profile_embedding"]), np.stack(want["profile_embedding"]), atol=1e-5)


def test_sigkill_at_five_random_moments_then_restart_loses_nothing_and_counts_nothing_twice(
    published, tiny_week, model
):
    """A worker killed (SIGKILL) at 5 random moments while it works through a stream, restarted each time under the
    same consumer name: in the end every event is acknowledged, every click counted once and every vector (and
    n_events) is the batch path's on the same clicks."""
    import time

    repo, _, events = published
    client = repo.redis()
    clicks = _valid_clicks(events, tiny_week[0], 240, seed=5)
    write_clicks(client, clicks)
    rng = np.random.default_rng(5)
    args = ("--flush-s", "0.2")
    kills = 0
    while kills < 5:
        before = _read_so_far(client)
        worker = _cli_worker(repo, "w1", wait=False, batch=2, extra=args)
        while _read_so_far(client) == before and worker.poll() is None:
            time.sleep(0.01)  # started: it took its first micro-batch
        time.sleep(float(rng.uniform(0.0, 0.4)))
        if worker.poll() is not None:
            break  # it finished before the moment came: nothing left to kill
        worker.kill()
        worker.wait()
        kills += 1
    assert kills == 5, "the stream ran out before the fifth kill: give it more events"
    assert status(client)["pending"] > 0 or _read_so_far(client) < len(clicks)
    code, output = _cli_worker(repo, "w1", extra=args)
    assert code == 0, output
    assert status(client) == {"length": len(clicks), "pending": 0, "dead": 0}
    users = sorted(set(clicks["user_id"]))
    want = _expected(model, tiny_week[0], events, clicks, users)
    got = online_features(repo, users).set_index("user_id").loc[users]
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]), atol=1e-5)
    np.testing.assert_allclose(np.stack(got["profile_embedding"]), np.stack(want["profile_embedding"]), atol=1e-5)
    assert (got["n_events"].to_numpy() == want["n_events"].to_numpy()).all()


def _read_so_far(client) -> int:
    groups = client.xinfo_groups(STREAM) if client.exists(STREAM) else []
    return int(groups[0].get("entries-read") or 0) if groups else 0


def test_a_new_listing_gets_vectors_from_its_lst_features_and_clicks_on_it_count(published, tiny_week, model):
    """The site publishes a listing (lst features on the listings stream), a user clicks it a moment later: the
    listing's vectors (the release's hybrid encoder, as the batch ``embed_items`` gives them) and features are
    online, the click is accepted and moves the user's vector to the batch path's; a listing breaking the contract
    goes to the listings' dead letters."""
    from embeddings.stream import LISTINGS, ListingFeed, write_listings

    repo, manifest, events = published
    listings = tiny_week[0]
    client = repo.redis()
    now = pd.Timestamp.now(tz="UTC").floor("s")
    template = listings.drop_duplicates("item_id", keep="last").iloc[0]
    new = pd.DataFrame([template, template]).reset_index(drop=True)
    new["item_id"] = ["L-new", "L-bad"]
    new["price"] = [template["price"] * 1.1, template["price"]]
    new["floor"] = [1, 9]
    new["floors_total"] = [5, 4]  # L-bad: floor above the building
    new["created_at"] = new["event_timestamp"] = now - pd.Timedelta(minutes=10)
    write_listings(client, new)
    user = str(events[events["event_timestamp"] < day(6)]["user_id"].iloc[0])
    click = _clicks([(user, "L-new", now - pd.Timedelta(minutes=2), "view")])
    write_clicks(client, click)

    feed = ListingFeed(client, consumer="w1")
    worker = StreamWorker(repo, RedisStreamSource(client, consumer="w1"), listings=feed)
    report = worker.run(idle_stop_s=0.5)
    assert (report.events, report.listings, report.dead) == (1, 1, 1)
    dead = client.xrange(f"{LISTINGS}:dead")
    assert len(dead) == 1 and b"floor" in dead[0][1][b"reason"] and dead[0][1][b"item_id"] == b"L-bad"

    catalogue = pd.concat([listings, new.iloc[[0]]], ignore_index=True)
    embedder = Embedder.from_checkpoint(model, catalogue)
    want = embedder.embed_items().set_index("item_id").loc["L-new"]
    store = repo.store()
    got = (
        store.get_online_features(
            features=store.get_feature_service("listing_profile"), entity_rows=[{"item_id": "L-new"}]
        )
        .to_df()
        .iloc[0]
    )
    np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-5)
    assert got["model_version"] == manifest["model_version"] and got["floors_total"] == 5
    assert got["price"] == pytest.approx(template["price"] * 1.1)

    so_far = pd.concat([events[events["event_timestamp"] < day(6)], click], ignore_index=True)
    so_far["event_timestamp"] = pd.to_datetime(so_far["event_timestamp"], utc=True)
    batch = embedder.embed_users(so_far, now + pd.Timedelta(minutes=1), progress=False).set_index("user_id")
    online = online_features(repo, [user]).set_index("user_id")
    np.testing.assert_allclose(online.loc[user, "embedding"], batch.loc[user, "embedding"], atol=1e-5)
    assert online.loc[user, "n_events"] == batch.loc[user, "n_events"]


def test_the_stream_on_a_redis_cluster(tiny_dir, tiny_week, model, feature_repo, redis_cluster, monkeypatch, tmp_path):
    """The same worker against a Redis Cluster (streams, the clicks store's scripts and Feast's writes routed by
    slot): streamed vectors are the batch path's, a bad event goes to the dead letters, a new listing gets its
    vector."""
    from embeddings.stream import ListingFeed, write_listings

    nodes, password = redis_cluster
    monkeypatch.setenv("REDIS_CLUSTER_NODES", nodes)
    monkeypatch.setenv("REDIS_CLUSTER_PASSWORD", password)
    repo = Repo(feature_repo.path, "redis-cluster")
    repo.redis().flushall()
    repo, manifest, events = _publish(repo, tiny_dir, tiny_week, model, tmp_path)
    listings = tiny_week[0]
    client = repo.redis()
    new = listings.drop_duplicates("item_id", keep="last").iloc[[0]].assign(item_id="L-cluster")
    now = pd.Timestamp.now(tz="UTC").floor("s")
    new["created_at"] = new["event_timestamp"] = now - pd.Timedelta(minutes=10)
    write_listings(client, new)
    clicks = pd.concat([_valid_clicks(events, listings, 12, seed=6), _clicks([("U-new", "L-cluster", now, "view")])])
    write_clicks(client, pd.concat([clicks, _clicks([("U-new", "no-such-listing", now, "view")])]))
    worker = StreamWorker(repo, RedisStreamSource(client, consumer="c1"), listings=ListingFeed(client, consumer="c1"))
    report = worker.run(idle_stop_s=0.5)
    assert (report.events, report.dead, report.listings) == (14, 1, 1)
    assert status(client) == {"length": 14, "pending": 0, "dead": 1}
    users = sorted(set(clicks["user_id"]))
    want = _expected(model, pd.concat([listings, new], ignore_index=True), events, clicks, users)
    got = online_features(repo, users).set_index("user_id").loc[users]
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]), atol=1e-5)
    assert (got["n_events"].to_numpy() == want["n_events"].to_numpy()).all()
    assert set(got["model_version"]) == {manifest["model_version"]}


def test_compaction_merges_the_per_flush_files_and_changes_no_join(published, tiny_week):
    """The worker writes one offline file per table and flush; compaction merges them per hour (one compaction at
    a time), and a point-in-time join gives the same rows before and after."""
    from embeddings.stream import COMPACTED, compact_stream_files

    repo, _, events = published
    client = repo.redis()
    clicks = _valid_clicks(events, tiny_week[0], 30, seed=7)
    write_clicks(client, clicks)
    worker = StreamWorker(repo, RedisStreamSource(client, consumer="w1"), batch_size=3, flush_s=0.0)
    worker.run(idle_stop_s=0.5)
    folder = repo.data / "offline" / "user_embeddings"
    assert len(list(folder.glob("stream-*.parquet"))) >= 5
    entity = pd.DataFrame({"user_id": sorted(set(clicks["user_id"])), "event_timestamp": pd.Timestamp.now(tz="UTC")})
    entity = entity.astype({"event_timestamp": "datetime64[us, UTC]"})
    before = historical_features(repo, entity).sort_values("user_id").reset_index(drop=True)

    client.set(f"lst_embeddings:compact:{repo.config().project}", "another-worker")
    assert compact_stream_files(repo, client, older_than_s=0) == {}  # another compaction holds the lock
    client.delete(f"lst_embeddings:compact:{repo.config().project}")
    merged = compact_stream_files(repo, client, older_than_s=0)
    assert merged["user_embeddings"] >= 5 and merged["user_preference"] >= 5
    left = list(folder.glob("stream-*.parquet"))
    assert 1 <= len(left) <= 2 and all(COMPACTED in p.name for p in left)  # one per hour (a flush may straddle one)
    after = historical_features(repo, entity).sort_values("user_id").reset_index(drop=True)
    np.testing.assert_allclose(np.stack(after["embedding"]), np.stack(before["embedding"]), atol=0)
    assert after["n_events"].tolist() == before["n_events"].tolist()
    np.testing.assert_allclose(after["p_rent"], before["p_rent"])
