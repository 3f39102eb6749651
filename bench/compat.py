"""Compatible releases: does a consumer's model fitted on one release's user vectors survive the next retrains?

    python -m bench.compat [--quick] [--users N] [--weeks W] [--encoders hybrid id lst-frozen] [--train-weeks 1]
                           [--compat-weights 0.1 1] [--sequence-files video.txt ml-1m.txt]

The world: ``demo-data --weeks W`` (consecutive weeks of one synthetic site). Release k is a SASRec model trained
on week k alone (its own seed), as the weekly job trains it (``--train-weeks 2``: on weeks k-1 and k). The
consumer: a logistic regression fitted on release 0's user vectors as of week 1's end, on half the users,
predicting whether the user's clicks in week 2 are mostly rent; scored (ROC-AUC) on the other half.

After each retrain k, the consumer scores release k's vectors of the same held-out users, from the same clicks
(so only the space changed), read through:

- ``raw``: no map (what consumers got before releases);
- ``orthogonal`` / ``linear``: a map k -> k-1 fitted at release time on the vectors both models give the same
  inputs (every user's clicks up to week k's end, and the listings both know), chained back to release 0
  (``embeddings.space``; the publish does the same, ``embeddings.release``);
- ``orthogonal, users only``: the same without the listings in the fit;
- ``learned aligner`` (``id+compat loss W``): the ``id`` encoder trained with the training-time compatibility loss
  against the previous release's item vectors at weight W (``TrainConfig.compat_weight``, BC-Aligner style), read
  through the aligner it learned; its other rows are the post-hoc maps of those same models.

The tables give AUC ratios to release 0's own (target >= 0.98 after one retrain, >= 0.95 after four); the
recall@10 of each held-out user's week-2 clicks among release 0's listing vectors, ranked by release k's mapped
user vector, over the same with release 0's own (target >= 0.95); the consumer's AUC on users that only
release k knows (first click in week k + 1, label from week k + 2), through the same map, over release 0's AUC;
and each release's own HR@10 on its week's test clicks (the compatibility loss's cost, against plain ``id``).
The same measurement runs on Video and ML-1M in successive time slices (:func:`sequence_file`). A post-hoc map
costs the new model nothing: it trains unconstrained and the native views carry its own vectors.
Writes bench/results/compat.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from bench.common import ML1M, table, write
from embeddings.data import load_data
from embeddings.data.split import temporal_split
from embeddings.data.synthetic import WeekConfig, write_weeks
from embeddings.models.sasrec import SASRecConfig, compat_target
from embeddings.models.zoo import make_model
from embeddings.space import SpaceMap, fit_space_map
from embeddings.stages.embed import Embedder
from embeddings.stages.evaluate import evaluate
from embeddings.training.config import TrainConfig

MAPS = ("raw", "orthogonal", "linear", "orthogonal, users only")
FITS = {"orthogonal": ("orthogonal", True), "linear": ("linear", True), "orthogonal, users only": ("orthogonal", False)}


def _vectors(embedder: Embedder, events: pd.DataFrame, cutoff: pd.Timestamp) -> pd.Series:
    users = embedder.embed_users(events, cutoff, progress=False)
    return pd.Series(list(np.stack(users["embedding"])), index=users["user_id"])


def _stack(series: pd.Series, ids) -> np.ndarray:
    return np.stack(series.loc[ids].to_numpy())


def _mostly_rent(week) -> pd.Series:
    """Users with at least 3 clicks in ``week``: whether most of them are on rent listings."""
    rent = week.listings.drop_duplicates("item_id", keep="last").set_index("item_id")["deal_type"].eq("rent")
    share = week.events["item_id"].map(rent).groupby(week.events["user_id"]).agg(["mean", "size"])
    return share[share["size"] >= 3]["mean"] > 0.5


def one_encoder(
    encoder: str, weeks: list, folder: Path, epochs: int, train_weeks: int = 1, compat_weight: float = 0.0
) -> list[dict]:
    """``compat_weight`` > 0: each release after the first trains with the compatibility loss against the one
    before (``TrainConfig.compat_weight``), and its learned aligner is one more map (``learned aligner``)."""
    ends = [w.events["event_timestamp"].max().ceil("D") for w in weeks]
    everything = pd.concat([w.events for w in weeks], ignore_index=True)
    latest = weeks[-1].listings
    name = f"{encoder}+compat loss {compat_weight:g}" if compat_weight else encoder
    embedders, aligners, hr = [], [], []
    for k, week in enumerate(weeks):
        window = pd.concat([w.events for w in weeks[max(0, k - train_weeks + 1) : k + 1]], ignore_index=True)
        split = temporal_split(window, week.listings)
        cfg = SASRecConfig(item_encoder=encoder, max_len=50, dim=32)
        train = TrainConfig(epochs=epochs, seed=k, compat_weight=compat_weight)
        model = make_model("sasrec", split, week.listings, sasrec=cfg, train=train)
        if compat_weight and k:
            model.compat_target = compat_target(embedders[-1].model, split.item_ids)
        began = time.perf_counter()
        path = model.fit(split).save(folder / f"{encoder}-{compat_weight:g}-{k}.pt")
        hr.append(evaluate(model, split.test)["hr@10"])
        print(f"{name}: release {k} trained up to week {k + 1} in {time.perf_counter() - began:.0f} s", flush=True)
        embedders.append(Embedder.from_checkpoint(path, latest))
        if model.aligner is not None:
            a = model.aligner
            weight, bias = a.weight.detach().numpy().T, a.bias.detach().numpy()
            aligners.append(SpaceMap(weight, np.zeros(weight.shape[0]), bias, f"r{k}", f"r{k - 1}"))

    label = _mostly_rent(weeks[1])
    base = _vectors(embedders[0], everything, ends[0])
    consumer, test_users, auc0 = _consumer(base, label)
    # retrieval: old listing vectors (release 0's) against user vectors; the targets are week 2's clicks
    items0 = embedders[0].embed_items(ends[0]).set_index("item_id")["embedding"]
    targets = weeks[1].events[weeks[1].events["item_id"].isin(items0.index)].groupby("user_id")["item_id"].agg(set)
    seekers = test_users.intersection(targets.index)
    recall0 = _recall(_stack(base, seekers), items0, targets.loc[seekers])
    maps = MAPS + (("learned aligner",) if compat_weight else ())
    rows = [
        {"encoder": name, "retrains": 0, "map": m, "auc": auc0, "ratio": 1.0, "recall@10": recall0,
         "recall_ratio": 1.0, "train_weeks": train_weeks, "hr@10": hr[0]}
        for m in maps
    ]  # fmt: skip

    chains: dict[str, object] = {}
    for k in range(1, len(weeks)):
        new_v, old_v = (_vectors(e, everything, ends[k]) for e in (embedders[k], embedders[k - 1]))
        shared = new_v.index.intersection(old_v.index)
        new_i = embedders[k].embed_items(ends[k]).set_index("item_id")["embedding"]
        old_i = embedders[k - 1].embed_items(ends[k]).set_index("item_id")["embedding"]
        items = new_i.index.intersection(old_i.index)
        for map_name, (kind, with_items) in FITS.items():
            new = _stack(new_v, shared)
            old = _stack(old_v, shared)
            if with_items:
                new, old = np.vstack([new, _stack(new_i, items)]), np.vstack([old, _stack(old_i, items)])
            step = fit_space_map(new, old, f"r{k}", f"r{k - 1}", kind)
            chains[map_name] = step if k == 1 else step.then(chains[map_name])
        if compat_weight:
            step = aligners[k - 1]
            chains["learned aligner"] = step if k == 1 else step.then(chains["learned aligner"])
        now = _vectors(embedders[k], everything, ends[0])  # release 0's inputs
        fresh = _fresh(weeks, k, new_v)  # users whose first click is in week k + 1: no earlier release saw them
        for m in maps:
            read = (lambda x: x) if m == "raw" else chains[m]
            auc = roc_auc_score(label[test_users], consumer.predict_proba(read(_stack(now, test_users)))[:, 1])
            recall = _recall(read(_stack(now, seekers)), items0, targets.loc[seekers])
            row = {"encoder": name, "retrains": k, "map": m, "auc": auc, "ratio": auc / auc0, "hr@10": hr[k]}
            row |= {"recall@10": recall, "recall_ratio": recall / recall0, "train_weeks": train_weeks}
            if fresh is not None:
                users_f, labels_f = fresh
                probs = consumer.predict_proba(read(_stack(new_v, users_f)))[:, 1]
                row |= {"fresh_users": len(users_f), "fresh_auc": roc_auc_score(labels_f, probs)}
                row["fresh_ratio"] = row["fresh_auc"] / auc0
            rows.append(row)
        print(table([r for r in rows if r["retrains"] == k], COLUMNS))
    return rows


def sequence_file(path: Path, releases: int, epochs: int) -> list[dict]:
    """The same measurement on a public ``user item`` file (Video, ML-1M), in successive time slices.

    The files keep each user's order but no clock, so time is each user's share of their sequence: cut-off k is
    (k + 2) / (releases + 2) of every user's clicks. Release k (the ``id`` encoder, the only one without listing
    features) trains on everything before cut-off k (the history a site keeps). The consumer, fitted on release
    0's vectors as of cut-off 0 on half the users: "most of the user's next-slice clicks are on popular items"
    (the top fifth of items by clicks before cut-off 0; labels split at the median share), and recall@10 of the
    next slice's items among release 0's item vectors."""
    from embeddings.data.movielens import EPOCH, load_user_item_text

    events = load_user_item_text(path)
    position = events.groupby("user_id", sort=False).cumcount()
    share = position / events.groupby("user_id", sort=False)["item_id"].transform("size")
    events = events.assign(event_timestamp=EPOCH + pd.to_timedelta((share * 1e6).round(), unit="s"))
    cuts = [EPOCH + pd.Timedelta(seconds=1e6 * (k + 2) / (releases + 2)) for k in range(releases + 1)]
    embedders, hr = [], []
    for k in range(releases):
        window = events[events["event_timestamp"] < cuts[k + 1]]
        split = temporal_split(window, None, cuts[k])
        cfg = SASRecConfig(item_encoder="id", max_len=50, dim=32)
        model = make_model("sasrec", split, None, sasrec=cfg, train=TrainConfig(epochs=epochs, seed=k))
        began = time.perf_counter()
        model.fit(split)
        hr.append(evaluate(model, split.test)["hr@10"])
        print(f"{path.name}: release {k} in {time.perf_counter() - began:.0f} s, HR@10 {hr[-1]:.4f}", flush=True)
        embedders.append(Embedder(model))
    before = events[events["event_timestamp"] < cuts[0]]
    popular = set(before["item_id"].value_counts().index[: max(1, before["item_id"].nunique() // 5)])
    nxt = events[(events["event_timestamp"] >= cuts[0]) & (events["event_timestamp"] < cuts[1])]
    share_popular = nxt["item_id"].isin(popular).groupby(nxt["user_id"]).agg(["mean", "size"])
    share_popular = share_popular[share_popular["size"] >= 3]["mean"]
    label = share_popular > share_popular.median()
    base = _vectors(embedders[0], events, cuts[0])
    consumer, test_users, auc0 = _consumer(base, label)
    items0 = _items(embedders[0])
    targets = nxt[nxt["item_id"].isin(items0.index)].groupby("user_id")["item_id"].agg(set)
    seekers = test_users.intersection(targets.index)
    recall0 = _recall(_stack(base, seekers), items0, targets.loc[seekers])
    name = f"id ({path.stem})"
    rows = [{"encoder": name, "retrains": 0, "map": m, "auc": auc0, "ratio": 1.0, "recall@10": recall0,
             "recall_ratio": 1.0, "hr@10": hr[0]} for m in MAPS]  # fmt: skip
    chains: dict = {}
    for k in range(1, releases):
        new_v, old_v = (_vectors(e, events, cuts[k]) for e in (embedders[k], embedders[k - 1]))
        shared = new_v.index.intersection(old_v.index)
        new_i, old_i = _items(embedders[k]), _items(embedders[k - 1])
        items = new_i.index.intersection(old_i.index)
        for map_name, (kind, with_items) in FITS.items():
            new, old = _stack(new_v, shared), _stack(old_v, shared)
            if with_items:
                new, old = np.vstack([new, _stack(new_i, items)]), np.vstack([old, _stack(old_i, items)])
            step = fit_space_map(new, old, f"r{k}", f"r{k - 1}", kind)
            chains[map_name] = step if k == 1 else step.then(chains[map_name])
        now = _vectors(embedders[k], events, cuts[0])
        for m in MAPS:
            read = (lambda x: x) if m == "raw" else chains[m]
            auc = roc_auc_score(label[test_users], consumer.predict_proba(read(_stack(now, test_users)))[:, 1])
            recall = _recall(read(_stack(now, seekers)), items0, targets.loc[seekers])
            rows.append({"encoder": name, "retrains": k, "map": m, "auc": auc, "ratio": auc / auc0,
                         "recall@10": recall, "recall_ratio": recall / recall0, "hr@10": hr[k]})  # fmt: skip
        print(table([r for r in rows if r["retrains"] == k], COLUMNS))
    return rows


def _items(embedder: Embedder) -> pd.Series:
    """The item vectors an id model trained (those it can rank)."""
    return embedder.embed_items().set_index("item_id")["embedding"]


COLUMNS = ["encoder", "retrains", "map", "auc", "ratio", "recall@10", "recall_ratio", "fresh_users", "fresh_ratio"]


def _consumer(base: pd.Series, label: pd.Series):
    """The reference consumer: a logistic regression fitted on half the labelled users' vectors ``base``; returns
    it, the other half and its ROC-AUC on them."""
    users = base.index.intersection(label.index)
    order = np.random.default_rng(0).permutation(len(users))
    fit_users, test_users = users[order[: len(users) // 2]], users[order[len(users) // 2 :]]
    consumer = LogisticRegression(max_iter=2000).fit(_stack(base, fit_users), label[fit_users])
    auc = roc_auc_score(label[test_users], consumer.predict_proba(_stack(base, test_users))[:, 1])
    return consumer, test_users, auc


def _recall(users: np.ndarray, items: pd.Series, targets: pd.Series, k: int = 10) -> float:
    """Mean recall@k of each user's target listings among ``items`` ranked by the dot product."""
    scores = users @ np.stack(items.to_numpy()).T
    top = np.argsort(-scores, axis=1)[:, :k]
    ids = items.index.to_numpy()
    hits = [len(set(ids[row]) & want) / min(k, len(want)) for row, want in zip(top, targets, strict=True)]
    return float(np.mean(hits))


def _fresh(weeks: list, k: int, vectors: pd.Series) -> tuple[pd.Index, pd.Series] | None:
    """Users whose first click is in week k + 1 (release k is the first to embed them) and who have a label in
    week k + 2: their ids and labels."""
    if k + 1 >= len(weeks):
        return None
    seen = set(pd.concat([w.events["user_id"] for w in weeks[:k]]))
    label = _mostly_rent(weeks[k + 1])
    new = pd.Index(sorted(set(weeks[k].events["user_id"]) - seen)).intersection(label.index)
    new = new.intersection(vectors.index)
    return (new, label[new]) if len(new) >= 20 and label[new].nunique() == 2 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--weeks", type=int, default=5, help="releases: one per week (4 retrains with 5)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--encoders", nargs="+", default=["hybrid", "id", "lst-frozen"])
    p.add_argument("--train-weeks", type=int, default=1, help="each release trains on this many latest weeks")
    p.add_argument(
        "--compat-weights",
        type=float,
        nargs="+",
        default=[0.1, 1.0],
        help="also train the id encoder with the training-time compatibility loss at these weights (0: none)",
    )
    p.add_argument(
        "--sequence-files",
        nargs="*",
        default=[str(ML1M.with_name("video.txt")), str(ML1M)],
        help="public user-item files measured in time slices (none: only the synthetic weeks)",
    )
    args = p.parse_args()
    users, n_weeks, epochs = (1500, 3, 8) if args.quick else (args.users, args.weeks, args.epochs)
    folder = Path(tempfile.mkdtemp(prefix="lst-compat-"))
    write_weeks(WeekConfig(users=users, listings=users, weeks=n_weeks, seed=0), folder)
    weeks = [load_data(folder / f"week-{k + 1}") for k in range(n_weeks)]
    runs = [(enc, 0.0) for enc in args.encoders] + [("id", w) for w in args.compat_weights if w > 0]
    rows = [r for enc, w in runs for r in one_encoder(enc, weeks, folder, epochs, args.train_weeks, w)]
    for path in map(Path, args.sequence_files):
        if path.exists():
            rows += sequence_file(path, n_weeks, epochs)
        else:
            print(f"{path}: not found, skipped")
    frame = pd.DataFrame(rows)
    for value, what in (
        ("ratio", "consumer ROC-AUC on release k's vectors / on release 0's (same users, same clicks)"),
        ("recall_ratio", "recall@10 of week-2 clicks, release 0's listing vectors: release k's users / release 0's"),
        ("fresh_ratio", "consumer ROC-AUC on users new in week k+1 (release k's vectors) / release 0's AUC"),
    ):
        if value not in frame:
            continue
        wide = frame.pivot_table(index=["encoder", "retrains"], columns="map", values=value)
        print(f"\n{what}\n")
        print(wide[[m for m in (*MAPS, "learned aligner") if m in wide]].round(4).to_string())
    cost = frame[frame["map"] == "raw"].pivot_table(index="retrains", columns="encoder", values="hr@10")
    print("\nthe release's own HR@10 on its week's test clicks (cost of the compatibility loss: against id)\n")
    print(cost.round(4).to_string())
    name = "compat" if args.train_weeks == 1 else f"compat_train{args.train_weeks}w"
    payload = {"users": users, "weeks": n_weeks, "epochs": epochs, "train_weeks": args.train_weeks, "rows": rows}
    print(f"wrote {write(name, payload)}")


if __name__ == "__main__":
    main()
