"""Batch user embeddings on a local Spark (local[2]) against the single-machine path."""

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import TINY

from embeddings.data import load_data
from embeddings.data.synthetic import write_week
from embeddings.errors import InputError
from embeddings.stages.embed import Embedder

pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java 17 (.ci/run installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def spark():
    from embeddings.stages.spark_embed import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def day_partitions(tmp_path_factory):
    """The tiny week partitioned by day, with 40 listings renamed: the model never saw them, so the embedder
    encodes them from their lst features (in every Spark task that meets them)."""
    out = tmp_path_factory.mktemp("week-by-day")
    write_week(TINY, out, partition_by_day=True)
    listings = pd.read_parquet(out / "listings.parquet")
    renamed = {i: f"{i}-new" for i in listings["item_id"].drop_duplicates().iloc[::10]}
    listings.assign(item_id=listings["item_id"].replace(renamed)).to_parquet(out / "listings.parquet")
    for part in (out / "events.parquet").rglob("*.parquet"):
        events = pd.read_parquet(part)
        events.assign(item_id=events["item_id"].replace(renamed)).to_parquet(part)
    return out


def test_spark_embeddings_equal_the_local_ones(spark, day_partitions, tiny_hybrid_model, tmp_path):
    from embeddings.stages.spark_embed import embed_users_spark

    data = load_data(day_partitions)
    cutoff = data.events["event_timestamp"].max() + pd.Timedelta(microseconds=1)
    embedder = Embedder.from_checkpoint(tiny_hybrid_model, data.listings)
    local = embedder.embed_users(data.events, cutoff, progress=False).set_index("user_id")
    assert embedder.report.unknown_listings_encoded > 0  # the partitions must encode new listings too

    out = tmp_path / "user_embeddings.parquet"
    got = embed_users_spark(
        day_partitions / "events.parquet", tiny_hybrid_model, out, cutoff, data.listings, spark=spark, partitions=3
    )
    assert got.partitions == 3 and got.users == len(local)
    remote = pd.read_parquet(out).set_index("user_id").loc[local.index]
    np.testing.assert_allclose(np.stack(remote["embedding"]), np.stack(local["embedding"]), atol=1e-5, rtol=0)
    assert (remote["n_events"] == local["n_events"]).all()
    assert (remote["last_event_at"] == local["last_event_at"]).all()
    assert (remote["event_timestamp"] == cutoff).all() and set(remote["model_version"]) == {embedder.version}


def test_a_bad_click_fails_the_spark_job_clearly_and_writes_nothing(spark, tiny_dir, tiny_hybrid_model, tmp_path):
    from embeddings.stages.spark_embed import embed_users_spark

    data = load_data(tiny_dir)
    events = pd.read_parquet(tiny_dir / "events.parquet")
    events.loc[events.index[:4], "item_id"] = "no-such-listing"
    bad = tmp_path / "events.parquet"
    events.to_parquet(bad)
    out = tmp_path / "user_embeddings.parquet"
    cutoff = events["event_timestamp"].max() + pd.Timedelta(seconds=1)
    message = r"events.parquet: column .item_id.: listings unknown to the listings table \(4 rows\)"
    with pytest.raises(InputError, match=message):
        embed_users_spark(bad, tiny_hybrid_model, out, cutoff, data.listings, spark=spark, partitions=2)
    assert not out.exists() and not list(tmp_path.glob(".*spark-*"))


def test_the_embed_stage_on_spark_writes_what_the_local_stage_writes(
    spark, day_partitions, tiny_hybrid_model, tmp_path
):
    from embeddings import pipeline as pl
    from embeddings.data.contract import read_parquet

    data = load_data(day_partitions)
    local = pl.embed(data, pl.RunLayout(tmp_path / "local"), tiny_hybrid_model, pl.EmbedConfig())
    on_spark = pl.embed(data, pl.RunLayout(tmp_path / "spark"), tiny_hybrid_model, pl.EmbedConfig(engine="spark"))
    folder = pl.RunLayout(tmp_path / "spark").user_embeddings
    assert folder.is_dir() and len(list(folder.glob("part-*.parquet"))) >= 2  # Spark's partitions, as written
    a = local.users.set_index("user_id")
    b = read_parquet(folder).set_index("user_id").loc[a.index]
    assert list(b.columns) == list(a.columns)
    np.testing.assert_allclose(np.stack(b["embedding"]), np.stack(a["embedding"]), atol=1e-5, rtol=0)
    assert on_spark.report.users == local.report.users and on_spark.model_version == local.model_version
    pd.testing.assert_frame_equal(on_spark.items.drop(columns="embedding"), local.items.drop(columns="embedding"))


@pytest.fixture(scope="module")
def tiny_profile_model(tiny_week, tmp_path_factory):
    """A hybrid checkpoint with a profile head (as ``examples/week.toml`` trains)."""
    from embeddings.data.split import temporal_split
    from embeddings.models.sasrec import SASRecConfig
    from embeddings.models.zoo import make_model
    from embeddings.training.config import TrainConfig

    listings, events, _ = tiny_week
    split = temporal_split(events, listings)
    cfg = SASRecConfig(item_encoder="hybrid", max_len=20, dim=16, profile_horizon=4)
    model = make_model("sasrec", split, listings, sasrec=cfg, train=TrainConfig(epochs=1, batch_size=32, bf16=False))
    path = tmp_path_factory.mktemp("tiny-profile") / "model.pt"
    model.fit(split).save(path)
    return path


def test_the_embed_stage_on_spark_writes_both_heads_of_a_profile_model(
    spark, day_partitions, tiny_profile_model, tmp_path
):
    from embeddings import pipeline as pl
    from embeddings.data.contract import read_parquet

    data = load_data(day_partitions)
    local = pl.embed(data, pl.RunLayout(tmp_path / "local"), tiny_profile_model, pl.EmbedConfig())
    on_spark = pl.embed(data, pl.RunLayout(tmp_path / "spark"), tiny_profile_model, pl.EmbedConfig(engine="spark"))
    layout = pl.RunLayout(tmp_path / "spark")
    assert local.profiles is not None and on_spark.profiles is not None
    for ours, theirs in ((local.users, layout.user_embeddings), (local.profiles, layout.user_profiles)):
        a = ours.set_index("user_id")
        b = read_parquet(theirs).set_index("user_id").loc[a.index]
        assert list(b.columns) == list(a.columns) and (b["model_version"] == a["model_version"]).all()
        np.testing.assert_allclose(np.stack(b["embedding"]), np.stack(a["embedding"]), atol=1e-5, rtol=0)
    assert on_spark.record == local.record
    assert not list((tmp_path / "spark" / "embeddings").glob(".*spark-*"))
