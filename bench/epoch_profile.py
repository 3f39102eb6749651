"""Where an ML-1M training step's time goes, against its compute bound.

    python -m bench.epoch_profile [--quick] [--steps 12] [--no-compile]

One step as ``embeddings.training.loop`` takes it with the ``--preset ml1m`` model (dim 64, 2 blocks, LiGR layers,
rotary positions, dropout 0.2): a full batch of 128 windows x 200 positions over ML-1M's 3,416 items, bfloat16
autocast where the CPU has fast bfloat16, the fused full-softmax loss, fused AdamW. Tokens are random: the
cost of a step does not depend on which items it holds. Two ways, side by side in one run: eager, and the
model through ``torch.compile`` as ``TrainConfig.compile`` (the preset's) runs it. Reported for each:

* time by phase (median over ``--steps``): the transformer's forward, the loss (logits, softmax and both
  gradients, all in its forward), the backward (transformer and embeddings), the optimizer;
* ``torch.profiler`` self time by phase and kind of op (matmuls, softmax, dtype casts, the compiled graphs'
  fused kernels, ...), so the gap to the bound has names;
* the compute bound: the step's matmul FLOPs at the best bfloat16 rate measured in the same run for the
  loss's three products (as ``sasrec_quality.py`` bounds the epoch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict

import torch

from bench.common import loss_matmul_rate, table, training_flops, write
from embeddings.models.losses import full_softmax_ce
from embeddings.models.sasrec import SASRec, SASRecConfig
from embeddings.training.config import PRESETS, TrainConfig
from embeddings.training.loop import compiled_for_training

N_ITEMS, WINDOWS, LENGTH = 3416, 128, 200  # ML-1M's catalogue; a full batch of the preset
PHASES = ("forward", "loss", "backward", "optimizer")
KINDS = {
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"),
    "softmax": ("aten::_softmax", "aten::_softmax_backward_data"),
    "dtype casts": ("aten::copy_", "aten::_to_copy"),
    "layer norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "dropout masks": ("aten::random_", "aten::ge", "aten::bitwise_and"),
    "embedding gradient": ("aten::_index_put_impl_", "aten::embedding_dense_backward", "aten::index"),
}
COMPILED = "compiled kernels (fused)"  # what a compiled graph runs besides the matmuls it calls out to
KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}


class Step:
    """The model, its loss and its optimizer, one training step at a time on a fixed random batch."""

    def __init__(self, compiled: bool, seed: int = 0):
        torch.manual_seed(seed)
        model_kw, _ = PRESETS["ml1m"]
        self.cfg = SASRecConfig(**{**model_kw, "dim": 64, "n_blocks": 2, "item_encoder": "id", "n_items": N_ITEMS})
        self.model = SASRec(self.cfg).train()
        self.forward = compiled_for_training(self.model) if compiled else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-3, betas=(0.9, 0.98), fused=True)
        tokens = torch.randint(1, N_ITEMS + 1, (WINDOWS, LENGTH + 1))
        self.inputs, self.targets = tokens[:, :-1], tokens[:, 1:]
        self.bf16 = bool(TrainConfig().bf16)  # as training decides it on this machine

    def __call__(self) -> list[float]:
        """One step; seconds of each of :data:`PHASES`."""
        marks = [time.perf_counter()]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            with torch.profiler.record_function("forward"):
                vectors = self.model.items()
                states = self.forward(self.inputs, vectors)
            marks.append(time.perf_counter())
            with torch.profiler.record_function("loss"):
                real = self.targets > 0
                loss = full_softmax_ce(states[real], vectors[1:], self.targets[real] - 1, low_precision=self.bf16)
            marks.append(time.perf_counter())
        with torch.profiler.record_function("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        marks.append(time.perf_counter())
        with torch.profiler.record_function("optimizer"):
            self.optimizer.step()
        marks.append(time.perf_counter())
        return [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]


def timed(step: Step, steps: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each phase over ``steps`` steps (after ``warmup``)."""
    for _ in range(warmup):
        step()
    runs = [step() for _ in range(steps)]
    out = {phase: 1000 * statistics.median(r[i] for r in runs) for i, phase in enumerate(PHASES)}
    out["step"] = 1000 * statistics.median(sum(r) for r in runs)
    return out


def profiled(step: Step, steps: int) -> dict[str, dict[str, float]]:
    """Milliseconds a step of self CPU time, by phase and kind of op."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in prof.events():
        if event.name in PHASES:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name not in PHASES:
            parent = parent.cpu_parent
        if parent is None:
            continue
        compiled = event.name.startswith("## Call CompiledFxGraph")
        kind = COMPILED if compiled else KIND_OF.get(event.name, "other (elementwise)")
        out[parent.name][kind] += event.self_cpu_time_total / 1000 / steps
    return {phase: dict(kinds) for phase, kinds in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 steps, no compiled comparison")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    args = p.parse_args()
    steps = 3 if args.quick else args.steps

    ways = {"eager": Step(compiled=False)}
    if not (args.quick or args.no_compile):
        # a cache of its own: the compile time reported is a first compile's, not a reuse of an earlier run's
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="epoch-profile-inductor-")
        began = time.perf_counter()
        ways["compiled"] = Step(compiled=True)
        ways["compiled"]()  # compiles forward and backward
        compile_s = time.perf_counter() - began
    cfg = ways["eager"].cfg
    flops = training_flops(cfg, WINDOWS * LENGTH, LENGTH, N_ITEMS)
    rate = loss_matmul_rate(N_ITEMS, cfg.dim)
    bound_ms = 1000 * sum(flops.values()) / rate
    positions = WINDOWS * LENGTH
    kinds = (*KINDS, COMPILED, "other (elementwise)")
    rows, results = [], {}
    for way, step in ways.items():
        phases, by_kind = timed(step, steps), profiled(step, steps)
        matmul_ms = sum(k.get("matmul", 0.0) for k in by_kind.values())
        results[way] = {
            "phases_ms": phases,
            "self_ms_by_phase_and_kind": by_kind,
            "ratio_to_bound": phases["step"] / bound_ms,
            "matmul_self_ms": matmul_ms,
        }
        rows += [
            {
                "way": way,
                "phase": phase,
                "ms a step": phases[phase],
                "µs a position": 1000 * phases[phase] / positions,
                **{kind: by_kind.get(phase, {}).get(kind, 0.0) for kind in kinds},
            }
            for phase in PHASES
        ]
        print(
            f"{way}: step {phases['step']:.1f} ms ({1000 * phases['step'] / positions:.2f} µs a position), "
            f"{phases['step'] / bound_ms:.1f}x the bound; matmuls {matmul_ms:.1f} ms of it"
        )
    if "compiled" in results:
        results["compiled"]["compile_s"] = compile_s
        print(
            f"compiled: {results['eager']['phases_ms']['step'] / results['compiled']['phases_ms']['step']:.2f}x "
            f"the eager step, after {compile_s:.0f} s compiling"
        )
    print(table(rows, ["way", "phase", "ms a step", "µs a position", *kinds]))
    print(f"compute bound {bound_ms:.1f} ms a step ({sum(flops.values()) / 1e9:.1f} GFLOP at {rate / 1e9:.0f} GFLOP/s)")
    path = write(
        "epoch_profile",
        {
            "model_config": {k: v for k, v in vars(cfg).items() if k not in ("n_features",)},
            "batch": {"windows": WINDOWS, "length": LENGTH, "items": N_ITEMS, "bf16": ways["eager"].bf16},
            "steps": steps,
            "flops": flops,
            "bf16_matmul_flops_per_s": rate,
            "bound_ms": bound_ms,
            **results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
