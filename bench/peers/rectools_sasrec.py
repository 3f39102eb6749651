"""Peer run: RecTools' SASRec on ML-1M (or Video), our leave-last-out split, our settings, in its own venv.

    python bench/peers/rectools_sasrec.py [--quick] [--epochs N] [--budget-min M] [--drop-last K] [--ml1m PATH]
                                          [--data video --max-len 50]

Run with any Python: it builds bench/peers/.venv-rectools (setup_rectools.sh) when missing and
re-runs itself there. Same split as ours (leave-last-out on the papers' file: train = all but each
user's last two items, test target = the last item, the history given to the model = all but the
last; ``--drop-last K`` first removes each user's last K items), same
dimension (64), blocks (2), heads (1), dropout (0.2), max length (200), batch (128), learning rate
(2e-3), softmax loss. One ``fit`` (one optimiser, as RecTools trains) runs until ``--epochs`` or
the training-time budget; a Lightning callback times each epoch and keeps a copy of the weights.
Afterwards each copy is loaded back and scored on the test items (HR@10 / NDCG@10, full ranking,
seen items filtered, computed here), so the curve of quality against training time can be set
against ours with no evaluation time counted. Writes bench/results/rectools_sasrec.json (ML-1M) or
rectools_sasrec_video.json (``--data video``: ``video.txt`` beside ML-1M, short sequences, ``--max-len 50``).
"""

from __future__ import annotations

import argparse
import copy
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
        os.chdir(HERE.parents[1])  # the checkout: `-m bench.peers...` imports bench.common from here
        os.execv(str(VENV_PY), [str(VENV_PY), "-m", "bench.peers.rectools_sasrec", *sys.argv[1:]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="1,000 users, 2 epochs")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--budget-min", type=float, default=10.0, help="training time budget (evaluation not counted)")
    p.add_argument("--drop-last", type=int, default=0, help="first drop each user's last N items")
    p.add_argument("--ml1m", default=str(ML1M))
    p.add_argument("--data", choices=("ml1m", "video"), default="ml1m")
    p.add_argument("--max-len", type=int, default=200)
    args = p.parse_args()
    path = Path(args.ml1m) if args.data == "ml1m" else Path(args.ml1m).with_name("video.txt")
    if not path.exists():
        print(f"{path} not found: RecTools peer skipped (give --ml1m PATH or set ML1M)")
        return

    import numpy as np
    import pandas as pd
    import torch
    from pytorch_lightning import Callback, Trainer
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    torch.set_num_threads(os.cpu_count() or 2)
    raw = pd.read_csv(path, sep=r"\s+", header=None, names=["user", "item"])
    if args.quick:
        raw = raw[raw["user"].isin(raw["user"].drop_duplicates().head(1000))]
    epochs = 2 if args.quick else args.epochs
    raw["pos"] = raw.groupby("user").cumcount()
    raw = raw[raw["pos"] < raw.groupby("user")["item"].transform("size") - args.drop_last]
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
    train = Dataset.construct(frame[raw["pos"] < raw["n"] - 2])
    history = Dataset.construct(frame[raw["pos"] < raw["n"] - 1])
    target = raw[raw["pos"] == raw["n"] - 1].set_index("user")["item"]

    def test_metrics() -> tuple[float, float]:
        # users RecTools cannot score (Video: a history of one distinct item) stay in the denominator as misses
        reco = model.recommend(
            users=target.index.to_numpy(), dataset=history, k=10, filter_viewed=True, on_unsupported_targets="ignore"
        )
        reco = reco.merge(target.rename("target"), left_on=Columns.User, right_index=True)
        hits = reco[reco[Columns.Item] == reco["target"]]
        ranks = hits.set_index(Columns.User)[Columns.Rank].reindex(target.index)  # 1-based, NaN = miss
        return float(ranks.notna().mean()), float((1.0 / np.log2(ranks.fillna(np.inf) + 1)).mean())

    class Snapshots(Callback):
        """Training seconds and a weight copy at the end of each epoch; stops once the budget is spent."""

        def __init__(self, budget_s: float) -> None:
            self.budget_s, self.train_s, self.states = budget_s, 0.0, []

        def on_train_epoch_start(self, trainer, module) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.train_s += time.perf_counter() - self.started
            self.states.append((self.train_s, copy.deepcopy(module.state_dict())))
            print(f"  epoch {len(self.states):3d}  train {self.train_s:6.0f} s", flush=True)
            if self.train_s >= self.budget_s:
                trainer.should_stop = True

    def trainer() -> Trainer:
        return Trainer(
            max_epochs=epochs,
            min_epochs=1,
            deterministic=True,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            enable_checkpointing=False,
            devices=1,
            callbacks=[Snapshots(args.budget_min * 60)],
        )

    model = SASRecModel(
        n_factors=64,
        n_blocks=2,
        n_heads=1,
        dropout_rate=0.2,
        session_max_len=args.max_len,
        epochs=epochs,
        lr=2e-3,
        batch_size=128,
        loss="softmax",
        deterministic=True,
        verbose=0,
        get_trainer_func=trainer,
    )
    model.fit(train)
    snapshots = next(c for c in model.fit_trainer.callbacks if isinstance(c, Snapshots))
    curve = []
    for epoch, (train_s, state) in enumerate(snapshots.states):
        model.lightning_model.load_state_dict(state)
        hr, ndcg = test_metrics()
        curve.append({"epoch": epoch + 1, "train_s": train_s, "test_hr@10": hr, "test_ndcg@10": ndcg})
        print(f"  epoch {epoch + 1:3d}  train {train_s:6.0f} s  test HR@10 {hr:.4f}  NDCG@10 {ndcg:.4f}", flush=True)
    train_s = snapshots.train_s
    best = max(curve, key=lambda c: c["test_ndcg@10"])
    from bench.common import machine  # torch, numpy and the standard library only: importable in the peer's venv

    out = {
        "machine": machine(),
        "peer": "RecTools SASRecModel",
        "data": args.data,
        "rectools": __import__("rectools").__version__,
        "torch": torch.__version__,
        "users": int(len(target)),
        "drop_last": args.drop_last,
        "epochs": len(curve),
        "fit_s": train_s,
        "epoch_s": train_s / len(curve),
        "hr@10": curve[-1]["test_hr@10"],
        "ndcg@10": curve[-1]["test_ndcg@10"],
        "best_hr@10": best["test_hr@10"],
        "best_ndcg@10": best["test_ndcg@10"],
        "curve": curve,
        "quick": args.quick,
        "settings": f"n_factors 64, n_blocks 2, n_heads 1, dropout 0.2, session_max_len {args.max_len}, batch 128, "
        "softmax, lr 2e-3",
    }
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "rectools_sasrec" if args.data == "ml1m" else f"rectools_sasrec_{args.data}"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    relaunch()
    main()
