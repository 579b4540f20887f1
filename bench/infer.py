"""Inference throughput of the real voting path: vote.run_votes -> model.predict at 16 ACT steps, on real ARC tasks.

Each timed unit is one run_votes batch: augment the test inputs of `--batch` (task, variant) jobs, encode, predict
with `--act-steps` ACT steps from a fresh carry, decode, invert and count the votes. Prints variants/s (sequences
per second), MFU and peak memory.

    python bench/infer.py                                         # small config, batch 64 (the pipeline's default)
    python bench/infer.py --config paper --batch 2 --steps 2      # the paper's 512-wide model, on CPU
    python bench/infer.py --compare eager compile-step
    python bench/infer.py --config paper --batch 256 --device cuda

FLOPs per variant: trm_kaggle.flops.infer_flops_per_sequence(config, act_steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import _common as C  # noqa: I001 - puts the checkout on sys.path before trm_kaggle is imported
import torch

from trm_kaggle.augment import build_variant_index
from trm_kaggle.flops import infer_flops_per_sequence
from trm_kaggle.model import TinyRecursiveModel
from trm_kaggle.tasks import load_tasks
from trm_kaggle.vote import VoteBook, run_votes


def main(argv: list[str] | None = None) -> list[C.Runner]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--act-steps", type=int, default=16, help="ACT steps per prediction (upstream eval: 16)")
    args = p.parse_args(argv)
    config = C.model_config(args)
    device = C.setup_device(args)
    batch = args.batch or (64 if args.config == "small" else 256 if device.type == "cuda" else 2)
    steps = args.steps if args.steps is not None else 5
    warmup = args.warmup if args.warmup is not None else (2 if C.uses_compile(args) else 1)
    logging.basicConfig(level=logging.WARNING)

    task_set = load_tasks(args.data)
    tasks = [task_set.tasks[t] for t in task_set.task_ids if t in task_set.tasks]
    # Enough variants that the first batch is full; every timed unit votes on that same first batch.
    inputs_per_variant = sum(len(t.test) for t in tasks)
    n_variants = max(1, -(-batch // inputs_per_variant))
    index = build_variant_index(tasks, n=n_variants, seed=args.seed)
    peak, peak_src = C.peak_tflops(args, device)
    C.header("infer", args, config, device, peak, peak_src)
    print(f"data: {args.data} ({len(tasks)} tasks, {inputs_per_variant} test inputs per variant); batch {batch}; "
          f"{args.act_steps} ACT steps; warmup {warmup}, timed {steps}")

    runners = []
    for v in C.variants(args, config):
        cfg = dataclasses.replace(config, forward_dtype=v.dtype, num_puzzle_identifiers=index.num_identifiers)
        torch.manual_seed(args.seed)
        model = TinyRecursiveModel(cfg).to(device).eval()
        C.compile_model(model, v.compile, for_training=False)
        unit = _one_batch(model, task_set, index, n_variants, batch, device, args.act_steps)
        runners.append(C.Runner(v, unit, device))
        runners[-1].warm(warmup)
    others = C.run_interleaved(runners, steps)

    flops = infer_flops_per_sequence(config, args.act_steps)
    rows = []
    for r in runners:
        per_s = batch / r.median_s
        achieved = per_s * flops / 1e12
        rows.append((r.variant.name, f"{r.median_s * 1e3:.0f}", f"{per_s:.2f}", f"{achieved * 1e3:.1f}",
                     f"{achieved / peak:.1%}" if peak else "n/a", f"{r.peak_mib:,.0f}", f"{r.warmup_s:.1f}"))
    print(f"FLOPs/variant {flops / 1e9:.2f} G (infer_flops_per_sequence, {args.act_steps} steps); memory = "
          f"{C.memory_label(device)} during warmup")
    print(C.contention_line(others))
    C.print_table(("variant", "ms/batch", "variants/s", "GFLOP/s", "MFU", "peak MiB", "warmup s"), rows)
    if len(runners) == 2:
        a, b = runners
        print(f"{b.variant.name} vs {a.variant.name}: {a.median_s / b.median_s:.2f}x the variants/s "
              f"(>1: {b.variant.name} is faster)")
    return runners


def _one_batch(model, task_set, index, n_variants: int, batch: int, device, act_steps: int):
    """run_votes over exactly one full batch (the first), as the pipeline calls it."""

    def unit() -> None:
        calls = iter(range(2))
        done = run_votes(model, task_set, index, (0, n_variants), VoteBook(),
                         batch_size=batch, device=device, act_steps=act_steps,
                         should_stop=lambda: next(calls) > 0)
        if done != batch:
            raise SystemExit(f"run_votes did {done} jobs, expected one batch of {batch}")

    return unit


if __name__ == "__main__":
    main()
