"""User and listing embeddings as of a cut-off, from a trained SASRec checkpoint.

A user's embedding is the transformer's state after their last ``max_len`` clicks strictly
before the cut-off (``intent``; with a profile head also ``profile``, see ``models/sasrec.py``):
the same computation for users the model was trained on and for users it never saw, so a new
user gets a vector from their click sequence without retraining.

Listings in a sequence that the model's catalogue does not hold are encoded from their lst
features when the item encoder allows it (``lst-frozen``, ``hybrid``) and a listings table is
given; otherwise they are skipped and counted. A user with no usable click before the cut-off
gets no embedding (no row): a zero vector would look like a real user to a consumer. Such users
are counted in :attr:`Embedder.report`; :meth:`Embedder.embed_sequence` raises for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from embeddings.data.contract import latest_versions
from embeddings.data.features import listing_features
from embeddings.data.split import build_sequences
from embeddings.errors import InputError
from embeddings.io import load_checkpoint, utc
from embeddings.models.sasrec import SASRecRecommender, content_version

PROFILE_SUFFIX = "-profile"  # model_version of profile vectors: the checkpoint's, plus this


def model_version(path: str | os.PathLike) -> str:
    """The content hash of a checkpoint (weights, model config, item vocabulary): see ``content_version``."""
    return content_version(load_checkpoint(path))


@dataclass
class EmbedReport:
    users: int = 0
    users_without_history: int = 0
    unknown_listings_encoded: int = 0
    unknown_clicks_skipped: int = 0


class Embedder:
    def __init__(self, model: SASRecRecommender, listings: pd.DataFrame | None = None):
        self.model = model
        self.version = model.version
        self.listings = listings
        self.index = pd.Index(model.item_ids)
        self.report = EmbedReport()
        self._table: torch.Tensor | None = None  # the catalogue's vectors (row 0 padding), computed once
        self._encoded = pd.Index([], dtype=object)  # listings outside the catalogue encoded once (encode_listings)
        self._encoded_table = torch.zeros(0, model.config.dim)
        self._known: tuple[pd.Index, torch.Tensor] | None = None  # catalogue + encoded: rebuilt when encoding adds

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, listings: pd.DataFrame | None = None) -> Embedder:
        return cls(SASRecRecommender.load(path), listings)

    @property
    def encoder(self) -> str:
        return self.model.config.item_encoder

    @property
    def _can_encode(self) -> bool:
        return self.model.encoder.scores_unseen and self.listings is not None

    def _encode_new(self, item_ids: list[str], as_of: pd.Timestamp | None) -> torch.Tensor:
        """Vectors for listings outside the catalogue, from their lst features (model's own normalisation)."""
        rows = self.listings[self.listings["item_id"].isin(item_ids)]  # their versions only: O(listings) once
        lst = listing_features(rows, np.asarray(item_ids, dtype=object), as_of, stats=self.model.feature_stats)
        return self.model.encode_listings(lst.smooth()[0])

    def encode_listings(self, item_ids) -> None:
        """Encode these listings (outside the catalogue) from their newest lst features now, once: later
        embeddings index the kept vectors instead of encoding them again (the stream's micro-batches; a new
        version of a listing is encoded again here)."""
        ids = pd.Index(pd.unique(np.asarray(item_ids, dtype=object))).difference(self.index)
        if not len(ids) or not self._can_encode:
            return
        vectors = self._encode_new(list(ids), None)
        keep = ~self._encoded.isin(ids)
        self._encoded = self._encoded[keep].append(ids)
        self._encoded_table = torch.cat([self._encoded_table[torch.from_numpy(keep)], vectors])
        self._known = None

    def _item_table(self, events: pd.DataFrame, as_of: pd.Timestamp | None) -> tuple[pd.Index, torch.Tensor]:
        """All item ids the events can be mapped to, and their vectors (row 0 = padding)."""
        if self._known is None:  # the model is frozen here: its catalogue's vectors once, and the kept encodings
            self._table = self.model.item_table() if self._table is None else self._table
            extended = len(self._encoded) > 0
            self._known = (
                self.index.append(self._encoded) if extended else self.index,
                torch.cat([self._table, self._encoded_table]) if extended else self._table,
            )
        index, table = self._known
        unknown = pd.Index(events["item_id"].unique()).difference(index)
        can_encode = self._can_encode
        if len(unknown) and can_encode:
            unknown = unknown.intersection(pd.Index(self.listings["item_id"].unique()))
            if len(unknown):
                table = torch.cat([table, self._encode_new(list(unknown), as_of)])
                self.report.unknown_listings_encoded += len(unknown)
                return index.append(unknown), table
        return index, table

    def histories(self, events: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[pd.DataFrame, pd.Index, torch.Tensor]:
        """Per user: the item rows of their clicks before ``cutoff`` (first touch order), counts, last time."""
        before = events[events["event_timestamp"] < cutoff]
        index, table = self._item_table(before, cutoff)
        stats = before.groupby("user_id").agg(n_events=("item_id", "size"), last_event_at=("event_timestamp", "max"))
        users, seqs = build_sequences(before, index, skip_unknown=True)
        first_touches = len(before[["user_id", "item_id"]].drop_duplicates())
        self.report.unknown_clicks_skipped += first_touches - int(seqs.lengths.sum())
        frame = stats.join(pd.Series(list(seqs), index=users, dtype=object).rename("history"), how="left").reset_index()
        return frame, index, table

    def embed_users(
        self, events: pd.DataFrame, cutoff: pd.Timestamp | None = None, batch_size: int = 256, progress: bool = True
    ) -> pd.DataFrame:
        """One row per user with at least one usable click before ``cutoff`` (default: now, every click so far; a
        run's cut-off is its model's, see ``pipeline.embed``)."""
        cutoff = utc(pd.Timestamp.now(tz="UTC") if cutoff is None else cutoff)
        frame, _, table = self.histories(events, cutoff)
        all_users = events["user_id"].nunique()
        frame = frame[frame["history"].map(lambda h: isinstance(h, np.ndarray) and len(h) > 0)]
        self.report.users = len(frame)
        self.report.users_without_history = all_users - len(frame)
        states = self.model.user_states(list(frame["history"]), batch_size, table, show_progress=progress)
        out = pd.DataFrame(
            {
                "user_id": frame["user_id"].to_numpy(object),
                "embedding": list(states["intent"].numpy().astype(np.float32)),
                "n_events": frame["n_events"].to_numpy(np.int64),
                "last_event_at": frame["last_event_at"].to_numpy(),
                "model_version": self.version,
                "event_timestamp": cutoff,
            }
        )
        if "profile" in states:
            out.insert(2, "profile_embedding", list(states["profile"].numpy().astype(np.float32)))
        return out

    def embed_first_touches(self, touches: pd.DataFrame) -> pd.DataFrame:
        """``embed_users`` for users whose first touches are already in order (``user_id``, ``item_id`` rows,
        each user's rows together, oldest first: what the stream's click store holds): the same vectors without
        regrouping the events, for the micro-batches of ``lst-embeddings stream``. ``user_id`` + the vectors."""
        self.encode_listings(pd.Index(touches["item_id"].unique()).difference(self._encoded))
        index, table = self._item_table(touches, None)
        codes = index.get_indexer(touches["item_id"])
        users = touches["user_id"].to_numpy(object)[codes >= 0]
        codes = codes[codes >= 0].astype(np.int64)
        if not len(codes):
            return pd.DataFrame({"user_id": pd.Series(dtype=object), "embedding": pd.Series(dtype=object)})
        change = np.flatnonzero(users[1:] != users[:-1]) + 1
        users = users[np.r_[0, change]]
        states = self.model.user_states(np.split(codes, change), 256, table)
        out = pd.DataFrame({"user_id": users, "embedding": list(states["intent"].numpy().astype(np.float32))})
        if "profile" in states:
            out["profile_embedding"] = list(states["profile"].numpy().astype(np.float32))
        return out

    @staticmethod
    def split_heads(users: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """``embed_users``' frame as the intent table and (when the model has a profile head) the profile
        table: same users and columns, the profile vector as ``embedding``, ``model_version`` + ``-profile``."""
        if "profile_embedding" not in users:
            return users, None
        intent = users.drop(columns="profile_embedding")
        profile = intent.assign(
            embedding=users["profile_embedding"].to_numpy(), model_version=users["model_version"] + PROFILE_SUFFIX
        )
        return intent, profile

    def embed_sequence(self, item_ids: list[str], head: str = "intent") -> np.ndarray:
        """The ``intent`` (or ``profile``) vector of one (possibly new) user from their clicks, oldest first."""
        if head not in self.model.heads:
            raise InputError(f"this model has no {head!r} vector; it gives {self.model.heads}")
        t = pd.Timestamp("2000-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(item_ids)), unit="s")
        events = pd.DataFrame({"user_id": "_", "item_id": list(item_ids), "event_timestamp": t, "event_type": "view"})
        out = self.embed_users(events, progress=False) if len(item_ids) else pd.DataFrame()
        if out.empty:
            raise InputError("no usable click in the sequence: this user has no embedding yet")
        return out["embedding" if head == "intent" else "profile_embedding"].iloc[0]

    def embed_items(self, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
        """Every listing the model can give a vector: trained catalogue items, plus (lst modes, with a
        listings table) every other listing published by ``as_of``, encoded from its features."""
        table = self.model.item_table()[1:].numpy()
        keep = self.model.scorable
        ids, vecs, source = list(self.index[keep]), list(table[keep]), ["catalogue"] * int(keep.sum())
        if self._can_encode:
            latest = latest_versions(self.listings, as_of)
            if as_of is not None:
                latest = latest[latest["created_at"] <= as_of]
            new = pd.Index(latest["item_id"]).difference(self.index)
            if len(new):
                ids += list(new)
                vecs += list(self._encode_new(list(new), as_of).numpy())
                source += ["lst-features"] * len(new)
        stamp = pd.Timestamp(as_of) if as_of is not None else pd.Timestamp.now(tz="UTC").floor("s")
        return pd.DataFrame(
            {
                "item_id": np.asarray(ids, dtype=object),
                "embedding": [np.asarray(v, dtype=np.float32) for v in vecs],
                "source": source,
                "model_version": self.version,
                "event_timestamp": stamp,
            }
        )
