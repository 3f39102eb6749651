"""Read whatever ``--data`` points at: a folder with the contract's Parquet files, or a ``user item`` text file."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from embeddings.contract import ContractError, load_dataset
from embeddings.movielens import load_user_item_text


def load_data(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Return ``(events, listings)``; listings is None for a text file (no lst features)."""
    path = Path(path)
    if path.is_dir():
        listings, events = load_dataset(path)
        return events, listings
    if path.suffix in (".txt", ".tsv", ".csv"):
        return load_user_item_text(path), None
    raise ContractError(
        str(path), None, 0, "expected a folder with listings.parquet and events.parquet, or a .txt file"
    )
