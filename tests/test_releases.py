"""Compatible releases through real Feast publishes: a consumer's model fitted on one release keeps working on the
next, a space change needs a declared reason, both spaces are served during a transition, and point-in-time rows
across retrains come in the pinned space."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import day, on_redis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from embeddings import pipeline as pl
from embeddings.cli import main
from embeddings.data import load_data
from embeddings.data.split import temporal_split
from embeddings.errors import ChecksFailed
from embeddings.feature_store import historical_features, online_features
from embeddings.models.sasrec import SASRecConfig
from embeddings.models.zoo import make_model
from embeddings.release import Release, release_dir
from embeddings.stages.classify import preference_labels
from embeddings.training.config import TrainConfig

CONFIG = SASRecConfig(item_encoder="hybrid", max_len=20, dim=16, profile_horizon=8)


@pytest.fixture(scope="module")
def models(tiny_dir, tmp_path_factory):
    """Four retrains of one hybrid model on the same week, seeds 0-3 (the gentlest retrain there is)."""
    data = load_data(tiny_dir)
    split = temporal_split(data.events, data.listings)
    folder = tmp_path_factory.mktemp("releases")
    paths = []
    for seed in range(4):
        train = TrainConfig(epochs=20, batch_size=32, bf16=False, seed=seed)
        model = make_model("sasrec", split, data.listings, sasrec=CONFIG, train=train)
        paths.append(model.fit(split).save(folder / f"model-{seed}.pt"))
    return paths


def _run(tiny_dir, models, k: int, folder, cutoff=None) -> pl.RunLayout:
    """A run folder of model ``k`` as the job leaves it: model, vectors as of ``cutoff``, scores."""
    data = load_data(tiny_dir)
    layout = pl.RunLayout(folder / f"run-{k}-{cutoff or 'default'}")
    layout.model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(models[k], layout.model)
    pl.embed(data, layout, cfg=pl.EmbedConfig(cutoff=str(cutoff) if cutoff else None))
    pl.classify(data, layout)
    return layout


def _online(repo, users: list[str], service: str = "user_profile") -> pd.DataFrame:
    return online_features(repo, users, service).set_index("user_id").loc[users]


def _labels(tiny_dir, cutoff) -> pd.Series:
    data = load_data(tiny_dir)
    return preference_labels(data.events, data.listings, cutoff).set_index("user_id")["label"]


def test_a_consumer_model_survives_a_retrain(tiny_dir, models, feature_repo, tmp_path):
    """Release 0 published, a consumer fits a classifier on its online vectors; release 1 (same week, another
    seed) published: the consumer's unchanged model on the new online vectors keeps its ROC-AUC, the vectors say
    they are in release 0's space, and the model's own vectors are in their views."""
    first = pl.publish(tiny_dir, feature_repo, _run(tiny_dir, models, 0, tmp_path))
    assert first["space_version"] == first["model_version"]
    labels = _labels(tiny_dir, day(6))
    before = _online(feature_repo, list(labels.index.astype(str)))
    users = [u for u in labels.index if before.loc[u, "embedding"] is not None]
    order = np.random.default_rng(0).permutation(len(users))
    fit, test = [users[i] for i in order[: len(users) // 2]], [users[i] for i in order[len(users) // 2 :]]
    consumer = LogisticRegression(max_iter=2000).fit(np.stack(before.loc[fit, "embedding"]), labels[fit])

    def auc(frame: pd.DataFrame, column: str = "embedding") -> float:
        return roc_auc_score(labels[test], consumer.predict_proba(np.stack(frame.loc[test, column]))[:, 1])

    retrained = _run(tiny_dir, models, 1, tmp_path)
    second = pl.publish(tiny_dir, feature_repo, retrained)  # no drift reason needed: drift is pinned vs pinned
    report = json.loads((retrained.validation_dir / "checks.json").read_text())
    assert report["figures"]["same_space"] is True and "domain_classifier_auc" in report["figures"]
    after = _online(feature_repo, test)
    native = _online(feature_repo, test, "user_native")
    raw = auc(native, "native_embedding")
    print(f"consumer AUC: release 0 {auc(before):.3f}, release 1 pinned {auc(after):.3f}, unmapped {raw:.3f}")
    assert second["model_version"] != first["model_version"]
    assert set(after["space_version"]) == {first["model_version"]}
    assert set(after["model_version"]) == {second["model_version"]}
    assert auc(after) >= 0.95 * auc(before)
    assert second["release"]["compat"]["consumer_auc_ratio"] >= 0.95  # the gate measured the same
    assert set(native["model_version"]) == {second["model_version"]}
    assert not np.allclose(np.stack(native["native_embedding"]), np.stack(after["embedding"]))
    # the release (model, map, record) is in the repo, and the views' tags name the chain
    folder = release_dir(feature_repo.data, second["model_version"])
    release = Release.load(folder)
    assert (folder / "model.pt").exists() and release.chain == (second["model_version"], first["model_version"])
    assert set(release.maps) == {"intent", "profile"}
    view = feature_repo.store().get_feature_view("user_embedding")
    assert view.tags["space_version"] == first["model_version"]
    assert view.tags["space_chain"] == f"{second['model_version']},{first['model_version']}"


def test_a_space_change_without_a_declared_reason_is_refused(tiny_dir, models, feature_repo, tmp_path, capsys):
    """Release 1 whose checkpoint is gone cannot be mapped into release 0's space: its publish is refused by the
    compatibility suite (nothing written, not even with --allow-drift), and goes through with --new-space, whose
    reason the manifest records."""
    pl.publish(tiny_dir, feature_repo, _run(tiny_dir, models, 0, tmp_path))
    layout = _run(tiny_dir, models, 1, tmp_path)
    layout.model.unlink()  # the checkpoint is lost: no map from its space can be fitted
    argv = ["publish", "--run", str(layout.root), "--data", str(tiny_dir), "--repo", str(feature_repo.path)]
    assert main([*argv, "--allow-drift", "not enough"]) == 4
    out = capsys.readouterr()
    assert "FAILED [compatibility]" in out.out and "space_kept" in out.out and "declare a new space" in out.err
    assert len(feature_repo.manifests()) == 1
    with pytest.raises(ChecksFailed, match="declare a new space"):
        pl.publish(tiny_dir, feature_repo, layout)
    assert main([*argv, "--new-space", "checkpoint of release 0 lost"]) == 0
    manifest = feature_repo.latest_run()
    assert manifest["space_version"] == manifest["model_version"]  # no map to the old space: it stops now
    assert manifest["release"]["new_space_reason"] == "checkpoint of release 0 lost"
    online = _online(feature_repo, [str(u) for u in _labels(tiny_dir, day(6)).index[:5]])
    assert set(online["space_version"]) == {manifest["model_version"]}


@pytest.fixture(params=["local", "redis"])
def target_repo(request, feature_repo, monkeypatch):
    """The scratch repo on SQLite, and on a real Redis."""
    if request.param == "local":
        return feature_repo
    return on_redis(feature_repo, request.getfixturevalue("redis_server"), monkeypatch)


def test_both_spaces_are_served_during_a_transition_and_point_in_time_rows_stay_pinned(
    tiny_dir, models, target_repo, tmp_path
):
    """Release 0 (day 4), release 1 declares a new space (day 5): for two releases the pinned views keep release
    0's space and the next-space views carry release 1's; release 3 (after the window) switches the pinned views
    to release 1's space and the next-space views go empty. Point-in-time rows of every run come in the space
    that was pinned when the run was published."""
    cutoffs = [day(4), day(5), day(6), day(6) + pd.Timedelta(hours=12)]
    days = pl.PublishConfig(allow_drift="test: days of one week")
    manifests = [pl.publish(tiny_dir, target_repo, _run(tiny_dir, models, 0, tmp_path, cutoffs[0]), days)]
    declared = pl.PublishConfig(allow_drift=days.allow_drift, new_space="the profile head changed the vectors")
    manifests.append(pl.publish(tiny_dir, target_repo, _run(tiny_dir, models, 1, tmp_path, cutoffs[1]), declared))
    s0, s1 = manifests[0]["model_version"], manifests[1]["model_version"]
    first = pd.read_parquet(target_repo.run_file("user_embeddings", manifests[0]["run_id"]))
    users = [str(u) for u in first["user_id"][:20]]  # embedded by every run (clicks before day 4)
    for k in (2, 3):
        pinned, upcoming = _online(target_repo, users), _online(target_repo, users, "user_next_space")
        assert set(pinned["space_version"]) == {s0}, k
        assert set(upcoming["next_space_version"]) == {s1}, k
        assert all(v is not None and len(v) == CONFIG.dim for v in upcoming["next_space_embedding"])
        manifests.append(pl.publish(tiny_dir, target_repo, _run(tiny_dir, models, k, tmp_path, cutoffs[k]), days))
    assert [m["release"]["transition_left"] for m in manifests] == [0, 2, 1, 0]
    assert manifests[3]["space_version"] == s1 and manifests[3]["release"]["chain"][-1] == s1
    pinned, upcoming = _online(target_repo, users), _online(target_repo, users, "user_next_space")
    assert set(pinned["space_version"]) == {s1}
    assert upcoming["next_space_embedding"].isna().all() and upcoming["next_space_version"].isna().all()
    assert manifests[2]["release"]["compat"]["consumer_auc_ratio"] >= 0.95  # release 2 kept release 0's consumers

    entity = pd.DataFrame(
        {"user_id": [users[0]] * 4, "event_timestamp": [c + pd.Timedelta(minutes=30) for c in cutoffs]}
    )
    rows = historical_features(target_repo, entity).sort_values("event_timestamp")
    assert list(rows["space_version"]) == [s0, s0, s0, s1]
    assert list(rows["model_version"]) == [m["model_version"] for m in manifests]
    for row, manifest in zip(rows.itertuples(), manifests, strict=True):  # each row: its run's published vector
        published = pd.read_parquet(target_repo.run_file("user_embeddings", manifest["run_id"]))
        vector = published.set_index("user_id").loc[users[0], "embedding"]
        np.testing.assert_allclose(row.embedding, vector, rtol=1e-6)


def test_training_against_the_latest_release_takes_its_item_vectors_from_the_repo(
    tiny_dir, models, feature_repo, tmp_path
):
    """``[train] compat_weight``: the job trains the next model with the compatibility loss against the latest
    published release's item vectors (its checkpoint in the repo); before any release it trains without."""
    data, train = load_data(tiny_dir), TrainConfig(epochs=2, batch_size=32, bf16=False, compat_weight=1.0)
    first = pl.train(
        data, pl.RunLayout(tmp_path / "a"), pl.DataConfig(tiny_dir), CONFIG, train, feature_store=feature_repo
    )
    assert first.model.aligner is None
    pl.publish(tiny_dir, feature_repo, _run(tiny_dir, models, 0, tmp_path))
    second = pl.train(
        data, pl.RunLayout(tmp_path / "b"), pl.DataConfig(tiny_dir), CONFIG, train, feature_store=feature_repo
    )
    assert second.model.aligner is not None and second.model.aligner.out_features == CONFIG.dim
