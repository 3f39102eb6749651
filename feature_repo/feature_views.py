"""Feature views. Embeddings and scores are published once a week: their ttl is 8 days, so a value
stays served until the next weekly run plus a day of slack, and never for longer: past it, point-in-time joins
give null and the online stores give no value (SQLite hides the row, Redis has dropped the key).

Each publish records in ``data/published.json`` what it published per view (vector dimension, model version,
space, run, time); the definitions below read it, so the registry shows them (``feast feature-views describe``,
the UI): the vector fields' ``vector_length`` and the views' and fields' tags.

Vectors come in three spaces (README, "Compatible releases"):

- the views consumers fit models on (``user_embedding``, ``user_profile_embedding``, ``listing_embedding``) carry
  vectors in the **pinned space**, named by ``space_version``: a retrain maps its vectors into it, so a model fitted
  on last week's vectors keeps working;
- ``*_native``: the current model's own vectors (its ``model_version`` is their space), for consumers who want the
  newest space and refit at every release;
- ``*_next_space``: during a transition to a declared new space, the vectors in that space (null otherwise)."""

import json
import os
from datetime import timedelta
from pathlib import Path

from data_sources import (
    listing_embedding_push,
    listing_lst_push,
    user_embedding_push,
    user_preference_push,
    user_profile_push,
)
from entities import listing, user
from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int64, String

OWNER = "recsys-embeddings@lst.example"
WEEKLY = timedelta(days=8)
# lst-embeddings points LST_PUBLISHED at the record of the publish in progress while it applies the repo
PUBLISHED = Path(os.environ.get("LST_PUBLISHED") or Path(__file__).resolve().parent / "data" / "published.json")


def published(view: str) -> dict[str, str]:
    """What the latest publish recorded for ``view``: vector_dim, model_version, run_id, published_at."""
    try:
        return {k: str(v) for k, v in json.loads(PUBLISHED.read_text()).get(view, {}).items()}
    except (OSError, ValueError):
        return {}


def vector(name: str, view: str, description: str) -> Field:
    """A float vector field; its length and model version as the latest publish recorded them."""
    meta = published(view)
    dim = int(meta.get("vector_dim", 0))
    return Field(name=name, dtype=Array(Float32), description=description, vector_length=dim, tags=meta)


listing_lst_features = FeatureView(
    name="listing_lst_features",
    entities=[listing],
    ttl=timedelta(days=90),
    schema=[
        Field(name="deal_type", dtype=String, description="rent or sale"),
        Field(name="property_type", dtype=String, description="flat, room, house, townhouse"),
        Field(name="city", dtype=String),
        Field(name="district", dtype=String),
        Field(name="rooms", dtype=Int64, description="0 = studio"),
        Field(name="area_m2", dtype=Float64),
        Field(name="floor", dtype=Int64),
        Field(name="floors_total", dtype=Int64),
        Field(name="price", dtype=Float64, description="monthly for rent"),
        Field(name="lat", dtype=Float64),
        Field(name="lon", dtype=Float64),
    ],
    source=listing_lst_push,
    online=True,
    description="A listing's lst features, versioned (a price drop is a new version). Input of frozen item vectors.",
    owner=OWNER,
    tags={"team": "recsys", "source": "listings", "cadence": "on change"},
)

SPACE = "the pinned space the vectors are in: the model version whose space it is (stable across retrains)"
NEXT = "during a transition: the declared new space; null otherwise"


def space_views(name: str, entity, source, columns: dict[str, str], head: str) -> tuple[FeatureView, FeatureView]:
    """The ``*_native`` and ``*_next_space`` views of a vector table (``columns``: native vector, its version,
    next-space vector, next space)."""
    native_vec, version, next_vec, next_version = columns
    common = {"entities": [entity], "ttl": WEEKLY, "source": source, "online": True, "owner": OWNER}
    native = FeatureView(
        name=f"{name}_native",
        schema=[
            vector(native_vec, f"{name}_native", "the model's own vector, unmapped: its space changes each release"),
            Field(name=version, dtype=String, description="the model version: the space of the native vector"),
        ],
        description=f"{name} in the current model's own space (refit at every release to use it).",
        tags={"team": "recsys", "model": "sasrec", "cadence": "weekly", "head": head, "space": "native",
              **published(f"{name}_native")},
        **common,
    )  # fmt: skip
    upcoming = FeatureView(
        name=f"{name}_next_space",
        schema=[
            vector(next_vec, f"{name}_next_space", "the vector in the declared new space (null outside a transition)"),
            Field(name=next_version, dtype=String, description=NEXT),
        ],
        description=f"{name} in a declared new space during its transition window: refit on it, then switch.",
        tags={"team": "recsys", "model": "sasrec", "cadence": "weekly", "head": head, "space": "next",
              **published(f"{name}_next_space")},
        **common,
    )  # fmt: skip
    return native, upcoming


listing_embedding = FeatureView(
    name="listing_embedding",
    entities=[listing],
    ttl=WEEKLY,
    schema=[
        vector("embedding", "listing_embedding", "item vector in the pinned space (vector_length: dim)"),
        Field(name="model_version", dtype=String, description="content hash of the SASRec checkpoint"),
        Field(name="space_version", dtype=String, description=SPACE),
    ],
    source=listing_embedding_push,
    online=True,
    description=(
        "Listing embedding; listings nobody clicked get one from their lst features (lst-frozen, hybrid), and so do "
        "new listings between weekly runs (lst-embeddings stream)."
    ),
    owner=OWNER,
    tags={"team": "recsys", "model": "sasrec", "cadence": "weekly", **published("listing_embedding")},
)
listing_embedding_native, listing_embedding_next_space = space_views(
    "listing_embedding",
    listing,
    listing_embedding_push,
    ("native_embedding", "model_version", "next_space_embedding", "next_space_version"),
    "item",
)

user_embedding = FeatureView(
    name="user_embedding",
    entities=[user],
    ttl=WEEKLY,
    schema=[
        vector("embedding", "user_embedding", "SASRec state after the user's clicks so far, pinned space"),
        Field(name="n_events", dtype=Int64, description="the user's clicks so far (run cut-off, or streamed)"),
        Field(name="last_event_at", dtype=Int64, description="the user's last click so far, Unix seconds (UTC)"),
        Field(name="model_version", dtype=String, description="the model that made the vector"),
        Field(name="space_version", dtype=String, description=SPACE),
    ],
    source=user_embedding_push,
    online=True,
    description=(
        "Intent: the user's state as of the run's cut-off, or of the last click the stream saw since (event "
        "timestamp: that click), trained to score the next click. "
        "Take it for what the user wants now (next-listing retrieval, session ranking)."
    ),
    owner=OWNER,
    tags={"team": "recsys", "model": "sasrec", "cadence": "weekly", "head": "intent", **published("user_embedding")},
)
user_embedding_native, user_embedding_next_space = space_views(
    "user_embedding",
    user,
    user_embedding_push,
    ("native_embedding", "model_version", "next_space_embedding", "next_space_version"),
    "intent",
)

user_profile_embedding = FeatureView(
    name="user_profile_embedding",
    entities=[user],
    ttl=WEEKLY,
    schema=[
        vector("profile_embedding", "user_profile_embedding", "profile head over the state (who the user is)"),
        Field(name="profile_model_version", dtype=String, description="checkpoint version + '-profile'"),
        Field(name="profile_space_version", dtype=String, description=SPACE + ", + '-profile'"),
    ],
    source=user_profile_push,
    online=True,
    description=(
        "Profile: the same clicks through a head trained to score any of the user's next clicks over a horizon "
        "(dense all-action objective). Take it as a feature of who the user is (deal type, budget, rooms, city)."
    ),
    owner=OWNER,
    tags={
        "team": "recsys",
        "model": "sasrec",
        "cadence": "weekly",
        "head": "profile",
        **published("user_profile_embedding"),
    },
)
user_profile_embedding_native, user_profile_embedding_next_space = space_views(
    "user_profile_embedding",
    user,
    user_profile_push,
    ("native_profile_embedding", "profile_model_version", "next_space_profile_embedding", "next_space_profile_version"),
    "profile",
)

user_rent_sale_preference = FeatureView(
    name="user_rent_sale_preference",
    entities=[user],
    ttl=WEEKLY,
    schema=[
        Field(name="p_rent", dtype=Float32, description="calibrated probability the user looks for a rental"),
        Field(name="predicted_deal_type", dtype=String, description="rent if p_rent >= 0.5, else sale"),
        Field(name="classifier_version", dtype=String),
    ],
    source=user_preference_push,
    online=True,
    description=(
        "Rent/sale preference from CatBoost on the user embedding: the weekly run's, or the stream's after a click "
        "(the same release's classifier as the user's vectors)."
    ),
    owner=OWNER,
    tags={"team": "recsys", "model": "catboost", "cadence": "weekly", **published("user_rent_sale_preference")},
)
