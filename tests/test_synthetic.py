import numpy as np
import pandas as pd

from embeddings.split import build_sequences
from embeddings.synthetic import WEEK_START, WeekConfig, generate_week


def test_deterministic_by_seed(tiny_week):
    again = generate_week(WeekConfig(users=300, listings=400, days=7, seed=3))
    for a, b in zip(tiny_week, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    other = generate_week(WeekConfig(users=300, listings=400, days=7, seed=4))
    assert not other[1].equals(tiny_week[1])


def test_intent_is_only_in_labels(tiny_week):
    listings, events, labels = tiny_week
    assert list(events.columns) == ["user_id", "item_id", "event_timestamp", "event_type"]
    assert set(labels["intent"]) == {"rent", "sale", "both"}
    assert set(events["user_id"]) <= set(labels["user_id"])


def test_market_is_plausible(tiny_week):
    listings, events, _ = tiny_week
    first = listings.drop_duplicates("item_id")
    median = first.groupby("deal_type")["price"].median()
    assert median["sale"] > 100 * median["rent"]
    rent = first[first["deal_type"] == "rent"]
    assert np.corrcoef(np.log(rent["area_m2"]), np.log(rent["price"]))[0, 1] > 0.5
    assert first["city"].value_counts().iloc[0] > 2 * first["city"].value_counts().iloc[-1]  # Zipf markets
    assert (listings.groupby("item_id").size() > 1).any()  # price drops make second versions
    week_end = WEEK_START + pd.Timedelta(days=7)
    assert (first["created_at"] >= week_end - pd.Timedelta(days=1)).sum() > 0  # cold-start listings


def test_clicks_only_on_live_listings_and_views_dominate(tiny_week):
    listings, events, _ = tiny_week
    created = listings.drop_duplicates("item_id").set_index("item_id")["created_at"]
    assert (events["event_timestamp"] >= events["item_id"].map(created)).all()
    counts = events["event_type"].value_counts()
    assert counts["view"] > 5 * counts["favorite"] > 0 and counts["favorite"] > counts["contact"] > 0
    hours = events["event_timestamp"].dt.hour
    assert (hours.between(19, 22)).mean() > 3 * (hours.between(2, 5)).mean()


def test_consecutive_clicks_refine_the_search(tiny_week):
    listings, events, _ = tiny_week
    first = listings.drop_duplicates("item_id").set_index("item_id")
    item_ids = first.index.to_numpy()
    _, seqs, _ = build_sequences(events, item_ids)
    price, district = np.log(first["price"].to_numpy()), first["district"].to_numpy()
    same_district, shuffled_same = [], []
    rng = np.random.default_rng(0)
    gaps, random_gaps = [], []
    for s in seqs:
        if len(s) < 3:
            continue
        gaps += list(np.abs(np.diff(price[s])))
        perm = s[rng.permutation(len(s))]
        random_gaps += list(np.abs(np.diff(price[perm])))
        same_district += list(district[s[1:]] == district[s[:-1]])
        shuffled_same += list(district[perm[1:]] == district[perm[:-1]])
    # the order carries signal: neighbours in time are closer than the same user's clicks in random order
    assert np.median(gaps) < 0.7 * np.median(random_gaps)
    assert np.mean(same_district) > np.mean(shuffled_same) + 0.05
