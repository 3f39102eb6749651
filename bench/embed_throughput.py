"""User-embedding throughput: users per second for 200-click sequences, dim 64, 2 blocks, on this CPU.

    python -m bench.embed_throughput [--quick] [--users N]

The lower bound counts the forward FLOPs a user vector needs (every block but the last on all L positions:
12*L*d^2 for the projections and the MLP, 2*L^2*d for causal attention; the last block's keys and values on
all L, the rest of it at the last position only, as ``user_vectors`` computes it) over this machine's measured
float32 matmul rate. Weights are random: throughput does not depend on them. Writes
bench/results/embed_throughput.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import block_flops_per_token, matmul_rate, table, write
from embeddings.models.sasrec import SASRec, SASRecConfig, SASRecRecommender, pad_right


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=6000)
    args = p.parse_args()
    n_users = 2000 if args.quick else args.users
    L, d, blocks = 200, 64, 2
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items=args.items, max_len=L, dim=d, n_blocks=blocks)
    rec = SASRecRecommender(cfg)
    rec.model = SASRec(cfg).eval()
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, args.items, L) for _ in range(n_users)]
    rows = []
    for batch in (256, 1024):
        rec.user_vectors(histories[:batch], batch)  # warm-up
        start = time.perf_counter()
        rec.user_vectors(histories, batch)
        seconds = time.perf_counter() - start
        rows.append({"batch": batch, "users": n_users, "seconds": seconds, "users_per_s": n_users / seconds})
        print(table(rows[-1:], ["batch", "users", "seconds", "users_per_s"]).splitlines()[-1], flush=True)
    kv = 2 * 2 * d * d  # FLOPs of one position's key and value projections
    # the same forward pass with the last block on every position (as before last_only), alternated with it
    tokens = pad_right(histories[:4096], L)
    passes: dict[bool, list[float]] = {False: [], True: []}
    with torch.no_grad():
        for _ in range(3):
            for last_only in (False, True):
                start = time.perf_counter()
                for i in range(0, len(tokens), 256):
                    rec.model(tokens[i : i + 256], last_only=last_only)
                passes[last_only].append(time.perf_counter() - start)
    speedup = min(passes[False]) / min(passes[True])
    print(f"last block at the last position only: {speedup:.2f}x the full pass (4,096 users, best of 3 each)")
    flops = (blocks - 1) * L * block_flops_per_token(cfg, L) + L * kv + block_flops_per_token(cfg, 2 * L) - kv
    rate = matmul_rate(2048, 2048, 2048, torch.float32)
    bound = rate / flops
    best = max(r["users_per_s"] for r in rows)
    print()
    print(table(rows, ["batch", "users", "seconds", "users_per_s"]))
    print(
        f"\nlower bound {bound:,.0f} users/s ({flops / 1e6:.1f} MFLOP per user at {rate / 1e9:.0f} GFLOP/s float32); "
        f"best measured {best:,.0f} users/s = {bound / best:.1f}x the bound; target >= 2,000 users/s"
    )
    out = {
        "rows": rows,
        "flops_per_user": flops,
        "fp32_matmul_flops_per_s": rate,
        "bound_users_per_s": bound,
        "best_users_per_s": best,
        "ratio_to_bound": bound / best,
        "last_only_speedup": speedup,
        "quick": args.quick,
    }
    print(f"wrote {write('embed_throughput', out)}")


if __name__ == "__main__":
    main()
