import numpy as np
import pandas as pd
import pytest

from embeddings.data.movielens import load_user_item_text
from embeddings.data.split import leave_last_out, temporal_split
from embeddings.errors import InputError
from embeddings.metrics import hit_rate, ndcg, sampled_ranks, target_ranks

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def _events(rows):
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_timestamp": [T0 + pd.Timedelta(hours=r[2]) for r in rows],
            "event_type": "view",
        }
    )


def test_ranks_hr_ndcg_by_hand():
    scores = np.array([[0.9, 0.5, 0.1, 0.3], [0.2, 0.2, 0.8, 0.1], [0.0, 1.0, -np.inf, 2.0]])
    ranks = target_ranks(scores, np.array([1, 1, 2]))
    # row 0: one item above -> rank 1; row 1: item 2 above and a tie with item 0 -> rank 2 (ties count against)
    assert ranks.tolist() == [1.0, 2.0, np.inf]
    assert hit_rate(ranks, 2) == pytest.approx(1 / 3)
    assert ndcg(ranks, 10) == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / 3)
    # excluding seen items: row 0 saw item 0, so the target moves to the top
    ranks = target_ranks(scores, np.array([1, 1, 3]), [np.array([0]), np.array([], int), np.array([1])])
    assert ranks.tolist() == [0.0, 2.0, 0.0]
    assert ndcg(ranks, 1) == pytest.approx(2 / 3)


def test_ranks_equal_masking_seen_items_then_counting():
    """The one-pass ranks against the definition: seen items to -inf, then items above plus ties; with ties,
    unscorable items and targets, and histories that repeat an item."""
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (300, 40)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    targets = rng.integers(0, 40, 300)
    histories = [rng.choice(np.setdiff1d(np.arange(40), [t]), rng.integers(0, 12)) for t in targets]
    histories = [np.concatenate([h, h[:2]]) for h in histories]  # repeats
    masked = scores.copy()
    masked[np.repeat(np.arange(300), [len(h) for h in histories]), np.concatenate(histories)] = -np.inf
    t = masked[np.arange(300), targets][:, None]
    want = np.where(np.isfinite(t[:, 0]), (masked > t).sum(1) + (masked == t).sum(1) - 1, np.inf)
    np.testing.assert_array_equal(target_ranks(scores, targets, histories), want)
    assert np.isinf(want).any() and np.isfinite(want).any()


def test_constant_scores_rank_last():
    ranks = target_ranks(np.zeros((2, 5)), np.array([0, 4]))
    assert ranks.tolist() == [4.0, 4.0]


def test_sampled_ranks_are_among_negatives_only():
    scores = np.tile(np.arange(300, dtype=float), (2, 1))
    ranks = sampled_ranks(scores, np.array([299, 0]), [np.array([5]), np.array([], int)], n_negatives=100)
    assert ranks[0] == 0 and ranks[1] == 100


def test_leave_last_out_by_hand():
    ev = _events(
        [("a", "x", 1), ("a", "y", 2), ("a", "x", 3), ("a", "z", 4), ("a", "w", 5), ("b", "x", 1), ("b", "y", 2)]
    )
    s = leave_last_out(ev)
    assert list(s.item_ids) == ["w", "x", "y", "z"]
    assert list(s.user_ids) == ["a"] and s.meta["dropped_short_users"] == 1  # b has only 2 distinct items
    assert s.train[0].tolist() == [1, 2]  # x, y (the repeated x is folded into its first click)
    assert s.valid.targets.tolist() == [3] and s.test.targets.tolist() == [0]
    assert s.test.histories[0].tolist() == [1, 2, 3]


def test_leave_last_out_can_drop_each_users_last_items():
    ev = _events(
        [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("a", "w", 4), ("b", "x", 1), ("b", "y", 2), ("b", "z", 3)]
    )
    s = leave_last_out(ev, drop_last=1)  # a: x y z (w dropped); b: x y, too short after the drop
    assert list(s.user_ids) == ["a"] and s.meta["dropped_short_users"] == 1
    assert s.train[0].tolist() == [1] and s.valid.targets.tolist() == [2] and s.test.targets.tolist() == [3]
    assert s.test.histories[0].tolist() == [1, 2]
    assert s.n_items == 4  # the dropped item stays in the catalogue: rankings run over the same items
    with pytest.raises(ValueError, match="drop_last"):
        leave_last_out(ev, drop_last=-1)


def test_temporal_split_by_hand():
    ev = _events([("a", "x", 1), ("a", "y", 2), ("a", "x", 30), ("a", "z", 31), ("b", "z", 40), ("c", "y", 3)])
    listings = pd.DataFrame({"item_id": ["x", "y", "z"], "created_at": [T0, T0, T0 + pd.Timedelta(hours=25)]})
    s = temporal_split(ev, listings.assign(event_timestamp=listings["created_at"]), cutoff=T0 + pd.Timedelta(hours=24))
    a = list(s.user_ids).index("a")
    # a's first click after the cut-off is x, already seen: the test target is z, a new listing, and it is cold
    assert s.test.users.tolist() == [a] and s.test.targets.tolist() == [2] and s.test.cold.tolist() == [True]
    assert s.test.histories[0].tolist() == [0, 1]
    assert s.train[a].tolist() == [0] and s.valid.targets.tolist() == [1]  # last pre-cut-off item validates
    assert s.meta["test_users_without_history"] == 1  # b clicked only after the cut-off
    assert s.available.tolist() == [True, True, False]


def test_temporal_split_never_trains_on_the_future(tiny_week):
    listings, events, _ = tiny_week
    s = temporal_split(events, listings)
    before = events[events["event_timestamp"] < s.cutoff]
    index = pd.Index(s.item_ids)
    for u, seq in enumerate(s.train):
        allowed = set(index.get_indexer(before.loc[before["user_id"] == s.user_ids[u], "item_id"]))
        assert set(seq.tolist()) <= allowed


def test_user_item_text_loader(tmp_path):
    path = tmp_path / "ml.txt"
    path.write_text("1 10\n1 11\n2 10\n1 12\n")
    ev = load_user_item_text(path)
    assert ev.groupby("user_id")["item_id"].apply(list).to_dict() == {"1": ["10", "11", "12"], "2": ["10"]}
    u1 = ev[ev["user_id"] == "1"]["event_timestamp"]
    assert u1.is_monotonic_increasing and u1.is_unique


def test_sampled_variant_is_labelled_and_easier(tiny_week):
    from embeddings.models.base import Popularity
    from embeddings.stages.evaluate import evaluate

    listings, events, _ = tiny_week
    split = temporal_split(events, listings)
    m = evaluate(Popularity().fit(split), split.test, sampled=True)
    assert {"hr@10", "sampled100_hr@10", "sampled100_ndcg@10"} <= set(m)
    assert m["sampled100_hr@10"] >= m["hr@10"]


def test_sequences_are_flat_arrays_that_read_like_a_list():
    from embeddings.data.split import Sequences, build_sequences

    lists = [np.array([3, 1, 4]), np.array([], dtype=np.int64), np.array([1, 5]), np.array([9])]
    seqs = Sequences.of(lists)
    assert len(seqs) == 4 and [s.tolist() for s in seqs] == [s.tolist() for s in lists]
    assert seqs[2].tolist() == [1, 5] and seqs.lengths.tolist() == [3, 0, 2, 1]
    assert [s.tolist() for s in seqs[np.array([2, 0])]] == [[1, 5], [3, 1, 4]]  # a subset shares the items
    assert [s.tolist() for s in seqs.trim(head=1, tail=1)] == [[1], [], [], []]
    assert seqs[np.array([0, 2])].last(2).tolist() == [1, 1] and seqs.flat().tolist() == [3, 1, 4, 1, 5, 9]
    # built from events: users sorted by id, first touch order, a tie in time keeps the file's order
    ev = _events([("b", "x", 2), ("a", "y", 1), ("b", "y", 1), ("b", "x", 3), ("a", "z", 1), ("a", "x", 0)])
    users, built = build_sequences(ev, np.array(["x", "y", "z"], dtype=object))
    assert users.tolist() == ["a", "b"] and [s.tolist() for s in built] == [[0, 1, 2], [1, 0]]
    with pytest.raises(InputError, match="1 events point at items outside"):
        build_sequences(ev, np.array(["x", "y"], dtype=object))
    users, built = build_sequences(ev, np.array(["x", "y"], dtype=object), skip_unknown=True)
    assert [s.tolist() for s in built] == [[0, 1], [1, 0]]
