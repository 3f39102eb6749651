"""The record of one run: the facts every stage after ``embed`` needs, written once and passed along.

``embed`` writes it (``RUN/embeddings/run.json``); ``probe``, ``classify``, ``pictures``, the checks and the
feature-store writer read it instead of reading the cut-off or the model version back out of table columns.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from embeddings.errors import InputError
from embeddings.io import utc, write_json


@dataclass(frozen=True)
class RunRecord:
    cutoff: pd.Timestamp  # the vectors are as of this instant: only clicks before it count
    model_version: str  # content hash of the checkpoint: a new one is a new vector space
    encoder: str = "unknown"  # the item encoder: id | lst-frozen | hybrid
    heads: tuple[str, ...] = ("intent",)  # the user vectors the model gives
    profile_model_version: str | None = None  # the profile vectors' version (model_version + "-profile")
    space_version: str = field(default="")  # the model's own (native) space: its model version
    model_path: str | None = None  # the checkpoint the vectors came from (a publish aligns its release with it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cutoff", utc(self.cutoff))
        object.__setattr__(self, "heads", tuple(self.heads))
        if not self.space_version:
            object.__setattr__(self, "space_version", self.model_version)

    def write(self, path: Path) -> Path:
        return write_json(path, {**asdict(self), "cutoff": self.cutoff.isoformat(), "heads": list(self.heads)})

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except FileNotFoundError as exc:
            raise InputError(f"{path}: no run record; run the embed stage first") from exc
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a run record ({exc})") from exc

    @classmethod
    def of_vectors(cls, users: pd.DataFrame, profiles: pd.DataFrame | None = None) -> RunRecord:
        """The record of vector tables built without ``embed`` (by hand, in tests): from their first row."""
        heads = ("intent", "profile") if profiles is not None else ("intent",)
        profile_version = str(profiles["model_version"].iloc[0]) if profiles is not None else None
        return cls(
            users["event_timestamp"].iloc[0], str(users["model_version"].iloc[0]), "unknown", heads, profile_version
        )
