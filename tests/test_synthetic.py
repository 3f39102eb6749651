import numpy as np
import pandas as pd
from conftest import TINY

from embeddings.data.split import build_sequences
from embeddings.data.synthetic import WeekConfig, generate_week


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
    week_end = TINY.start + pd.Timedelta(days=7)
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
    _, seqs = build_sequences(events, item_ids)
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


def test_written_in_blocks_by_two_processes_equals_the_week_in_memory(tmp_path):
    """write_week streams blocks of users (here 3 blocks, 2 processes) into one file or day partitions; both
    read back as generate_week's tables, so the files do not depend on the number of processes."""
    from embeddings.data.contract import read_parquet
    from embeddings.data.synthetic import write_week

    cfg = WeekConfig(users=250, listings=300, days=7, seed=5, block_users=100)
    listings, events, labels = generate_week(cfg)
    assert events["user_id"].nunique() > 200 and labels["user_id"].is_unique and len(labels) == 250
    one = write_week(cfg, tmp_path / "one", workers=1)
    parts = write_week(cfg, tmp_path / "parts", partition_by_day=True, workers=2)
    assert len(list(parts["events"].glob("day=*/part-2.parquet"))) > 0  # a file per block and day
    key = ["user_id", "event_timestamp", "event_type"]
    for written in (one, parts):
        back = read_parquet(written["events"])[list(events.columns)].sort_values(key, kind="stable")
        pd.testing.assert_frame_equal(back.reset_index(drop=True), events.sort_values(key).reset_index(drop=True))
        pd.testing.assert_frame_equal(read_parquet(written["labels"]), labels)
        pd.testing.assert_frame_equal(read_parquet(written["listings"]), listings)
    other_blocks = generate_week(WeekConfig(users=250, listings=300, days=7, seed=5, block_users=50))[1]
    assert not other_blocks.equals(events)  # the block size is part of the world's definition


def test_a_large_catalogue_keeps_the_shape_of_the_week():
    """Each click weighs a fixed number of candidates, not the whole pool: a 100x larger catalogue with the same
    users gives a week of the same size, and its sessions still refine around the previous click."""
    small = generate_week(WeekConfig(users=200, listings=500, seed=1))
    large_listings, large, _ = generate_week(WeekConfig(users=200, listings=50_000, seed=1))
    assert 0.8 < len(large) / len(small[1]) < 1.25
    first = large_listings.drop_duplicates("item_id").set_index("item_id")
    _, seqs = build_sequences(large, first.index.to_numpy())
    district = first["district"].to_numpy()
    same = np.concatenate([district[s[1:]] == district[s[:-1]] for s in seqs if len(s) > 1])
    assert same.mean() > 0.5  # ~1/60 by chance: 60 districts


def test_consecutive_weeks_of_one_world(tmp_path):
    """demo-data --weeks: each week's folder passes the contract; users return and new ones arrive; listings are
    published and withdrawn all along; some users switch intent and their clicks follow; one week is unchanged."""
    from embeddings.cli import main
    from embeddings.data import load_data

    assert main(["demo-data", "--weeks", "3", "--users", "1500", "--listings", "1500", "--out", str(tmp_path)]) == 0
    weeks = [load_data(tmp_path / f"week-{k}") for k in (1, 2, 3)]
    labels = [pd.read_parquet(tmp_path / f"week-{k}" / "labels.parquet") for k in (1, 2, 3)]
    users = [set(w.events["user_id"]) for w in weeks]
    for before, now in zip(users, users[1:], strict=False):
        assert len(now & before) > 0.4 * len(now) and len(now - before) > 0.1 * len(now)  # returning and new
    ends = [w.events["event_timestamp"].max() for w in weeks]
    assert ends[0] < weeks[1].events["event_timestamp"].min() and ends[1] < weeks[2].events["event_timestamp"].min()
    listings = [set(w.listings["item_id"]) for w in weeks]
    assert listings[0] < listings[1] < listings[2]  # new listings every week, earlier ones kept
    clicked = [set(w.events["item_id"]) for w in weeks]
    assert len(clicked[0] - clicked[2]) > 0  # some of week 1's listings get no click by week 3 (withdrawn)

    week1_end = weeks[0].events["event_timestamp"].min().floor("D") + pd.Timedelta(days=7)
    at = labels[2]["switched_at"]
    switched = labels[2][at.notna() & (at >= week1_end) & (at < ends[1])]  # in week 2: week 3 is all after it
    changed = (
        labels[0].set_index("user_id").loc[switched["user_id"], "intent"] != switched.set_index("user_id")["intent"]
    )
    assert changed.all() and len(switched) > 20  # the label follows the switch
    rent = weeks[2].listings.drop_duplicates("item_id").set_index("item_id")["deal_type"].eq("rent")
    late = weeks[2].events[weeks[2].events["user_id"].isin(switched["user_id"])]
    share = late["item_id"].map(rent).groupby(late["user_id"]).mean()
    now_rent = switched.set_index("user_id")["intent"].eq("rent").loc[share.index]
    assert (share[now_rent] > 0.5).mean() > 0.7 and (share[~now_rent] < 0.5).mean() > 0.7  # clicks follow the switch

    one = WeekConfig(users=200, listings=300, seed=4, start="2026-11-01")
    assert one.weeks == 1 and "switched_at" not in generate_week(one)[2]
