import os

import pytest

os.environ.setdefault("LST_EMBEDDINGS_QUIET", "1")

from embeddings.synthetic import WeekConfig, generate_week, write_week  # noqa: E402

TINY = WeekConfig(users=300, listings=400, days=7, seed=3)


@pytest.fixture(scope="session")
def tiny_week():
    """(listings, events, labels) of a tiny synthetic week."""
    return generate_week(TINY)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("week")
    write_week(TINY, out)
    return out
