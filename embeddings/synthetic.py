"""A synthetic week of a real-estate classifieds site: the product's demo and test data.

The generative story
--------------------
Market. A handful of cities with Zipf-sized markets (the first city holds about a third of
all listings). Each city has districts, themselves Zipf-sized, each with a centre and a price
multiplier (central districts cost more). Each city has a rent price per m2 (monthly) and a
sale price per m2.

Listings. A listing picks a city (Zipf), a district (Zipf inside the city), a deal type (rent
55 %, sale 45 %), a property type (flats mostly, rooms mostly for rent, houses mostly for sale),
rooms (0 = studio), an area that grows with rooms, a building height and a floor, and a price =
area x city price per m2 x district multiplier x noise, so price is consistent with city, area,
rooms and deal type. It also has a hidden attractiveness (photos, description; log-normal) that
drives popularity. About half of the listings exist before the week starts, the rest are
published during the week (some on the last day: the cold-start listings); a share is withdrawn
during the week and gets no click after that. Some drop their price during the week, which makes
a second version of the listing's features (``event_timestamp`` = when the new price became true).

Users. Each user has a latent intent: rent (55 %), sale (35 %) or both (10 %, hesitating; each
session then picks rent or sale by a coin). The intent goes to ``labels.parquet`` only, never into
the events. A user has a home city (Zipf; 5 % also search a second city), a preferred room count,
a budget per deal type around the typical price of such flats in their city, and sometimes a
favourite district. Budget and room count drift slightly from session to session.

Sessions. A user has 1 + Poisson(1.2) sessions in the week, at plausible hours (peaks at lunch
and in the evening, few at night), each 1 + Geometric clicks long, 15 s to 3 min apart. The
session fixes a city and a deal type; only listings live at that moment can be clicked.

Clicks. The first click of a session is drawn from the live listings of that city and deal type
with weight popularity x freshness x fit (price near budget, rooms near preference, favourite
district); with some probability the user instead resumes where the previous session stopped.
Every next click refines the search around the previous click with probability 0.8 (``REFINE_P``): nearby
price, same district, similar rooms, close on the map. Otherwise the user browses by fit and
popularity again. So both what a user likes and the order of clicks carry signal, and the
popular-item baseline is weak because popularity is split across cities and deal types.
Favourites (about 6 %) and contacts (about 3 %) follow a view of the same listing, more often
when the listing fits the user and matches the session's deal type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embeddings.contract import validate_events, validate_listings
from embeddings.io import write_parquet, write_parquet_partitioned

WEEK_START = pd.Timestamp("2026-11-02T00:00:00Z")  # a Monday; fixed so the data is a function of the seed

# name, lat, lon, monthly rent per m2, sale price per m2
CITIES = (
    ("Moscow", 55.751, 37.618, 1150.0, 290_000.0),
    ("Saint Petersburg", 59.939, 30.316, 820.0, 210_000.0),
    ("Kazan", 55.796, 49.108, 560.0, 150_000.0),
    ("Yekaterinburg", 56.838, 60.605, 520.0, 130_000.0),
    ("Novosibirsk", 55.030, 82.920, 500.0, 125_000.0),
    ("Nizhny Novgorod", 56.327, 44.006, 450.0, 120_000.0),
    ("Krasnodar", 45.035, 38.975, 480.0, 115_000.0),
    ("Sochi", 43.585, 39.723, 900.0, 260_000.0),
)
HOUR_WEIGHTS = np.array([2, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 11, 13, 13, 11, 10, 10, 11, 13, 16, 18, 17, 12, 6], float)
REFINE_P = 0.8
RESUME_P = 0.75


@dataclass(frozen=True)
class WeekConfig:
    users: int = 5000
    listings: int = 6000
    days: int = 7
    seed: int = 0


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _make_listings(cfg: WeekConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, dict]:
    n = cfg.listings
    city_w = _zipf(len(CITIES), 1.0)
    n_districts = [3 + int(round(9 * w / city_w[0])) for w in city_w]
    districts = []  # (city index, name, lat, lon, multiplier)
    for ci, (cname, clat, clon, _, _) in enumerate(CITIES):
        for d in range(n_districts[ci]):
            dlat, dlon = rng.normal(0, 0.06), rng.normal(0, 0.1)
            central = np.exp(-np.hypot(dlat / 0.06, dlon / 0.1) / 2)
            districts.append((ci, f"{cname} D{d + 1:02d}", clat + dlat, clon + dlon, 0.8 + 0.5 * central))
    d_city = np.array([d[0] for d in districts])

    city = rng.choice(len(CITIES), size=n, p=city_w)
    district = np.empty(n, int)
    for ci in range(len(CITIES)):
        idx = np.flatnonzero(city == ci)
        own = np.flatnonzero(d_city == ci)
        district[idx] = own[rng.choice(len(own), size=len(idx), p=_zipf(len(own), 0.7))]
    rent = rng.random(n) < 0.55
    ptype = np.where(
        rent,
        rng.choice(4, size=n, p=[0.78, 0.15, 0.04, 0.03]),
        rng.choice(4, size=n, p=[0.80, 0.04, 0.11, 0.05]),
    )
    rooms = rng.choice(5, size=n, p=[0.12, 0.33, 0.32, 0.18, 0.05])
    rooms = np.where(ptype == 1, 1, rooms)
    rooms = np.where(ptype == 2, 3 + rng.integers(0, 4, n), rooms)
    rooms = np.where(ptype == 3, 2 + rng.integers(0, 3, n), rooms)
    area = np.where(ptype == 1, 12 + 6 * rng.random(n), 26 + 18 * rooms) * rng.lognormal(0, 0.12, n)
    area = np.where(ptype >= 2, 60 + 25 * rooms * rng.lognormal(0, 0.15, n), area).round(1)
    floors_total = np.where(ptype >= 2, rng.integers(1, 4, n), rng.choice([5, 9, 12, 16, 17, 25], size=n))
    floor = 1 + (rng.random(n) * floors_total).astype(int)
    ppm2 = np.array([[c[3], c[4]] for c in CITIES])[city, np.where(rent, 0, 1)]
    d_mult = np.array([d[4] for d in districts])[district]
    type_mult = np.array([1.0, 1.3, 0.8, 0.85])[ptype]
    price = area * ppm2 * d_mult * type_mult * rng.lognormal(0, 0.12, n)
    price = np.where(rent, np.round(price / 500) * 500, np.round(price / 10_000) * 10_000).clip(1000)
    lat = np.array([d[2] for d in districts])[district] + rng.normal(0, 0.012, n)
    lon = np.array([d[3] for d in districts])[district] + rng.normal(0, 0.02, n)

    week = pd.Timedelta(days=cfg.days)
    pre = rng.random(n) < 0.5
    offset_s = np.where(pre, -rng.uniform(1, 45, n) * 86400, rng.uniform(0, cfg.days, n) * 86400)
    last_day = ~pre & (rng.random(n) < 0.12)  # guaranteed share of last-day (cold-start) listings
    offset_s = np.where(last_day, (cfg.days - 1 + rng.uniform(0, 0.9, n)) * 86400, offset_s)
    created = WEEK_START + pd.to_timedelta(np.round(offset_s), unit="s")
    withdraw = rng.random(n) < np.where(pre, 0.2, 0.08)
    end_s = cfg.days * 86400.0
    lo = np.maximum(offset_s, 0) + 3600
    after_lo = lo + rng.random(n) * np.clip(end_s - lo, 0, None)  # uniform between lo and the week's end
    withdrawn_s = np.where(withdraw & (lo < end_s), after_lo, np.inf)

    item_ids = np.array([f"L{i:06d}" for i in range(n)])
    base = pd.DataFrame(
        {
            "item_id": item_ids,
            "deal_type": np.where(rent, "rent", "sale"),
            "property_type": np.array(["flat", "room", "house", "townhouse"])[ptype],
            "city": np.array([c[0] for c in CITIES])[city],
            "district": np.array([d[1] for d in districts])[district],
            "rooms": rooms.astype("int64"),
            "area_m2": area.astype(float),
            "floor": floor.astype("int64"),
            "floors_total": floors_total.astype("int64"),
            "price": price.astype(float),
            "lat": lat.round(6),
            "lon": lon.round(6),
            "created_at": created,
            "event_timestamp": created,
        }
    )
    drop = rng.random(n) < 0.12
    drop_s = lo + rng.random(n) * np.clip(end_s - lo, 0, None)
    drop &= drop_s < np.minimum(withdrawn_s, end_s)
    v2 = base[drop].copy()
    v2["price"] = np.round(v2["price"] * rng.uniform(0.9, 0.97, len(v2)), -2)
    v2["event_timestamp"] = WEEK_START + pd.to_timedelta(np.round(drop_s[drop]), unit="s")
    listings = pd.concat([base, v2], ignore_index=True)

    market = {
        "city": city,
        "rent": rent,
        "district": district,
        "d_city": d_city,
        "rooms": rooms,
        "price": price,
        "lat": lat,
        "lon": lon,
        "attract": rng.lognormal(0, 0.7, n),
        "created_s": offset_s,
        "withdrawn_s": withdrawn_s,
        "item_ids": item_ids,
        "week_s": week.total_seconds(),
    }
    return listings, market


def _typical_price(m: dict, city: int, rent: bool, rooms: int, rng: np.random.Generator) -> float:
    pool = np.flatnonzero((m["city"] == city) & (m["rent"] == rent))
    close = pool[np.abs(m["rooms"][pool] - rooms) <= 0]
    pool = close if len(close) >= 3 else pool
    return float(np.median(m["price"][pool]) * rng.lognormal(0, 0.25))


def _make_week(cfg: WeekConfig, m: dict, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    n_cities = len(CITIES)
    city_w = _zipf(n_cities, 1.0)
    pools = {
        (c, r): np.flatnonzero((m["city"] == c) & (m["rent"] == r)) for c in range(n_cities) for r in (True, False)
    }
    log_price = np.log(m["price"])
    rows_user, rows_item, rows_t, rows_type, labels = [], [], [], [], []
    hour_p = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
    for u in range(cfg.users):
        uid = f"U{u:06d}"
        intent = rng.choice(3, p=[0.55, 0.35, 0.10])
        p_rent = (0.96, 0.04, 0.5)[intent]
        home = int(rng.choice(n_cities, p=city_w))
        second = int(rng.choice(n_cities, p=city_w)) if rng.random() < 0.05 else -1
        room_pref = int(rng.choice(5, p=[0.12, 0.33, 0.32, 0.18, 0.05]))
        budget = {(home, r): _typical_price(m, home, r, room_pref, rng) for r in (True, False)}
        own = np.flatnonzero(m["d_city"] == home)
        fav_district = int(own[rng.choice(len(own), p=_zipf(len(own), 0.7))]) if rng.random() < 0.6 else -1
        labels.append((uid, ("rent", "sale", "both")[intent], p_rent, CITIES[home][0]))

        n_sessions = 1 + rng.poisson(1.2)
        starts = np.sort(
            rng.integers(0, cfg.days, n_sessions) * 86400.0
            + rng.choice(24, n_sessions, p=hour_p) * 3600.0
            + rng.uniform(0, 3600, n_sessions)
        )
        last = -1
        t_end = -np.inf
        for start in starts:
            t = max(start, t_end + 600)
            if t >= cfg.days * 86400:
                break
            rent = bool(rng.random() < p_rent)
            city = second if second >= 0 and rng.random() < 0.3 else home
            if (city, rent) not in budget:
                budget[(city, rent)] = _typical_price(m, city, rent, room_pref, rng)
            bud = budget[(city, rent)]
            pool = pools[(city, rent)]
            live = pool[(m["created_s"][pool] <= t) & (m["withdrawn_s"][pool] > t)]
            if len(live) == 0:
                continue
            age_h = (t - m["created_s"][live]) / 3600
            fit = (
                np.exp(-((log_price[live] - np.log(bud)) ** 2) / (2 * 0.4**2))
                * np.exp(-0.5 * np.abs(m["rooms"][live] - room_pref))
                * np.where(m["district"][live] == fav_district, 2.5, 1.0)
            )
            base_w = m["attract"][live] * (1 + 2 * np.exp(-age_h / 24)) * fit
            seen = np.zeros(len(live), bool)
            prev = last if (last >= 0 and rng.random() < RESUME_P) else -1
            for _ in range(1 + rng.geometric(1 / 6)):
                w = base_w.copy()
                if prev >= 0 and rng.random() < REFINE_P:
                    w *= (
                        np.exp(-((log_price[live] - log_price[prev]) ** 2) / (2 * 0.06**2))
                        * np.where(m["district"][live] == m["district"][prev], 6.0, 1.0)
                        * np.exp(-1.5 * np.abs(m["rooms"][live] - m["rooms"][prev]))
                        * np.exp(-np.hypot(m["lat"][live] - m["lat"][prev], m["lon"][live] - m["lon"][prev]) / 0.02)
                    )
                w[seen] = 0.0
                if w.sum() <= 0:
                    break
                j = int(rng.choice(len(live), p=w / w.sum()))
                seen[j] = True
                item = int(live[j])
                rows_user.append(uid)
                rows_item.append(item)
                rows_t.append(t)
                rows_type.append(0)
                match = fit[j] / (fit[j] + 0.3)
                if rng.random() < 0.10 * match:
                    rows_user.append(uid)
                    rows_item.append(item)
                    rows_t.append(t + rng.uniform(5, 60))
                    rows_type.append(1)
                if rng.random() < 0.05 * match * (1.0 if rent == (p_rent >= 0.5) or intent == 2 else 0.3):
                    rows_user.append(uid)
                    rows_item.append(item)
                    rows_t.append(t + rng.uniform(61, 240))
                    rows_type.append(2)
                prev = last = item
                t += rng.uniform(15, 180)
            t_end = t
            for key in budget:
                budget[key] *= rng.lognormal(0, 0.1)
            if rng.random() < 0.1:
                room_pref = int(np.clip(room_pref + rng.choice([-1, 1]), 0, 4))

    ts = WEEK_START + pd.to_timedelta(np.round(np.array(rows_t) * 1e6).astype("int64"), unit="us")
    events = pd.DataFrame(
        {
            "user_id": rows_user,
            "item_id": m["item_ids"][np.array(rows_item, dtype=int)],
            "event_timestamp": ts,
            "event_type": np.array(["view", "favorite", "contact"])[np.array(rows_type, dtype=int)],
        }
    )
    events = events[events["event_timestamp"] < WEEK_START + pd.Timedelta(days=cfg.days)]
    labels_df = pd.DataFrame(labels, columns=["user_id", "intent", "p_rent", "home_city"])
    return events, labels_df


def generate_week(cfg: WeekConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return ``(listings, events, labels)`` for one synthetic week, a pure function of ``cfg``."""
    if cfg.users < 1 or cfg.listings < 10 or cfg.days < 1:
        raise ValueError("need at least 1 user, 10 listings and 1 day")
    rng = np.random.default_rng(cfg.seed)
    listings, market = _make_listings(cfg, rng)
    events, labels = _make_week(cfg, market, rng)
    listings = validate_listings(listings, source="synthetic listings")
    events = validate_events(events, listings, source="synthetic events")
    return listings, events, labels


def write_week(cfg: WeekConfig, out_dir: str | Path, partition_by_day: bool = False) -> dict[str, Path]:
    """Write the week; ``partition_by_day`` writes ``events.parquet`` as a folder of ``day=YYYY-MM-DD`` partitions."""
    listings, events, labels = generate_week(cfg)
    out_dir = Path(out_dir)
    if partition_by_day:
        by_day = events.assign(day=events["event_timestamp"].dt.strftime("%Y-%m-%d"))
        written = write_parquet_partitioned(by_day, out_dir / "events.parquet", "day")
    else:
        written = write_parquet(events, out_dir / "events.parquet")
    return {
        "listings": write_parquet(listings, out_dir / "listings.parquet"),
        "events": written,
        "labels": write_parquet(labels, out_dir / "labels.parquet"),
    }
