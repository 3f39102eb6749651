"""``make bench``: every benchmark, one after the other, then one markdown table of the results.

    python -m bench.run_all [--quick] [--only NAME ...] [--table-only]

Each script also runs alone (``python bench/<name>.py [--quick]``). Results land in
bench/results/*.json; the tables go to bench/RESULTS.md (and bench/results/summary.md), so RESULTS.md is this
command's output. bench/NOTES.md says how to read them; the README carries the headline rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.common import paired

HERE = Path(__file__).parent

RESULTS = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
SCRIPTS = [
    "ml1m_file_check",
    "lightfm_baseline",
    "sasrec_quality",
    "sasrec_levers",
    "sasrec_levers:video",
    "embed_throughput",
    "feature_store",
    "publish_readers",
    "compat",
    "stream",
    "peers/rectools_sasrec",
    "probes",
    "losses",
    "epoch_profile",
    "peers/rectools_sasrec:video",
    "video",
    "world_grid",
    "scale",
]
ARGS = {
    "peers/rectools_sasrec:video": ["--data", "video", "--max-len", "50", "--budget-min", "8"],
    "sasrec_levers:video": ["--data", "video"],
}


def _load(name: str, folder: Path = RESULTS) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _se(row: dict, metric: str) -> str:
    """``row[metric]``, with `` ± `` its standard error when the row has one."""
    se = row.get(f"{metric}_se")
    return _f(row[metric]) + (f" ± {se:.4f}" if se is not None else "")


def _f(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:,.0f}"
    return str(x)


FLOOR = {"SDK": "raw store read", "HTTP": "raw store read + bare HTTP round trip"}


def time_to(curve: list[dict], hr: float) -> float | None:
    """Training seconds at the first evaluation whose test HR@10 reaches ``hr``."""
    return next((c["train_s"] for c in curve if c["test_hr@10"] >= hr), None)


def summary(folder: Path = RESULTS) -> str:
    lines = []
    week, ml, lfm = (_load(n, folder) for n in ("sasrec_week", "sasrec_ml1m", "lightfm_baseline"))
    peer, thr, fs = (_load(n, folder) for n in ("rectools_sasrec", "embed_throughput", "feature_store"))
    machines: dict[tuple, list[str]] = {}  # results are re-run a script at a time: say which machine made which
    for path in sorted(folder.glob("*.json")):
        m = json.loads(path.read_text()).get("machine")
        if m:
            machines.setdefault((m["date"], m["cpu"], m["cores"], m["torch"]), []).append(path.stem)
    for (date, cpu, cores, torch_version), names in sorted(machines.items(), reverse=True):  # newest first
        lines.append(f"Machine: {cpu}, {cores} cores, torch {torch_version}, measured {date} ({', '.join(names)}).\n")
    lines.append("**Quality: HR@10 / NDCG@10, full ranking, seen items excluded**\n")
    lines.append("| data | model | HR@10 | NDCG@10 | cold HR@10 | over LightFM |")
    lines.append("|---|---|---|---|---|---|")
    if week:
        for r in week["week"]:
            lines.append(
                f"| synthetic week, temporal | {r['model']} | {_f(r['hr@10'])} | {_f(r['ndcg@10'])} | "
                f"{_f(r.get('cold_hr@10'))} | {_f(r.get('hr@10_over_lightfm'), 2)}x |"
            )
    published = "SASRec, full CE / RecTools SASRec"
    lines.append(f"| ML-1M, published (papers' file) | {published} | 0.3152 / 0.3058 | 0.1821 / 0.1779 | - | - |")
    lines.append("| ML-1M, published | gSASRec / HSTU-large | 0.3003 / 0.3294 | 0.1726 / 0.1893 | - | - |")
    for key, data in (("ml1m", "ML-1M"),):
        for r in lfm["rows"] if lfm else []:
            if r["data"] == data:
                lines.append(f"| {data} | {r['model']} | {_f(r['hr@10'])} | {_f(r['ndcg@10'])} | - | - |")
        m = ml.get(key) if ml else None
        if m:
            lines.append(
                f"| {data} | ours: SASRec (id, preset ml1m), best of {m['epochs_run']} epochs | {_se(m, 'hr@10')} | "
                f"{_se(m, 'ndcg@10')} | - | - |"
            )
        if key == "ml1m" and peer:
            lines.append(
                f"| {data} | RecTools SASRec (peer, same split), {peer['epochs']} epochs | "
                f"{_f(peer['hr@10'])} | {_f(peer['ndcg@10'])} | - | - |"
            )
    video = _load("video", folder)
    for r in video["rows"] if video else []:
        ratio = r["hr@10"] / video["rows"][1]["hr@10"] if video["rows"][1]["hr@10"] else None
        lines.append(
            f"| Video (leave-last-out) | {r['model']} | {_f(r['hr@10'])} | {_f(r['ndcg@10'])} | - | {_f(ratio, 2)}x |"
        )
    check = _load("ml1m_file_check", folder)
    if check:
        same = "the papers' file" if check["lines"] == check["papers_file"]["lines"] else "NOT the papers' file"
        lines.append(
            f"\nML-1M file: {check['lines']:,} lines, {same}; leave-last-out as published (transition-model "
            f"HR@10 last / second-last item: {_f(check['transition_hr@10_last'])} / "
            f"{_f(check['transition_hr@10_second_last'])}: the last item follows its history)."
        )
    lines.append("\n**Speed**\n")
    lines.append("| what | measured | lower bound | ratio to bound | peer |")
    lines.append("|---|---|---|---|---|")
    m = ml.get("ml1m") if ml else None
    if m:
        peer_s = peer.get("epoch_s") if peer else None
        versus = "-"
        if peer_s and m.get("positions_per_epoch"):
            # RecTools trains on each user's last 200 items; ours on every window: compare per position
            theirs = peer_s / m["positions_per_epoch_last_window"]
            ours = m["epoch_s_median"] / m["positions_per_epoch"]
            versus = (
                f"RecTools {_f(peer_s, 1)} s for {m['positions_per_epoch_last_window']:,} positions "
                f"({_f(theirs / ours, 1)}x ours per position)"
            )
        lines.append(
            f"| SASRec epoch, ML-1M, dim 64, 2 blocks, len 200, {m.get('positions_per_epoch', 0):,} positions | "
            f"{_f(m['epoch_s_median'], 1)} s | "
            f"{_f(m['epoch_s_lower_bound'], 1)} s | {_f(m['ratio_to_lower_bound'], 1)}x | {versus} |"
        )
        reached = m["train_s_to_hr@10_0.30"]
        lines.append(
            f"| training time to ML-1M HR@10 0.30 | "
            f"{_f(reached / 60, 1) + ' min' if reached else 'not reached'} (best {_f(m['hr@10'])}) | - | - | "
            f"RecTools: {'reached' if peer and peer['best_hr@10'] >= 0.30 else 'not reached'} in its "
            f"{_f(peer['fit_s'] / 60 if peer else None, 1)} min |"
        )
        if peer and peer.get("curve"):
            target = peer["best_hr@10"]
            ours, theirs = time_to(m.get("curve", []), target), time_to(peer["curve"], target)
            lines.append(
                f"| training time to RecTools' best HR@10 in its budget ({_f(target)}) | "
                f"{_f(ours, 1)} s | - | - | RecTools {_f(theirs, 1)} s "
                f"({_f(theirs / ours if ours and theirs else None, 1)}x ours) |"
            )
    video = _load("video", folder)
    ours_video = next((r for r in video["rows"] if "s_per_million_positions" in r), None) if video else None
    if ours_video and video.get("cost_per_position_over_ml1m"):
        lines.append(
            f"| SASRec training, Video, per real position | {_f(ours_video['s_per_million_positions'], 1)} s per "
            f"million | ML-1M's per position (same run of the benches) | "
            f"{_f(video['cost_per_position_over_ml1m'], 2)}x | - |"
        )
    if thr:
        lines.append(
            f"| user embeddings, len 200, dim 64 | {_f(thr['best_users_per_s'])} users/s | "
            f"{_f(thr['bound_users_per_s'])} users/s | {_f(thr['ratio_to_bound'], 1)}x | "
            f"last block at the last position only: {thr['last_only_speedup']:.2f}x the full pass |"
        )
    if fs:
        mat = fs["materialize_user_embeddings"]
        hist = fs["historical"]
        bound = mat.get("bound_rows_per_s")
        ratio = bound / mat["rows_per_s"] if bound else None
        lines.append(
            f"| materialize user embeddings (SQLite) | {_f(mat['rows_per_s'])} rows/s | "
            f"{_f(bound)} rows/s (disk write) | {_f(ratio, 1)}x | - |"
        )
        hb = hist.get("bound_seconds")
        lines.append(
            f"| historical retrieval, {hist['entity_rows']:,} rows (DuckDB) | {_f(hist['seconds'], 2)} s "
            f"({_f(hist['rows_per_s'])} rows/s) | {_f(hb * 1000 if hb else None, 1)} ms (memory) | "
            f"{_f(hist['seconds'] / hb if hb else None, 1)}x | - |"
        )
        for r in fs["lookups"]:
            peer_note = "Feast Python server p99 7.2 ms" if (r["path"], r["users_per_request"]) == ("HTTP", 1) else "-"
            floor = r.get("floor_p50_ms")
            lines.append(
                f"| online lookup {r['store']} {r['path']}, {r['users_per_request']} user(s) | "
                f"p50 {_f(r['p50_ms'], 2)} ms, p99 {_f(r['p99_ms'], 2)} ms | "
                f"{'p50 ' + _f(floor, 3) + ' ms (' + FLOOR[r['path']] + ')' if floor else 'not measured'} | "
                f"{_f(r.get('p50_over_floor'), 1)}x | {peer_note} |"
            )
        for r in fs.get("materialize_redis_cluster", [])[1:]:
            lines.append(
                f"| materialize user embeddings (Redis Cluster), {r['writer']} | {_f(r['rows_per_s'])} rows/s | "
                f"Feast's materialize, same run: {_f(fs['materialize_redis_cluster'][0]['rows_per_s'])} rows/s | "
                f"{_f(r['over_feast'], 1)}x faster | - |"
            )
    compat = _load("compat", folder)
    if compat:
        last = max(r["retrains"] for r in compat["rows"])
        for enc in dict.fromkeys(r["encoder"] for r in compat["rows"]):
            got = {r["map"]: r for r in compat["rows"] if r["encoder"] == enc and r["retrains"] == last}
            orth, lin, raw = got.get("orthogonal", {}), got.get("linear", {}), got.get("raw", {})
            lines.append(
                f"| consumer after {last} retrains / before, {enc} (bench/compat.py): ROC-AUC, retrieval recall@10 | "
                f"orthogonal map (the publish's) {_f(orth.get('ratio'), 3)}x, {_f(orth.get('recall_ratio'), 3)}x; "
                f"linear {_f(lin.get('ratio'), 3)}x, {_f(lin.get('recall_ratio'), 3)}x | "
                f"raw {_f(raw.get('ratio'), 3)}x, {_f(raw.get('recall_ratio'), 3)}x | - | - |"
            )
    stream = _load("stream", folder)
    if stream:
        lats = stream["latency"] if isinstance(stream["latency"], list) else [stream["latency"]]
        for lat in lats:
            store = lat.get("store", "redis")
            one, two = (r for r in stream["throughput"] if r.get("store", "redis") == store)
            lines.append(
                f"| stream worker (bench/stream.py), {store}: events/s; click-to-visible at {_f(lat['rate'], 0)} "
                f"events/s | 1 worker {_f(one['events_per_s'], 0)}, 2 workers {_f(two['events_per_s'], 0)}; "
                f"p50 {_f(lat['p50_ms'], 1)} ms, p99 {_f(lat['p99_ms'], 1)} ms | "
                "targets (Redis): 2,000 events/s, p99 100 ms | - | - |"
            )
        for push in stream.get("offline_push", []):
            lines.append(
                f"| offline write of {push['batch_rows']} streamed rows into a table of {push['table_rows']:,} "
                f"(bench/stream.py) | appended file {_f(push['appended_file_s'] * 1000, 1)} ms | - | - | "
                f"Feast's DuckDB offline push {_f(push['feast_push_s'] * 1000, 0)} ms ({_f(push['ratio'], 0)}x) |"
            )
    readers = _load("publish_readers", folder)
    if readers:
        view, hset = readers["rows"]
        lines.append(
            f"| rows mixing two runs seen by a reader during a Redis publish, {readers['users']:,} users | "
            f"{hset['mixed_rows']} of {hset['rows_read']:,} (one HSET per user, {_f(hset['write_s'], 2)} s) | "
            f"view by view: {view['mixed_rows']:,} of {view['rows_read']:,} ({_f(view['write_s'], 2)} s) | - | - |"
        )
    for name, what in (
        ("sasrec_levers", "ML-1M, against dim 64, 2 blocks, dropout 0.2, learned positions, constant lr 2e-3"),
        (
            "sasrec_levers_video",
            "Video, against the earlier `train` defaults: dropout 0.2, max_len 50, logQ, batches of 128 windows",
        ),
    ):
        levers = _load(name, folder)
        if not levers:
            continue
        lines.append(
            f"\n**SASRec levers, one at a time** (`bench/sasrec_levers.py`; {what}; a training-time budget, "
            "ratios to the baseline of the same machine and budget, early stopping on validation NDCG@10, test of "
            "the best validation model)\n"
        )
        cpu = levers["machine"]["cpu"]  # rows without their own were measured on the file's machine
        base = {(r.get("cpu", cpu), r["budget_s"]): r for r in levers["levers"] if r["lever"] == "baseline"}
        # the headline run (sasrec_quality.py, --preset ml1m) on the same machine: levers set against it user by user
        head = (ml or {}).get("ml1m") if name == "sasrec_levers" else None
        ref = head if head and "ranks@10" in head else None
        versus = " HR@10 against the preset, same users |" if ref is not None else ""
        lines.append(
            f"| lever | machine | budget | HR@10 | NDCG@10 | HR@10 / baseline |{versus} best epoch / run | epoch "
            "| µs per position |"
        )
        lines.append("|---" * (10 if ref is not None else 9) + "|")
        for r in levers["levers"]:
            same = base.get((r.get("cpu", cpu), r["budget_s"]))  # ratios within one machine and budget
            ratio = r["hr@10"] / same["hr@10"] if same else None
            versus = ""
            if ref is not None:
                versus = " - |"
                if "ranks@10" in r and r.get("cpu", cpu) == ml["machine"]["cpu"]:
                    d = paired(r["ranks@10"], ref["ranks@10"])
                    versus = f" {d['hr@10_diff']:+.4f} ± {d['hr@10_diff_se']:.4f} |"
            lines.append(
                f"| {r['lever']} | {r.get('cpu', cpu)} | {_f(r['budget_s'] / 60, 0)} min | {_se(r, 'hr@10')} | "
                f"{_se(r, 'ndcg@10')} | {_f(ratio, 3)} |{versus} "
                f"{r['best_epoch']} / {r['epochs_run']} | {_f(r['epoch_s_median'], 1)} s | "
                f"{_f(r.get('us_per_position'), 1)} |"
            )
        if ref is not None:
            lines.append(
                "\n± is one standard error over the test users (`bench/common.test_figures`); against the preset: "
                "the difference from the headline run (`sasrec_quality.py`, `--preset ml1m`, same machine) user by "
                "user, and its standard error (`common.paired`)."
            )
    grid = _load("world_grid", folder)
    if grid:
        lines.append(
            f"\n**Synthetic weeks of other sizes** (`bench/world_grid.py`, seed {grid['seed']}: HR@10 of SASRec "
            "over LightFM's, temporal split)\n"
        )
        lines.append(
            "| users x listings | clicks per listing | cold test share | LightFM HR@10 | id | lst-frozen | hybrid |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for r in grid["worlds"]:
            lines.append(
                f"| {r['users']:,} x {r['listings']:,} | {_f(r['train_clicks_per_listing'], 1)} | "
                f"{_f(r['test_cold_share'], 3)} | {_f(r['lightfm_hr@10'])} | {_f(r['id_over_lightfm'], 2)}x | "
                f"{_f(r['lst-frozen_over_lightfm'], 2)}x | {_f(r['hybrid_over_lightfm'], 2)}x |"
            )
    probes = _load("probes", folder)
    if probes:
        lines.append(
            f"\n**User vectors as features** (`bench/probes.py`: labels from after the cut-off; ROC-AUC of "
            f"cross-validated logistic regression, recall@K of the listings clicked after it; profile horizon "
            f"{probes['horizon']} clicks)\n"
        )
        lines.append("| data | probe | metric | intent | profile | mean of items | best baseline | ours - baseline |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for result in probes["results"]:
            for r in result["rows"]:
                lines.append(
                    f"| {result['data']} | {r['probe']} | {r['metric']} | {_f(r.get('intent'), 3)} | "
                    f"{_f(r.get('profile'), 3)} | {_f(r.get('mean_of_items'), 3)} | "
                    f"{r['best_baseline']} {_f(r[r['best_baseline']], 3)} | {r['margin']:+.3f} |"
                )
    losses = _load("losses", folder)
    if losses:
        lines.append("\n**Losses for large catalogues** (`bench/losses.py`; one training step, 128 x 50 positions)\n")
        lines.append("| items | loss | s per million positions | speed-up over full softmax | peak RSS |")
        lines.append("|---|---|---|---|---|")
        for r in losses["speed"]:
            lines.append(
                f"| {r['items']:,} | {r['loss']} | {_f(r['s_per_million_positions'], 1)} | "
                f"{_f(r['speedup_over_full'], 1)}x | {r['peak_rss_mb']:,.0f} MB |"
            )
        if losses["quality"]:
            when = losses.get("quality_measured") or losses["machine"]["date"]  # kept by --skip-quality runs
            lines.append(f"\nQuality after the same training time, measured {when}:")
            lines.append("\n| data | loss | HR@10 | NDCG@10 | HR@10 / full softmax | epochs in the budget |")
            lines.append("|---|---|---|---|---|---|")
            for r in losses["quality"]:
                lines.append(
                    f"| {r['data']} | {r['loss']} | {_f(r['hr@10'])} | {_f(r['ndcg@10'])} | "
                    f"{_f(r['hr@10_vs_full'], 3)} | {r['epochs']} |"
                )
    prof = _load("epoch_profile", folder)
    if prof:
        ways = [w for w in ("eager", "compiled") if w in prof]
        seen = {k for w in ways for phase in prof[w]["self_ms_by_phase_and_kind"].values() for k in phase}
        order = ("matmul", "softmax", "dtype casts", "layer norm", "dropout masks", "embedding gradient")
        kinds = [k for k in order if k in seen] + sorted(seen - set(order))
        b = prof["batch"]
        lines.append(
            f"\n**Where a training step's time goes** (`bench/epoch_profile.py`; the `--preset ml1m` model, one step "
            f"of {b['windows']} x {b['length']} positions over {b['items']:,} items, eager and through "
            f"`torch.compile` as `--compile` runs it; ms a step, median of {prof['steps']}; by kind of op: "
            "`torch.profiler` self time)\n"
        )
        lines.append("| way | phase | ms | " + " | ".join(kinds) + " |")
        lines.append("|---|---|---|" + "---|" * len(kinds))
        for w in ways:
            for phase, ms in prof[w]["phases_ms"].items():
                by = prof[w]["self_ms_by_phase_and_kind"].get(phase, {})  # the whole step: no breakdown
                cells = ["" if phase == "step" else f"{by.get(k, 0.0):.1f}" for k in kinds]
                lines.append(f"| {w} | {phase} | {ms:.1f} | " + " | ".join(cells) + " |")
        line = (
            f"\nCompute bound {prof['bound_ms']:.1f} ms a step ({sum(prof['flops'].values()) / 1e9:.1f} GFLOP at "
            f"{prof['bf16_matmul_flops_per_s'] / 1e9:,.0f} GFLOP/s). "
        )
        line += "; ".join(
            f"{w}: {prof[w]['phases_ms']['step']:.1f} ms, {prof[w]['ratio_to_bound']:.1f}x the bound, "
            f"{prof[w]['matmul_self_ms']:.1f} ms of it matmuls"
            for w in ways
        )
        if "compiled" in prof:
            c = prof["compiled"]
            line += (
                f". Compiled: {prof['eager']['phases_ms']['step'] / c['phases_ms']['step']:.2f}x the eager step, "
                f"after {c['compile_s']:.0f} s compiling (cold cache)."
            )
        lines.append(line)
    scale = _load("scale", folder)
    if scale:
        lines.append(
            "\n**A site-size week** (`bench/scale.py`; each stage one command, seed 0, events partitioned by day; "
            "train: one epoch, loss auto = logQ above 10,000 listings, then validation and full-catalogue test "
            "ranking)\n"
        )
        lines.append("| users | listings | events | stage | wall | peak RSS | events/s | notes |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for w in scale["worlds"]:
            for stage, r in [*w["stages"].items(), *w.get("profiles", {}).items()]:
                lines.append(
                    f"| {w['users']:,} | {w['listings']:,} | {w['events']:,} | {stage} | {_f(r['seconds'], 1)} s | "
                    f"{r['peak_rss_mb']:,.0f} MB | {_f(r.get('rows_per_s'))} | {_scale_note(r)} |"
                )
            if "whole_job_s" in w:
                lines.append(
                    f"| {w['users']:,} | | | **whole job** (local target) | **{w['whole_job_s'] / 60:.1f} min** | "
                    f"{w['peak_rss_mb']:,.0f} MB | | |"
                )
        if scale.get("growth_exponent"):
            grow = ", ".join(f"{k} {v:.2f}" for k, v in scale["growth_exponent"].items())
            lines.append(f"\nGrowth exponent of wall time in events between the two largest worlds: {grow}.")
        first = scale["worlds"][0]
        if "train_two_processes" in first:
            lines.append(
                f"\n| training, {first['users']:,} users | epoch | positions/s | per process | peak RSS | HR@10 |"
            )
            lines.append("|---|---|---|---|---|---|")
            for r in (first["stages"]["train_one_epoch"], first["train_two_processes"]):
                lines.append(
                    f"| {r['processes']} process(es) | {_f(r['epoch_s'], 1)} s | {_f(r['positions_per_s'])} | "
                    f"{_f(r['positions_per_s_per_process'])} | {r['peak_rss_mb']:,.0f} MB | {_f(r['hr@10'])} |"
                )
    return "\n".join(lines) + "\n"


def _scale_note(r: dict) -> str:
    """What a scale row measured besides its wall time."""
    notes = []
    if "materialize_s" in r:
        written = f"offline write {_f(r['offline_write_s'], 1)} s, materialize {_f(r['materialize_s'], 1)} s"
        notes.append(f"{r['rows']:,} rows: {written}")
        notes += [
            f"{m['view']} {m['rows_per_s']:,} rows/s ({m['writers']} writer{'s' if m['writers'] > 1 else ''})"
            for m in r["materialized"]
            if "rows_per_s" in m and m["rows"] >= 10_000
        ]
    if "pit_s" in r:
        notes.append(f"{r['rows']:,} entity rows joined in {_f(r['pit_s'], 2)} s")
    if "p99_ms" in r:
        notes.append(f"one user: p50 {_f(r['p50_ms'], 3)} ms, p99 {_f(r['p99_ms'], 3)} ms")
    if "split_s" in r:
        notes.append(f"split alone {_f(r['split_s'], 1)} s (the rest: loading through the contract)")
    if "epoch_s" in r:
        notes.append(f"epoch {_f(r['epoch_s'], 1)} s, HR@10 {_f(r['hr@10'])}")
    if "max_abs_diff_vs_local" in r:
        notes.append(f"max abs difference from the local vectors {r['max_abs_diff_vs_local']:.1e}")
    return "; ".join(notes)


def write_results(table: str) -> None:
    head = (
        "# Benchmark results\n\n"
        "Written by `make bench` (`bench/run_all.py`) from `bench/results/*.json`; do not edit by hand. "
        "How to read them: [NOTES.md](NOTES.md).\n\n"
    )
    RESULTS_MD.write_text(head + table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: the whole run within 10 minutes")
    p.add_argument("--only", nargs="+", choices=SCRIPTS)
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from bench/results")
    args = p.parse_args()
    folder = RESULTS / "quick" if args.quick else RESULTS  # quick figures never replace the full ones
    env = {**os.environ, "LST_EMBEDDINGS_QUIET": "1", "LST_BENCH_RESULTS": str(folder)}
    timings = {}
    if not args.table_only:
        for name in args.only or SCRIPTS:
            script = name.split(":")[0]
            cmd = [sys.executable, "-m", "bench." + script.replace("/", "."), *ARGS.get(name, [])] + (
                ["--quick"] if args.quick else []
            )
            print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
            start = time.perf_counter()
            rc = subprocess.run(cmd, env=env, cwd=HERE.parent).returncode
            timings[name] = round(time.perf_counter() - start, 1)
            if rc:
                print(f"{name} failed with exit code {rc}", file=sys.stderr)
    table = summary(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.md").write_text(table)
    if not args.quick:
        write_results(table)
    print("\n" + table)
    if timings:
        print("script seconds:", timings, "on", platform.node())


if __name__ == "__main__":
    main()
