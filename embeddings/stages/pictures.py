"""t-SNE pictures of listing and user embeddings (PNG), seeded and subsampled."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from embeddings.data.contract import latest_versions  # noqa: E402
from embeddings.io import save_figure  # noqa: E402


def tsne_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    perplexity = float(min(30, max(2, (len(vectors) - 1) // 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(vectors)


def _scatter(xy: np.ndarray, labels: pd.Series, title: str, path: Path, total: int, order=None) -> Path:
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    values = order if order is not None else sorted(labels.unique(), key=str)
    cmap = plt.get_cmap("tab10" if len(values) <= 10 else "tab20")
    for i, value in enumerate(values):
        m = (labels == value).to_numpy()
        ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, color=cmap(i % cmap.N), label=f"{value} ({m.sum()})")
    ax.set_title(f"{title}\n t-SNE of {len(xy):,} sampled of {total:,}")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend(markerscale=3, fontsize=8, loc="best", frameon=True)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)


def item_pictures(item_embeddings: pd.DataFrame, listings: pd.DataFrame, out: Path, sample: int = 2000, seed: int = 0):
    latest = latest_versions(listings).set_index("item_id")
    items = _sample(item_embeddings, sample, seed).join(latest[["deal_type", "city", "price"]], on="item_id")
    xy = tsne_2d(np.stack(items["embedding"]), seed)
    band = pd.Series("", index=items.index)
    for deal in ("rent", "sale"):
        m = items["deal_type"] == deal
        if m.sum() >= 3:
            band[m] = deal + " " + pd.qcut(items.loc[m, "price"], 3, labels=["low", "mid", "high"]).astype(str)
    total = len(item_embeddings)
    bands = [f"{d} {b}" for d in ("rent", "sale") for b in ("low", "mid", "high") if f"{d} {b}" in set(band)]
    return [
        _scatter(xy, items["deal_type"], "Listing embeddings by deal type", out / "items_by_deal_type.png", total),
        _scatter(xy, items["city"], "Listing embeddings by city", out / "items_by_city.png", total),
        _scatter(
            xy,
            band,
            "Listing embeddings by price band (terciles within deal type)",
            out / "items_by_price_band.png",
            total,
            order=bands,
        ),
    ]


def user_pictures(user_embeddings: pd.DataFrame, scores: pd.DataFrame, out: Path, sample: int = 2000, seed: int = 0):
    users = _sample(user_embeddings.merge(scores[["user_id", "p_rent"]], on="user_id"), sample, seed)
    xy = tsne_2d(np.stack(users["embedding"]), seed)
    pref = pd.cut(
        users["p_rent"], [-0.01, 0.2, 0.8, 1.01], labels=["sale (p_rent < 0.2)", "unsure", "rent (p_rent > 0.8)"]
    )
    return [
        _scatter(
            xy,
            pref.astype(str),
            "User embeddings by rent/sale preference",
            out / "users_by_preference.png",
            len(user_embeddings),
            order=["rent (p_rent > 0.8)", "unsure", "sale (p_rent < 0.2)"],
        )
    ]
