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

Consecutive weeks (``weeks`` > 1). The same world runs for ``weeks`` weeks: listings are published and
withdrawn all along, users have 1 + Poisson(1.2 x weeks) sessions spread over their days in the span (so most return
week after week), budgets and room counts drift as in one week, and 15 % of the
rent or sale users switch intent once, at a random moment (a move, a change of plan). Half the users are there
from the first day; the others arrive on a random day of the span (new users each week). :func:`write_weeks` cuts it
into one folder per week, each as a weekly job sees it: the week's clicks, the listing versions known by the
week's end, and each user's intent at the week's end. One week (``weeks`` = 1) draws exactly what it always did.

How it is drawn, so that a click costs the same at 1,000 or 300,000 listings: each click is one
sampling-importance-resampling step over ``_CANDIDATES`` candidates, proposed by attractiveness from the
session's pool (and, when refining, half of them from the listings next to the previous click in the
pool's district-and-price order); each candidate is weighed by the weight above over the density it was
proposed with, and one is drawn in proportion. The sessions of a block of users advance one click at a
time together, in numpy. Blocks of ``block_users`` users have their own random streams, so processes
can share them out and memory holds a few blocks, never the whole week.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embeddings.data.contract import validate_events, validate_listings
from embeddings.errors import InputError
from embeddings.io import write_parquet, write_parquet_partitioned
from embeddings.progress import progress


def recent_start(days: int) -> pd.Timestamp:
    """The default first day of a synthetic week: UTC midnight ``days`` days before today, so the week ends at
    today's midnight. Published values are then fresh (the feature views' ttl is measured from the real clock)."""
    return pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=days)


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
SWITCH_P = 0.15  # consecutive weeks: share of rent or sale users who switch intent once
ARRIVE_P = 0.5  # consecutive weeks: share of users who arrive during the span (the others are there from the start)


@dataclass(frozen=True)
class WeekConfig:
    users: int = 5000
    listings: int = 6000
    days: int = 7
    seed: int = 0
    block_users: int = 20_000  # users per block: each block has its own random stream (part of the world's
    # definition), so any number of processes writes the same week and memory holds a few blocks of events
    start: pd.Timestamp | str | None = None  # the first week's first midnight (UTC); default: recent_start of
    # the whole span. The data is a function of the seed; the start only shifts every timestamp.
    weeks: int = 1  # consecutive weeks of the same world (``days`` each)

    def __post_init__(self) -> None:
        start = recent_start(self.span_days) if self.start is None else pd.Timestamp(self.start)
        object.__setattr__(self, "start", start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC"))

    @property
    def span_days(self) -> int:
        return self.days * self.weeks

    @property
    def n_blocks(self) -> int:
        return -(-self.users // self.block_users)


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

    pre = rng.random(n) < 0.5
    span = cfg.span_days
    offset_s = np.where(pre, -rng.uniform(1, 45, n) * 86400, rng.uniform(0, span, n) * 86400)
    last_day = ~pre & (rng.random(n) < 0.12)  # guaranteed share of last-day (cold-start) listings
    offset_s = np.where(last_day, (span - 1 + rng.uniform(0, 0.9, n)) * 86400, offset_s)
    created = cfg.start + pd.to_timedelta(np.round(offset_s), unit="s")
    withdraw = rng.random(n) < np.where(pre, 0.2, 0.08)
    end_s = span * 86400.0
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
    v2["event_timestamp"] = cfg.start + pd.to_timedelta(np.round(drop_s[drop]), unit="s")
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
        "created_s": np.round(offset_s),  # as published (whole seconds): no click before it
        "withdrawn_s": withdrawn_s,
        "item_ids": item_ids,
    }
    return listings, market


_CANDIDATES = 64  # candidates per click (sampling-importance-resampling)
_WINDOW = 24  # refining: candidates within this many places of the previous click in its pool's order


@dataclass(frozen=True)
class _Market:
    """The listings as arrays the click sampler reads, and each (city, deal type) pool ordered by district and
    price, so "listings like the previous click" are a window of that order."""

    city: np.ndarray
    rent: np.ndarray
    district: np.ndarray
    d_city: np.ndarray
    rooms: np.ndarray
    log_price: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    attract: np.ndarray
    created_s: np.ndarray
    withdrawn_s: np.ndarray
    item_ids: np.ndarray
    pool: np.ndarray  # city * 2 + (0 rent, 1 sale) of each listing
    order: np.ndarray  # listings by (pool, district, price)
    place: np.ndarray  # listing -> its place in ``order``
    pool_bounds: np.ndarray  # pool p holds order[pool_bounds[p]:pool_bounds[p + 1]]
    cum_attract: np.ndarray  # cumulative attractiveness along ``order``, with a leading 0
    typical_log_price: np.ndarray  # (city, deal, rooms 0..4): median log price of such listings


def _market(m: dict) -> _Market:
    n_pools = 2 * len(CITIES)
    pool = m["city"] * 2 + (~m["rent"]).astype(int)
    log_price = np.log(m["price"])
    order = np.lexsort((log_price, m["district"], pool))
    place = np.empty_like(order)
    place[order] = np.arange(len(order))
    typical = np.zeros((len(CITIES), 2, 5))
    for p in range(n_pools):
        in_pool = pool == p
        for r in range(5):
            close = in_pool & (m["rooms"] == r)
            pick = close if close.sum() >= 3 else in_pool
            typical[p // 2, p % 2, r] = np.median(log_price[pick]) if pick.any() else np.median(log_price)
    return _Market(
        city=m["city"], rent=m["rent"], district=m["district"], d_city=m["d_city"], rooms=m["rooms"],
        log_price=log_price, lat=m["lat"], lon=m["lon"], attract=m["attract"], created_s=m["created_s"],
        withdrawn_s=m["withdrawn_s"], item_ids=m["item_ids"], pool=pool, order=order, place=place,
        pool_bounds=np.searchsorted(pool[order], np.arange(n_pools + 1)),
        cum_attract=np.concatenate([[0.0], np.cumsum(m["attract"][order])]),
        typical_log_price=typical,
    )  # fmt: skip


def _propose(mk: _Market, pool: np.ndarray, prev: np.ndarray, near: np.ndarray, rng: np.random.Generator):
    """Candidate listings per session (rows) and the density each was proposed with: by attractiveness from the
    session's pool, and for ``near`` rows half of them from the window around the previous click."""
    rows, half = len(pool), _CANDIDATES // 2
    lo, hi = mk.pool_bounds[pool], mk.pool_bounds[pool + 1]
    z_lo, z_hi = mk.cum_attract[lo], mk.cum_attract[hi]
    draw = z_lo[:, None] + rng.random((rows, _CANDIDATES)) * (z_hi - z_lo)[:, None]
    place = np.clip(np.searchsorted(mk.cum_attract, draw, side="right") - 1, lo[:, None], hi[:, None] - 1)
    centre = mk.place[np.maximum(prev, 0)]
    w_lo, w_hi = np.maximum(centre - _WINDOW, lo), np.minimum(centre + _WINDOW + 1, hi)
    window = np.maximum(w_hi - w_lo, 1)[:, None]
    beside = w_lo[:, None] + (rng.random((rows, _CANDIDATES - half)) * window).astype(np.int64)
    place[:, half:] = np.where(near[:, None], beside, place[:, half:])
    items = mk.order[place]
    q = mk.attract[items] / (z_hi - z_lo)[:, None]
    in_window = (place >= w_lo[:, None]) & (place < w_hi[:, None])
    q = np.where(near[:, None], 0.5 * q + 0.5 * in_window / window, q)
    return items, q


def _block(cfg: WeekConfig, mk: _Market, block: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events and labels of users ``block * cfg.block_users ...``, from the block's own random stream."""
    rng = np.random.default_rng([cfg.seed, 1, block])
    first = block * cfg.block_users
    n = min(cfg.users, first + cfg.block_users) - first
    n_cities, city_w, week_s = len(CITIES), _zipf(len(CITIES), 1.0), cfg.span_days * 86400.0

    intent = rng.choice(3, size=n, p=[0.55, 0.35, 0.10])
    p_rent = np.array([0.96, 0.04, 0.5])[intent]
    home = rng.choice(n_cities, size=n, p=city_w)
    second = np.where(rng.random(n) < 0.05, rng.choice(n_cities, size=n, p=city_w), -1)
    cities = np.stack([home, np.where(second >= 0, second, home)], axis=1)  # search slot 0 home, 1 second city
    room_pref = rng.choice(5, size=n, p=[0.12, 0.33, 0.32, 0.18, 0.05])
    # log budget per (user, city slot, deal type) around the typical price of such flats there; drifts per session
    log_budget = mk.typical_log_price[cities[:, :, None], np.arange(2)[None, None, :], room_pref[:, None, None]]
    log_budget = log_budget + rng.normal(0, 0.25, (n, 2, 2))
    fav = np.full(n, -1)
    for ci in range(n_cities):
        own, mine = np.flatnonzero(mk.d_city == ci), np.flatnonzero(home == ci)
        fav[mine] = own[rng.choice(len(own), size=len(mine), p=_zipf(len(own), 0.7))]
    fav = np.where(rng.random(n) < 0.6, fav, -1)
    width = max(6, len(str(cfg.users - 1)))
    user_ids = np.char.add("U", np.char.zfill((first + np.arange(n)).astype(str), width)).astype(object)
    labels = pd.DataFrame(
        {
            "user_id": user_ids,
            "intent": np.array(["rent", "sale", "both"])[intent],
            "p_rent": p_rent,
            "home_city": np.array([c[0] for c in CITIES])[home],
        }
    )

    # consecutive weeks: who switches intent and when, from a stream of its own (one week draws as it always did)
    drift = np.random.default_rng([cfg.seed, 2, block])
    switch_s = np.where((cfg.weeks > 1) & (intent < 2) & (drift.random(n) < SWITCH_P), drift.random(n) * week_s, np.inf)
    p_rent_after = np.where(np.isfinite(switch_s), 1.0 - p_rent, p_rent)
    if cfg.weeks > 1:
        labels["intent_after"] = np.where(np.isfinite(switch_s), np.array(["sale", "rent", "both"])[intent], None)
        labels["switched_at"] = cfg.start + pd.to_timedelta(np.where(np.isfinite(switch_s), switch_s, np.nan), "s")

    n_sessions = 1 + rng.poisson(1.2 * cfg.weeks, n)
    arrival = np.zeros(n, int)
    if cfg.weeks > 1:  # half the users arrive during the span, with sessions in proportion to the days left
        arrival = np.where(drift.random(n) < ARRIVE_P, drift.integers(0, cfg.span_days, n), 0)
        n_sessions = 1 + drift.binomial(n_sessions - 1, 1 - arrival / cfg.span_days)
    hour_p = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
    shape = (n, int(n_sessions.max()))
    days = rng.integers(0, cfg.span_days, shape)
    if cfg.weeks > 1:  # an arrived user's sessions fall on the days after they came
        days = arrival[:, None] + days % (cfg.span_days - arrival)[:, None]
    starts = days * 86400.0 + rng.choice(24, shape, p=hour_p) * 3600.0
    starts = starts + rng.uniform(0, 3600, shape)
    starts = np.sort(np.where(np.arange(shape[1]) < n_sessions[:, None], starts, np.inf), axis=1)
    t_end, last, alive = np.full(n, -np.inf), np.full(n, -1), np.ones(n, bool)
    out_user, out_item, out_t, out_type = [], [], [], []

    def emit(users, items, t, kind):
        out_user.append(users), out_item.append(items), out_t.append(t), out_type.append(np.full(len(t), kind))

    for s in range(shape[1]):
        u = np.flatnonzero(alive & (n_sessions > s))
        t = np.maximum(starts[u, s], t_end[u] + 600)
        alive[u[t >= week_s]] = False  # the week is over for this user
        u, t = u[t < week_s], t[t < week_s]
        if len(u) == 0:
            break
        p_now = np.where(t >= switch_s[u], p_rent_after[u], p_rent[u])
        deal = (rng.random(len(u)) >= p_now).astype(int)  # 0 rent, 1 sale
        slot = ((second[u] >= 0) & (rng.random(len(u)) < 0.3)).astype(int)
        pool = cities[u, slot] * 2 + deal
        budget, pref, fav_u = log_budget[u, slot, deal], room_pref[u], fav[u]
        prev = np.where((last[u] >= 0) & (rng.random(len(u)) < RESUME_P), last[u], -1)
        n_clicks = 1 + rng.geometric(1 / 6, len(u))
        clicked = np.full((len(u), int(n_clicks.max())), -1)
        # sessions in a pool without listings get no click (tiny worlds)
        active = np.flatnonzero(mk.pool_bounds[pool + 1] > mk.pool_bounds[pool])
        for k in range(clicked.shape[1]):
            active = active[n_clicks[active] > k]
            if len(active) == 0:
                break
            a_prev = prev[active]
            refine = (a_prev >= 0) & (rng.random(len(active)) < REFINE_P)
            near = refine & (mk.pool[np.maximum(a_prev, 0)] == pool[active])
            items, q = _propose(mk, pool[active], a_prev, near, rng)
            tc = t[active][:, None]
            fit = (
                np.exp(-((mk.log_price[items] - budget[active][:, None]) ** 2) / (2 * 0.4**2))
                * np.exp(-0.5 * np.abs(mk.rooms[items] - pref[active][:, None]))
                * np.where(mk.district[items] == fav_u[active][:, None], 2.5, 1.0)
            )
            fresh = 1 + 2 * np.exp(-(tc - mk.created_s[items]) / 3600 / 24)
            live = (mk.created_s[items] <= tc) & (mk.withdrawn_s[items] > tc)
            weight = mk.attract[items] * fresh * fit * live
            p = np.maximum(a_prev, 0)[:, None]
            like_prev = (
                np.exp(-((mk.log_price[items] - mk.log_price[p]) ** 2) / (2 * 0.06**2))
                * np.where(mk.district[items] == mk.district[p], 6.0, 1.0)
                * np.exp(-1.5 * np.abs(mk.rooms[items] - mk.rooms[p]))
                * np.exp(-np.hypot(mk.lat[items] - mk.lat[p], mk.lon[items] - mk.lon[p]) / 0.02)
            )
            weight = np.where(refine[:, None], weight * like_prev, weight)
            weight[(items[:, :, None] == clicked[active, None, :k]).any(axis=2)] = 0.0  # no repeat in a session
            # sampling-importance-resampling: one candidate with probability proportional to weight / proposal
            score = np.full(weight.shape, -np.inf)
            np.log(weight / q, out=score, where=weight > 0)
            j = np.argmax(score - np.log(-np.log(rng.random(weight.shape))), axis=1)
            stop = ~np.isfinite(score.max(axis=1))  # nothing left to click: the session ends
            active, j, fit, items = active[~stop], j[~stop], fit[~stop], items[~stop]
            item = items[np.arange(len(active)), j]
            match = fit[np.arange(len(active)), j]
            match = match / (match + 0.3)
            ua, ta = u[active], t[active]
            emit(ua, item, ta, 0)
            fav_click = rng.random(len(active)) < 0.10 * match
            emit(ua[fav_click], item[fav_click], ta[fav_click] + rng.uniform(5, 60, int(fav_click.sum())), 1)
            on_intent = (deal[active] == 0) == (p_now[active] >= 0.5)
            contact = rng.random(len(active)) < 0.05 * match * np.where(on_intent | (intent[ua] == 2), 1.0, 0.3)
            emit(ua[contact], item[contact], ta[contact] + rng.uniform(61, 240, int(contact.sum())), 2)
            clicked[active, k] = prev[active] = last[ua] = item
            t[active] += rng.uniform(15, 180, len(active))
        t_end[u] = t
        log_budget[u] += rng.normal(0, 0.1, (len(u), 2, 2))
        turn = rng.random(len(u)) < 0.1
        room_pref[u[turn]] = np.clip(room_pref[u[turn]] + rng.choice([-1, 1], int(turn.sum())), 0, 4)

    users, items, t, kind = (np.concatenate(x) for x in (out_user, out_item, out_t, out_type))
    keep = t < week_s
    users, items, t, kind = users[keep], items[keep], t[keep], kind[keep]
    order = np.lexsort((kind, t, users))
    events = pd.DataFrame(
        {
            "user_id": user_ids[users[order]],
            "item_id": mk.item_ids[items[order]],
            "event_timestamp": cfg.start + pd.to_timedelta(np.round(t[order] * 1e6).astype("int64"), unit="us"),
            "event_type": np.array(["view", "favorite", "contact"])[kind[order]],
        }
    )
    return events, labels


def _world(cfg: WeekConfig) -> tuple[pd.DataFrame, _Market]:
    if cfg.users < 1 or cfg.listings < 10 or cfg.days < 1 or cfg.block_users < 1:
        raise InputError("demo-data: need at least 1 user, 10 listings, 1 day and 1 user per block")
    listings, market = _make_listings(cfg, np.random.default_rng(cfg.seed))
    return validate_listings(listings, source="synthetic listings"), _market(market)


_WORKER: dict = {}


def _worker_block(cfg: WeekConfig, block: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A block in a worker process, which builds the (deterministic) listings once and keeps them."""
    if _WORKER.get("cfg") != cfg:
        _WORKER.update(cfg=cfg, world=_world(cfg))
    listings, mk = _WORKER["world"]
    events, labels = _block(cfg, mk, block)
    return validate_events(events, listings, source=f"synthetic events, block {block}"), labels


def _blocks(cfg: WeekConfig, workers: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """``(events, labels)`` of each block of users, in block order, computed by ``workers`` processes."""
    n_blocks = cfg.n_blocks
    if workers <= 1 or n_blocks == 1:
        yield from (_worker_block(cfg, b) for b in range(n_blocks))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = deque(pool.submit(_worker_block, cfg, b) for b in range(min(n_blocks, 2 * workers)))
        for b in range(len(pending), n_blocks + len(pending)):
            done = pending.popleft().result()
            if b < n_blocks:  # keep at most 2 blocks per worker in flight: memory holds a few blocks, not the week
                pending.append(pool.submit(_worker_block, cfg, b))
            yield done


def generate_week(cfg: WeekConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return ``(listings, events, labels)`` for one synthetic week, a pure function of ``cfg``."""
    listings, mk = _world(cfg)
    parts = [_block(cfg, mk, b) for b in range(cfg.n_blocks)]
    events = validate_events(pd.concat([e for e, _ in parts], ignore_index=True), listings, "synthetic events")
    return listings, events, pd.concat([lab for _, lab in parts], ignore_index=True)


def write_week(
    cfg: WeekConfig, out_dir: str | Path, partition_by_day: bool = False, workers: int = 1
) -> dict[str, Path]:
    """Write the week, a block of users at a time (memory holds a few blocks, never the whole week).

    ``partition_by_day`` writes ``events.parquet`` as a folder of ``day=YYYY-MM-DD`` partitions (a file per
    block); ``workers`` processes generate blocks in parallel; the files are the same for any number of them.
    """
    out_dir = Path(out_dir)
    listings, _ = _world(cfg)
    labels: list[pd.DataFrame] = []

    def events() -> Iterator[pd.DataFrame]:
        blocks = progress(_blocks(cfg, workers), total=cfg.n_blocks, desc="users", unit="block")
        for block_events, block_labels in blocks:
            labels.append(block_labels)
            if partition_by_day:
                block_events = block_events.assign(day=block_events["event_timestamp"].dt.strftime("%Y-%m-%d"))
            yield block_events

    if partition_by_day:
        written = write_parquet_partitioned(events(), out_dir / "events.parquet", "day")
    else:
        written = write_parquet(events(), out_dir / "events.parquet")
    return {
        "listings": write_parquet(listings, out_dir / "listings.parquet"),
        "events": written,
        "labels": write_parquet(pd.concat(labels, ignore_index=True), out_dir / "labels.parquet"),
    }


def write_weeks(cfg: WeekConfig, out_dir: str | Path) -> list[Path]:
    """``cfg.weeks`` consecutive weeks of one world, a folder each (``week-1`` .. ``week-N``) as a weekly job sees
    its week: the week's clicks (``events.parquet``), every listing version known by the week's end
    (``listings.parquet``), and each user's intent at the week's end (``labels.parquet``)."""
    if cfg.weeks < 1:
        raise InputError("demo-data: --weeks must be at least 1")
    listings, events, labels = generate_week(cfg)
    out_dir = Path(out_dir)
    folders = []
    for k in range(cfg.weeks):
        begin = cfg.start + pd.Timedelta(days=cfg.days * k)
        end = begin + pd.Timedelta(days=cfg.days)
        week = events[(events["event_timestamp"] >= begin) & (events["event_timestamp"] < end)]
        known = listings[listings["event_timestamp"] < end]
        folder = out_dir / f"week-{k + 1}"
        write_parquet(known.reset_index(drop=True), folder / "listings.parquet")
        write_parquet(week.reset_index(drop=True), folder / "events.parquet")
        write_parquet(_labels_at(labels, end), folder / "labels.parquet")
        folders.append(folder)
    return folders


def _labels_at(labels: pd.DataFrame, when: pd.Timestamp) -> pd.DataFrame:
    """Each user's intent as of ``when`` (after a switch, the new one), in the one-week labels' shape."""
    if "switched_at" not in labels:
        return labels
    switched = labels["switched_at"].notna() & (labels["switched_at"] < when)
    intent = labels["intent"].where(~switched, labels["intent_after"])
    p_rent = intent.map({"rent": 0.96, "sale": 0.04, "both": 0.5})
    out = labels.assign(intent=intent, p_rent=p_rent)
    return out[["user_id", "intent", "p_rent", "home_city", "switched_at"]]
