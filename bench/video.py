"""Short sequences: SASRec on Amazon Video Games (``video.txt``) against LightFM, popularity and the RecTools peer.

    python -m bench.video [--quick] [--video PATH] [--budget-min 8]

Leave-last-out on the authors' file (31,013 users, 23,715 items, 9.3 clicks a user), full ranking, seen items
excluded: the regime closest to a week of listing clicks. Ours with the ``train`` defaults, nothing set (``loss=auto``
picks logQ-corrected sampled softmax for this catalogue), for the same training-time budget as the peer
(``python -m bench.peers.rectools_sasrec --data video --max-len 50 --budget-min 8``, its own venv).
Cost per real position is set against ML-1M's measured in the same process right after (``--ml1m-epochs`` epochs of
``--preset ml1m`` training with SASRec's layers, eager steps and every position of a window trained, as the Video
model has; default 3; 0 falls back to ``sasrec_ml1m.json``, whose run is the preset's own: compiled, overlapping
windows). Writes bench/results/video.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import ML1M, RESULTS, table, write
from embeddings.data import load_data
from embeddings.data.split import leave_last_out
from embeddings.models.lightfm_model import LightFMConfig
from embeddings.models.sasrec import SASRecConfig
from embeddings.models.zoo import make_model
from embeddings.stages.evaluate import evaluate
from embeddings.training.config import PRESETS
from embeddings.training.loop import TrainConfig


def ml1m_cost_per_position(path: Path, epochs: int) -> float | None:
    """Seconds a real position of ML-1M costs with ``--preset ml1m`` but SASRec's layers, as the Video model has
    (median epoch, validation not counted), timed here; with ``epochs`` 0 or no ML-1M file, from the last
    ``sasrec_quality.py`` run."""
    if epochs and path.exists():
        model_kw, train_kw = PRESETS["ml1m"]
        model_kw = {**model_kw, "layer": "sasrec", "ffn_mult": 1}  # the layers the Video model has: same work a token
        split = leave_last_out(load_data(path).events)
        # eager, as the Video model runs (the preset compiles its steps: a different way of running, not of data), and
        # every window's positions trained, as Video's are (the preset's overlapping windows compute context-only
        # positions that an epoch's position count leaves out)
        train_kw = {**train_kw, "compile": False, "windows": "all"}
        train = TrainConfig(**train_kw, epochs=epochs, patience=epochs)
        rec = make_model("sasrec", split, None, sasrec=SASRecConfig(**model_kw), train=train).fit(split)
        seconds = sorted(h["seconds"] for h in rec.history)  # the first epoch also builds the kernels
        return seconds[len(seconds) // 2] / rec.history[0]["positions"]
    saved = RESULTS / "sasrec_ml1m.json"
    ml = (json.loads(saved.read_text()).get("ml1m") or {}) if saved.exists() else {}
    return ml["epoch_s_median"] / ml["positions_per_epoch"] if ml.get("positions_per_epoch") else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="5,000 users, 1 minute")
    p.add_argument("--video", default=str(ML1M.with_name("video.txt")))
    p.add_argument("--budget-min", type=float, default=8.0)
    p.add_argument("--ml1m", default=str(ML1M), help="ML-1M file for the cost per position in the same run")
    p.add_argument("--ml1m-epochs", type=int, default=3, help="ML-1M epochs timed after Video (0: sasrec_ml1m.json)")
    args = p.parse_args()
    if not Path(args.video).exists():
        print(f"{args.video} not found: skipped")
        return
    events = load_data(args.video).events
    if args.quick:
        events = events[events["user_id"].isin(events["user_id"].drop_duplicates().head(5000))]
    split = leave_last_out(events)
    budget = 60.0 if args.quick else args.budget_min * 60
    rows = []
    for name in ("popular", "lightfm"):
        model = make_model(name, split, None, lightfm=LightFMConfig(epochs=30)).fit(split)
        rows.append({"model": model.name, **evaluate(model, split.test)})
    train = TrainConfig(time_budget_s=budget, patience=10)
    began = time.perf_counter()
    rec = make_model("sasrec", split, None, sasrec=SASRecConfig(), train=train).fit(split)
    fit_s = time.perf_counter() - began
    epochs = rec.history
    per_position = sum(h["seconds"] for h in epochs) / sum(h["positions"] for h in epochs)
    rows.append(
        {
            "model": f"ours: {rec.name}, {epochs[-1]['loss_function']}, {len(epochs)} epochs",
            **evaluate(rec, split.test),
            "fit_s": fit_s,
            "s_per_million_positions": per_position * 1e6,
        }
    )
    peer_path = RESULTS / "rectools_sasrec_video.json"
    peer = json.loads(peer_path.read_text()) if peer_path.exists() else None
    if peer:
        rows.append({"model": f"RecTools SASRec (peer), {peer['epochs']} epochs", "hr@10": peer["hr@10"],
                     "ndcg@10": peer["ndcg@10"], "fit_s": peer["fit_s"]})  # fmt: skip
    ours, lightfm = rows[2], rows[1]
    ratios = {
        "hr@10_over_lightfm": ours["hr@10"] / max(lightfm["hr@10"], 1e-12),
        "ndcg@10_over_lightfm": ours["ndcg@10"] / max(lightfm["ndcg@10"], 1e-12),
        "hr@10_over_rectools": ours["hr@10"] / peer["hr@10"] if peer else None,
        "ndcg@10_over_rectools": ours["ndcg@10"] / peer["ndcg@10"] if peer else None,
    }
    ml_per_position = ml1m_cost_per_position(Path(args.ml1m), min(args.ml1m_epochs, 1 if args.quick else 99))
    if ml_per_position:
        ratios["ml1m_s_per_million_positions"] = ml_per_position * 1e6
        ratios["cost_per_position_over_ml1m"] = per_position / ml_per_position
    print(table(rows, ["model", "hr@10", "ndcg@10", "fit_s", "s_per_million_positions"]))
    print(json.dumps(ratios, indent=2))
    print(f"\nwrote {write('video', {'rows': rows, **ratios, 'budget_s': budget, 'quick': args.quick})}")


if __name__ == "__main__":
    main()
