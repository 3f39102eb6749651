"""Read whatever ``--data`` points at: a folder with the contract's Parquet files, or a ``user item`` text file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embeddings.data.contract import ContractError, load_dataset, read_parquet
from embeddings.data.movielens import load_user_item_text


@dataclass
class Dataset:
    """Validated input of a run: click events, and (for listings data) the listings table."""

    events: pd.DataFrame
    listings: pd.DataFrame | None
    source: Path

    @property
    def has_listings(self) -> bool:
        return self.listings is not None

    @property
    def files(self) -> list[Path]:
        """The files the tables were read from (what a stage's fingerprint hashes)."""
        if self.source.is_dir():
            return [self.source / "listings.parquet", self.source / "events.parquet"]
        return [self.source]

    def labels(self) -> pd.DataFrame | None:
        """The synthetic week's latent intents (``labels.parquet``), when the folder has them."""
        path = self.source / "labels.parquet" if self.source.is_dir() else None
        return read_parquet(path) if path is not None and path.exists() else None


def load_data(path: str | os.PathLike) -> Dataset:
    """Load a data folder (listings + events, both checked) or a ``user item`` text file (no lst features)."""
    path = Path(path)
    if path.is_dir():
        listings, events = load_dataset(path)
        return Dataset(events, listings, path)
    if path.suffix in (".txt", ".tsv", ".csv") and path.exists():
        return Dataset(load_user_item_text(path), None, path)
    raise ContractError(
        str(path), None, 0, "expected a folder with listings.parquet and events.parquet, or a .txt file"
    )
