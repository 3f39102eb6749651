"""Is each ML-1M test item the next step after its history? A check of the file the benchmarks read.

    python bench/ml1m_file_check.py [--ml1m PATH]

The papers' ML-1M file (kang205/SASRec ``ml-1m.txt``) has 999,611 lines and 9,053,831 bytes. A
copy that lost each user's second-last line still looks fine (same users, same items) but its
last item is then two steps ahead of the history, which makes leave-last-out much harder than
in the papers. This script prints the file's size and a model-free symptom: an item-to-item
transition count model (fitted on each user's items before the last three) ranks
  * the second-last item from the items before it, and
  * the last item from the items before it.
In a file in time order both are one step ahead and score alike; a much lower figure for the
last item says the step before it is missing. Writes bench/results/ml1m_file_check.json.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from bench.common import ML1M, table, write
from embeddings.data.movielens import load_user_item_text
from embeddings.data.split import build_sequences, catalogue

PAPERS_FILE = {"lines": 999_611, "bytes": 9_053_831}


def transition_hr(seqs: list[np.ndarray], n_items: int, offset: int) -> float:
    """HR@10 of ranking item ``-offset`` of each user by transition counts from the item just before it."""
    counts = np.zeros((n_items, n_items), dtype=np.float32)
    for s in seqs:
        fit = s[:-3]
        np.add.at(counts, (fit[:-1], fit[1:]), 1.0)
    popularity = np.bincount(np.concatenate([s[:-3] for s in seqs]), minlength=n_items).astype(np.float32)
    hits = 0
    for s in seqs:
        history, target = s[:-offset], s[-offset]
        scores = counts[history[-1]] + 1e-6 * popularity  # popularity breaks ties
        scores[history] = -np.inf
        hits += int((scores > scores[target]).sum() < 10)
    return hits / len(seqs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ml1m", default=str(ML1M))
    args = p.parse_args()
    path = Path(args.ml1m)
    if not path.exists():
        print(f"{path} not found: check skipped")
        return
    data = path.read_bytes()
    events = load_user_item_text(path)
    items = catalogue(events, None)
    _, seqs = build_sequences(events, items)  # item indices in file order, as the benchmarks read them
    n_items = len(items)
    out = {
        "file": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "lines": data.count(b"\n"),
        "users": len(seqs),
        "items": n_items,
        "papers_file": PAPERS_FILE,
        "transition_hr@10_second_last": transition_hr(seqs, n_items, 2),
        "transition_hr@10_last": transition_hr(seqs, n_items, 1),
    }
    out["last_over_second_last"] = out["transition_hr@10_last"] / out["transition_hr@10_second_last"]
    print(table([out], ["lines", "bytes", "users", "items"]))
    print(f"papers' file: {PAPERS_FILE['lines']:,} lines, {PAPERS_FILE['bytes']:,} bytes")
    print(
        f"transition model HR@10: second-last item {out['transition_hr@10_second_last']:.4f}, "
        f"last item {out['transition_hr@10_last']:.4f} ({out['last_over_second_last']:.2f}x)"
    )
    print(f"wrote {write('ml1m_file_check', out)}")


if __name__ == "__main__":
    main()
