"""Loader for ``user item`` text files in time order (the SASRec papers' ML-1M file)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from embeddings.data.contract import ContractError, validate_events

EPOCH = pd.Timestamp("2000-01-01T00:00:00Z")


def load_user_item_text(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``user item`` lines into the events table; each user's lines keep their order.

    Timestamps are synthetic (one second apart within a user), only order carries meaning.
    """
    path = Path(path)
    if not path.exists():
        raise ContractError(str(path), None, 0, "file not found")
    raw = pd.read_csv(path, sep=r"\s+", header=None, names=["user", "item"], dtype=str, engine="c")
    bad = raw["item"].isna() | raw["user"].isna()
    if bad.any():
        raise ContractError(str(path), "item", int(bad.sum()), "lines without two fields", raw.index[bad][:5].tolist())
    position = raw.groupby("user", sort=False).cumcount().to_numpy()
    events = pd.DataFrame(
        {
            "user_id": raw["user"].to_numpy(object),
            "item_id": raw["item"].to_numpy(object),
            "event_timestamp": EPOCH + pd.to_timedelta(position.astype(np.int64), unit="s"),
            "event_type": "view",
        }
    )
    return validate_events(events, None, source=str(path))
