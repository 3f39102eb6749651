"""Peer run: RecTools' SASRec on ML-1M, our leave-last-out split, our settings, in its own venv.

    python bench/peers/rectools_sasrec.py [--quick] [--epochs N] [--ml1m PATH]

Run with any Python: it builds bench/peers/.venv-rectools (setup_rectools.sh) when missing and
re-runs itself there. Same split as ours (train = all but each user's last two items; test target =
the last item, the history given to the model = all but the last), same dimension (64), blocks (2),
heads (1), dropout (0.2), max length (200), batch (128), softmax loss, a fixed number of epochs.
Full ranking with seen items filtered, HR@10 and NDCG@10 computed here. Writes
bench/results/rectools_sasrec.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_PY = HERE / ".venv-rectools" / "bin" / "python"
RESULTS = Path(os.environ.get("LST_BENCH_RESULTS", HERE.parent / "results"))
ML1M = Path(os.environ.get("ML1M", HERE.parents[2] / "shared" / "data" / "ml-1m.txt"))


def relaunch() -> None:
    """Re-run this script inside the peer's own virtual environment (created on first use)."""
    if Path(sys.prefix).resolve() != (HERE / ".venv-rectools").resolve():
        subprocess.run([str(HERE / "setup_rectools.sh")], check=True, stdout=subprocess.DEVNULL)
        os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="1,000 users, 1 epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ml1m", default=str(ML1M))
    args = p.parse_args()
    if not Path(args.ml1m).exists():
        print(f"{args.ml1m} not found: RecTools peer skipped (give --ml1m PATH or set ML1M)")
        return

    import numpy as np
    import pandas as pd
    import torch
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    torch.set_num_threads(os.cpu_count() or 2)
    raw = pd.read_csv(args.ml1m, sep=r"\s+", header=None, names=["user", "item"])
    if args.quick:
        raw = raw[raw["user"].isin(raw["user"].drop_duplicates().head(1000))]
    epochs = 1 if args.quick else args.epochs
    raw["pos"] = raw.groupby("user").cumcount()
    raw["n"] = raw.groupby("user")["item"].transform("size")
    raw = raw[raw["n"] >= 3]
    frame = pd.DataFrame(
        {
            Columns.User: raw["user"],
            Columns.Item: raw["item"],
            Columns.Weight: 1.0,
            Columns.Datetime: pd.Timestamp("2000-01-01") + pd.to_timedelta(raw["pos"], unit="s"),
        }
    )
    train = frame[raw["pos"] < raw["n"] - 2]
    history = frame[raw["pos"] < raw["n"] - 1]
    target = raw[raw["pos"] == raw["n"] - 1].set_index("user")["item"]

    model = SASRecModel(
        n_factors=64,
        n_blocks=2,
        n_heads=1,
        dropout_rate=0.2,
        session_max_len=200,
        epochs=epochs,
        lr=1e-3,
        batch_size=128,
        loss="softmax",
        deterministic=True,
        verbose=0,
    )
    start = time.perf_counter()
    model.fit(Dataset.construct(train))
    fit_s = time.perf_counter() - start
    reco = model.recommend(users=target.index.to_numpy(), dataset=Dataset.construct(history), k=10, filter_viewed=True)
    reco = reco.merge(target.rename("target"), left_on=Columns.User, right_index=True)
    hits = reco[reco[Columns.Item] == reco["target"]]
    ranks = hits.set_index(Columns.User)[Columns.Rank].reindex(target.index)  # 1-based, NaN = miss
    hr = float(ranks.notna().mean())
    ndcg = float((1.0 / np.log2(ranks.fillna(np.inf) + 1)).mean())
    out = {
        "peer": "RecTools SASRecModel",
        "rectools": __import__("rectools").__version__,
        "torch": torch.__version__,
        "users": int(len(target)),
        "epochs": epochs,
        "fit_s": fit_s,
        "epoch_s": fit_s / epochs,
        "hr@10": hr,
        "ndcg@10": ndcg,
        "quick": args.quick,
        "settings": "n_factors 64, n_blocks 2, n_heads 1, dropout 0.2, session_max_len 200, batch 128, "
        "softmax, lr 1e-3",
    }
    print(json.dumps(out, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rectools_sasrec.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    relaunch()
    main()
