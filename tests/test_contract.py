import numpy as np
import pandas as pd
import pytest

from embeddings.cli import main
from embeddings.data.contract import ContractError, load_dataset
from embeddings.io import write_parquet


def _write(tmp_path, listings, events):
    write_parquet(listings, tmp_path / "listings.parquet")
    write_parquet(events, tmp_path / "events.parquet")
    return tmp_path


def _broken(tmp_path, tiny_week, fix_listings=None, fix_events=None):
    listings, events, _ = tiny_week
    listings, events = listings.copy(), events.copy()
    if fix_listings:
        listings = fix_listings(listings)
    if fix_events:
        events = fix_events(events)
    return _write(tmp_path, listings, events)


def _set(df, column, rows, value):
    df[column] = df[column].astype(object)
    df.loc[df.index[:rows], column] = value
    return df


CASES = {
    "missing column": (None, lambda e: e.drop(columns="event_type"), "events.parquet", "event_type", "missing column"),
    "null user_id": (None, lambda e: _set(e, "user_id", 3, None), "events.parquet", "user_id", "3 rows"),
    "unknown item_id": (None, lambda e: _set(e, "item_id", 4, "NOPE"), "events.parquet", "item_id", "4 rows"),
    "unparsable timestamp": (
        None,
        lambda e: e.assign(event_timestamp=e["event_timestamp"].astype(str).where(e.index >= 2, "yesterday-ish")),
        "events.parquet",
        "event_timestamp",
        "2 rows",
    ),
    "wrong deal_type": (lambda x: _set(x, "deal_type", 5, "lease"), None, "listings.parquet", "deal_type", "5 rows"),
    "unknown event_type": (None, lambda e: _set(e, "event_type", 2, "share"), "events.parquet", "event_type", "2 rows"),
    "negative price": (lambda x: _set(x, "price", 1, -10.0), None, "listings.parquet", "price", "1 row"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_input_is_named_and_nothing_is_written(tmp_path, tiny_week, capsys, case):
    fix_l, fix_e, file, column, count = CASES[case]
    data = _broken(tmp_path / "data", tiny_week, fix_l, fix_e)
    with pytest.raises(ContractError) as err:
        load_dataset(data)
    msg = str(err.value)
    assert file in msg and f"'{column}'" in msg and count in msg
    if case in ("unknown item_id", "wrong deal_type", "unparsable timestamp"):
        assert "e.g." in msg  # a few examples are shown
    if case == "wrong deal_type":  # a value outside the column's domain: the message names the allowed ones
        assert "values outside the allowed ['rent', 'sale']" in msg and "'lease'" in msg
    if case == "unknown event_type":
        assert "values outside the allowed ['view', 'favorite', 'contact']" in msg and "empty" not in msg

    out = tmp_path / "out"
    rc = main(["evaluate", "--data", str(data), "--model", "popular", "--json", str(out / "m.json")])
    assert rc == 2
    assert file in capsys.readouterr().err
    assert not out.exists()
    rc = main(["train", "--data", str(data), "--out", str(out / "model"), "--epochs", "1"])
    assert rc == 2 and not out.exists()


def test_valid_data_loads_with_contract_types(tiny_dir):
    listings, events = load_dataset(tiny_dir)
    assert str(events["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert events["item_id"].isin(listings["item_id"]).all()
    assert set(events["event_type"]) <= {"view", "favorite", "contact"}


def test_naive_timestamps_are_taken_as_utc(tmp_path, tiny_week):
    listings, events, _ = tiny_week
    naive = events.assign(event_timestamp=events["event_timestamp"].dt.tz_convert(None))
    _, loaded = load_dataset(_write(tmp_path, listings, naive))
    pd.testing.assert_series_equal(loaded["event_timestamp"], events["event_timestamp"].astype("datetime64[us, UTC]"))


def test_atomic_write_leaves_no_partial_file(tmp_path):
    bad = pd.DataFrame({"a": [object()]})  # pyarrow cannot serialise this
    with pytest.raises(Exception):  # noqa: B017 - any failure will do, what matters is what is left
        write_parquet(bad, tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []


def test_a_day_partitioned_events_folder_reads_as_one_table(tmp_path, tiny_dir, capsys):
    """events.parquet as a folder of day= partitions (as demo-data --partition-by-day and Spark write it)."""
    from conftest import TINY

    from embeddings.data import load_data
    from embeddings.data.synthetic import write_week
    from embeddings.io import file_digest

    write_week(TINY, tmp_path / "parts", partition_by_day=True)
    folder = tmp_path / "parts" / "events.parquet"
    assert folder.is_dir() and len(list(folder.glob("day=*/part-0.parquet"))) == TINY.days
    whole, parts = load_data(tiny_dir), load_data(tmp_path / "parts")
    key = ["user_id", "event_timestamp", "item_id", "event_type"]
    pd.testing.assert_frame_equal(
        parts.events.sort_values(key).reset_index(drop=True)[list(whole.events.columns)],
        whole.events.sort_values(key).reset_index(drop=True),
    )
    before = file_digest(folder)  # a stage fingerprint sees a folder's contents
    write_parquet(
        pd.read_parquet(next(folder.glob("day=*/part-0.parquet"))).head(3), next(folder.glob("day=*/part-0.parquet"))
    )
    assert file_digest(folder) != before

    bad = next(folder.glob("day=*/part-0.parquet"))  # a broken partition is named by its folder, exit 2
    frame = pd.read_parquet(bad)
    frame.loc[frame.index[:2], "user_id"] = None
    write_parquet(frame, bad)
    assert main(["check-data", "--data", str(tmp_path / "parts")]) == 2
    err = capsys.readouterr().err
    assert "events.parquet" in err and "user_id" in err


@pytest.mark.parametrize("which", ["first", "last"])
def test_a_partition_with_another_type_is_named_with_its_column(which, tmp_path, capsys):
    """One day's ``item_id`` written as int64: the error names that partition file and the column, whether the
    day is the first or the last one read (Arrow would cast it to the first file's type without a word)."""
    from conftest import TINY

    from embeddings.data.synthetic import write_week

    write_week(TINY, tmp_path / "parts", partition_by_day=True)
    days = sorted((tmp_path / "parts" / "events.parquet").glob("day=*/part-0.parquet"))
    bad = days[0] if which == "first" else days[-1]
    frame = pd.read_parquet(bad)
    frame["item_id"] = np.arange(len(frame), dtype="int64")
    write_parquet(frame, bad)
    assert main(["check-data", "--data", str(tmp_path / "parts")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err, err
    assert f"column 'item_id': type int64, while the other partitions have string ({len(frame)} rows)" in err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_process_umask(tmp_path, umask, mode):
    """Files a server or reader running as another user must read (Parquet, manifests, the registry's inputs) get
    the mode any program's files get under the umask, not mkstemp's 0600."""
    import os

    from embeddings.io import write_json

    old = os.umask(umask)
    try:
        path = write_json(tmp_path / "m.json", {"a": 1})
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode and (tmp_path / "t.parquet").stat().st_mode & 0o777 == mode
