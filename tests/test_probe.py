"""Probes on worlds whose answer is known by construction, their leakage, and the profile head."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import day

from embeddings.data.split import temporal_split
from embeddings.models.sasrec import SASRecConfig
from embeddings.models.zoo import make_model
from embeddings.stages.embed import PROFILE_SUFFIX, Embedder
from embeddings.stages.probe import ProbeConfig, linear_probe, run_probes, sequence_probe_data, week_probe_data
from embeddings.training.config import TrainConfig
from embeddings.training.loop import future_targets

CUTOFF = day(5)


@pytest.fixture(scope="module")
def two_kinds_world(tiny_week):
    """Users who click only rent listings, and users who click only sale ones, before and after the cut-off."""
    listings, _, _ = tiny_week
    first = listings.drop_duplicates("item_id")
    first = first[first["created_at"] < CUTOFF - pd.Timedelta(days=3)]
    by_deal = {d: first.loc[first["deal_type"] == d, "item_id"].to_numpy() for d in ("rent", "sale")}
    rng = np.random.default_rng(0)
    rows, kinds = [], {}
    for u in range(240):
        deal = "rent" if u % 2 else "sale"
        kinds[f"u{u}"] = deal
        picks = rng.choice(by_deal[deal], 8, replace=False)
        for j, item in enumerate(picks):
            when = CUTOFF + pd.Timedelta(hours=j - 5)  # 5 clicks before the cut-off, 3 after
            rows.append((f"u{u}", item, when, "view"))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp", "event_type"])
    return listings, events, kinds


def test_a_rent_only_user_is_probed_as_rent_and_a_random_vector_gives_chance(two_kinds_world):
    listings, events, kinds = two_kinds_world
    data = week_probe_data(events, listings, CUTOFF)
    y = data.labels["rent_sale"]
    assert list(y) == [kinds[u] for u in data.user_ids]  # the label is what they did after the cut-off
    rng = np.random.default_rng(1)
    knows = np.array([[1.0, 0.0] if kinds[u] == "rent" else [0.0, 1.0] for u in data.user_ids])
    knows = knows + rng.normal(0, 0.05, knows.shape)
    random = rng.normal(size=(len(data.user_ids), 16))
    report = run_probes(data, {"knows": knows, "random": random}, cfg=ProbeConfig(folds=4))
    row = next(r for r in report.rows if r["probe"] == "rent_sale")
    assert row["knows"] > 0.99
    assert abs(row["random"] - 0.5) < 0.12
    assert row["history_aggregates"] > 0.99  # the rent share of the history says it too
    assert row["best_ours"] == "knows" and row["margin"] == pytest.approx(row["knows"] - row[row["best_baseline"]])


def test_retrieval_recall_is_one_for_a_vector_that_points_at_the_future(two_kinds_world):
    listings, events, _ = two_kinds_world
    data = week_probe_data(events, listings, CUTOFF)
    items = np.eye(len(data.item_ids))  # one axis per listing
    target = np.stack([items[f].sum(0) for f in data.futures])  # exactly the listings clicked after
    report = run_probes(data, {"oracle": target}, items, ProbeConfig(folds=4, ks=(3, 10)))
    recall = {r["metric"]: r for r in report.rows if r["probe"] == "future listings"}
    assert recall["recall@3"]["oracle"] == pytest.approx(1.0)
    assert recall["recall@10"]["oracle"] == pytest.approx(1.0)
    assert recall["recall@3"]["popular"] < 0.5


def test_no_label_crosses_the_cut_off(two_kinds_world):
    """Features (histories, baselines) come from before the cut-off only, labels from after it only."""
    listings, events, _ = two_kinds_world
    base = week_probe_data(events, listings, CUTOFF)
    after = events["event_timestamp"] >= CUTOFF
    flipped = events.copy()  # every click after the cut-off moves to a listing of the other deal type
    deal = listings.drop_duplicates("item_id").set_index("item_id")["deal_type"]
    pool = {d: deal.index[deal == d].to_numpy() for d in ("rent", "sale")}
    other = {"rent": "sale", "sale": "rent"}
    flipped.loc[after, "item_id"] = [pool[other[deal[i]]][k % 5] for k, i in enumerate(events.loc[after, "item_id"])]
    moved = week_probe_data(flipped, listings, CUTOFF)
    for h, g in zip(base.histories, moved.histories, strict=True):
        np.testing.assert_array_equal(h, g)
    for name in base.baselines:
        a, b = base.baselines[name], moved.baselines[name]
        np.testing.assert_array_equal(
            a.toarray() if hasattr(a, "toarray") else a, b.toarray() if hasattr(b, "toarray") else b
        )
    assert (base.labels["rent_sale"] != moved.labels["rent_sale"]).all()

    earlier = events.copy()  # and changing the history changes no label
    earlier.loc[~after, "item_id"] = earlier.loc[~after, "item_id"].iloc[::-1].to_numpy()
    again = week_probe_data(earlier, listings, CUTOFF)
    for name in base.labels:
        assert list(base.labels[name]) == list(again.labels[name])


def test_sequence_probe_data_keeps_the_tail_out_of_the_histories():
    events = pd.DataFrame(
        {
            "user_id": np.repeat(["a", "b"], 10),
            "item_id": [f"i{k}" for k in range(10)] + [f"i{k}" for k in range(10, 20)],
            "event_timestamp": pd.Timestamp("2000-01-01", tz="UTC") + pd.to_timedelta(np.tile(np.arange(10), 2), "s"),
            "event_type": "view",
        }
    )
    data, history_events = sequence_probe_data(events, tail=0.2)
    assert [len(h) for h in data.histories] == [8, 8] and [len(f) for f in data.futures] == [2, 2]
    assert set(history_events["item_id"]) == {f"i{k}" for k in (*range(8), *range(10, 18))}


def test_linear_probe_is_chance_on_noise_and_high_on_signal():
    rng = np.random.default_rng(0)
    y = np.array(["a", "b", "c"] * 100)
    noise = rng.normal(size=(300, 8))
    signal = noise + 3 * (y[:, None] == np.array(["a", "b", "c"])[None, :]).repeat(3, 1)[:, :8]
    assert abs(linear_probe(noise, y, folds=3) - 0.5) < 0.1
    assert linear_probe(signal, y, folds=3) > 0.95


def test_future_targets_by_hand():
    targets = torch.tensor([[5, 6, 7, 0], [9, 0, 0, 0]])
    seen = {(b, t): set() for b in range(2) for t in range(4)}
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        out = future_targets(targets, 2, g)
        for b in range(2):
            for t in range(4):
                seen[b, t].add(int(out[b, t]))
    assert seen[0, 0] == {5, 6} and seen[0, 1] == {6, 7} and seen[0, 2] == {7} and seen[0, 3] == {0}
    assert seen[1, 0] == {9} and seen[1, 1] == {0}
    assert (future_targets(targets, 1, g) == targets).all()  # horizon 1 is the next item


def test_intent_and_profile_vectors_come_from_one_checkpoint(tiny_week, tmp_path):
    listings, events, _ = tiny_week
    split = temporal_split(events, listings)
    rec = make_model(
        "sasrec",
        split,
        listings,
        sasrec=SASRecConfig(item_encoder="hybrid", max_len=20, dim=16, profile_horizon=4),
        train=TrainConfig(epochs=2, batch_size=32, bf16=False),
    ).fit(split)
    path = rec.save(tmp_path / "model.pt")
    assert "profile" in rec.reference and rec.reference["profile"]["norm_median"] > 0
    embedder = Embedder.from_checkpoint(path, listings)
    users = embedder.embed_users(events, split.cutoff, progress=False)
    intent, profile = Embedder.split_heads(users)
    assert list(intent["user_id"]) == list(profile["user_id"])
    assert (profile["model_version"] == intent["model_version"] + PROFILE_SUFFIX).all()
    a, b = np.stack(intent["embedding"]), np.stack(profile["embedding"])
    assert not np.allclose(a, b)  # the head was trained away from the identity it starts at
    clicks = events[(events["user_id"] == intent["user_id"].iloc[0]) & (events["event_timestamp"] < split.cutoff)]
    clicks = clicks.sort_values("event_timestamp").drop_duplicates("item_id")["item_id"].tolist()
    np.testing.assert_allclose(embedder.embed_sequence(clicks, head="profile"), b[0], atol=1e-5)
    np.testing.assert_allclose(embedder.embed_sequence(clicks), a[0], atol=1e-5)
