"""The Feast feature repo, read side: the :class:`Repo` handle, online and point-in-time reads, lst features as
the store knew them, and the runs already published. Writing a run is the pipeline's ``publish`` stage, which
checks it first; the writer itself (``feature_store._writer``) is private."""

from embeddings.feature_store.repo import (
    LISTING_FEATURES,
    REPO,
    TARGETS,
    VIEWS,
    Repo,
    check_redis,
    historical_features,
    listings_from_store,
    online_features,
)

__all__ = [
    "LISTING_FEATURES",
    "TARGETS",
    "REPO",
    "VIEWS",
    "Repo",
    "check_redis",
    "historical_features",
    "listings_from_store",
    "online_features",
]
