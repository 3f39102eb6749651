"""lst features of listings, encoded for models.

:func:`listing_features` is the one place that turns the listings table (or, later, the
feature store's listing view: any frame with the contract's listing columns) into a table
aligned with a model's catalogue. Two encodings hang off it:

* :meth:`ListingFeatures.smooth` for SASRec: categoricals one-hot, numerics as radial basis
  functions (soft bins) so that a dot product can express "near this price" or "near this
  place", not only "cheaper is better". This is what makes frozen item vectors usable.
* :meth:`ListingFeatures.binned` for LightFM: categoricals one-hot and numerics in quantile
  bins, the usual LightFM item-feature design.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from embeddings.data.contract import DEAL_TYPES, PROPERTY_TYPES, latest_versions
from embeddings.errors import InputError

CATEGORICALS = ("deal_type", "property_type", "city")
MAX_ROOMS = 5


def fit_stats(table: pd.DataFrame) -> dict:
    """Normalisation statistics of a listings table: kept with a model so new listings encode the same way."""
    log_price = np.log(table["price"].to_numpy(float))
    price = {}
    for deal in DEAL_TYPES:
        m = (table["deal_type"] == deal).to_numpy()
        price[deal] = [float(log_price[m].mean()), float(log_price[m].std() + 1e-6)] if m.any() else [0.0, 1.0]
    log_area = np.log(table["area_m2"].to_numpy(float))
    geo = {}
    for city, g in table.groupby("city"):
        lat, lon = g["lat"].to_numpy(float), g["lon"].to_numpy(float)
        geo[str(city)] = [
            float(np.median(lat)),
            float(lat.std() + 1e-3),
            float(np.median(lon)),
            float(lon.std() + 1e-3),
        ]
    return {
        "price": price,
        "area": [float(log_area.mean()), float(log_area.std() + 1e-6)],
        "geo": geo,
        "cities": sorted(geo),
    }


@dataclass
class ListingFeatures:
    table: pd.DataFrame  # one row per catalogue item, in catalogue order
    stats: dict  # from fit_stats; a model's own stats when encoding listings it has not seen

    def __len__(self) -> int:
        return len(self.table)

    @property
    def cities(self) -> tuple[str, ...]:
        return tuple(self.stats["cities"])

    def _numerics(self) -> dict[str, np.ndarray]:
        t, st = self.table, self.stats
        log_price = np.log(t["price"].to_numpy(float))
        price_z = np.zeros(len(t))
        for deal, (mu, sd) in st["price"].items():
            m = (t["deal_type"] == deal).to_numpy()
            price_z[m] = (log_price[m] - mu) / sd
        area_z = (np.log(t["area_m2"].to_numpy(float)) - st["area"][0]) / st["area"][1]
        lat, lon = t["lat"].to_numpy(float), t["lon"].to_numpy(float)
        geo_y, geo_x = np.zeros(len(t)), np.zeros(len(t))  # a city the model never saw sits at its centre
        for city, (lat_med, lat_sd, lon_med, lon_sd) in st["geo"].items():
            m = (t["city"] == city).to_numpy()
            geo_y[m] = (lat[m] - lat_med) / lat_sd
            geo_x[m] = (lon[m] - lon_med) / lon_sd
        floor_share = t["floor"].to_numpy(float) / t["floors_total"].to_numpy(float)
        return {
            "price_z": price_z,
            "area_z": area_z,
            "geo_y": geo_y,
            "geo_x": geo_x,
            "floor_share": floor_share,
            "log_floors": np.log1p(t["floors_total"].to_numpy(float)) / np.log(30),
        }

    def _onehots(self) -> list[tuple[str, np.ndarray]]:
        t = self.table
        groups = [
            ("deal_type", DEAL_TYPES, t["deal_type"]),
            ("property_type", PROPERTY_TYPES, t["property_type"]),
            ("city", self.cities, t["city"]),
            ("rooms", tuple(range(MAX_ROOMS + 1)), t["rooms"].clip(upper=MAX_ROOMS)),
        ]
        out = []
        for name, values, col in groups:
            for v in values:
                out.append((f"{name}={v}", (col == v).to_numpy(np.float32)))
        return out

    def smooth(self) -> tuple[np.ndarray, list[str]]:
        """Dense float32 matrix (n_items, n_features) and feature names."""
        num = self._numerics()
        cols = self._onehots()
        for name, centres, width in (
            ("price_z", np.linspace(-2.5, 2.5, 12), 0.45),
            ("area_z", np.linspace(-2, 2, 6), 0.6),
        ):
            for c in centres:
                cols.append((f"{name}~{c:+.2f}", np.exp(-((num[name] - c) ** 2) / (2 * width**2))))
        grid = np.linspace(-1.5, 1.5, 4)
        for cy in grid:
            for cx in grid:
                d2 = (num["geo_y"] - cy) ** 2 + (num["geo_x"] - cx) ** 2
                cols.append((f"geo~{cy:+.1f},{cx:+.1f}", np.exp(-d2 / (2 * 0.6**2))))
        cols += [("floor_share", num["floor_share"]), ("log_floors", num["log_floors"])]
        names = [c[0] for c in cols]
        return np.stack([c[1] for c in cols], axis=1).astype(np.float32), names

    def binned(self, n_bins: int = 8) -> tuple[sp.csr_matrix, list[str]]:
        """Sparse one-hot matrix: categoricals plus quantile bins of price (per deal type), area, location."""
        num = self._numerics()
        cols = self._onehots()
        for name in ("price_z", "area_z", "geo_y", "geo_x"):
            edges = np.unique(np.quantile(num[name], np.linspace(0, 1, n_bins + 1)[1:-1]))
            bins = np.searchsorted(edges, num[name])
            for b in range(len(edges) + 1):
                cols.append((f"{name}_bin{b}", (bins == b).astype(np.float32)))
        names = [c[0] for c in cols]
        return sp.csr_matrix(np.stack([c[1] for c in cols], axis=1)), names


def listing_features(
    listings: pd.DataFrame, item_ids: np.ndarray, as_of: pd.Timestamp | None = None, stats: dict | None = None
) -> ListingFeatures:
    """Align the newest version (as of ``as_of``) of each listing with the catalogue ``item_ids``.

    ``stats`` (from :func:`fit_stats`) fixes the normalisation; by default it is fitted on these listings.
    """
    latest = latest_versions(listings, as_of).set_index("item_id")
    missing = pd.Index(item_ids).difference(latest.index)
    if len(missing):
        raise InputError(f"{len(missing)} catalogue items have no lst features, e.g. {list(missing[:5])}")
    table = latest.loc[list(item_ids)].reset_index()
    return ListingFeatures(table, stats if stats is not None else fit_stats(table))
