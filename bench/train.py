"""Training throughput of the real entry point, Trainer.train_step (one optimiser step = one ACT step), on real tasks.

Each step is what the pipeline runs: sample and encode a global batch of augmented, translated train pairs from
sample_data, forward/backward through the last H-cycle, AdamATan2 + sparse sign-SGD + EMA. Weights are freshly
initialised (a step costs the same whatever the weights). Prints ms/step, samples/s, tokens/s, MFU and peak memory.

    python bench/train.py                                        # small config (the CPU checkpoint's), batch 32
    python bench/train.py --config paper --batch 4 --steps 3     # the paper's 512-wide model, on CPU
    python bench/train.py --compare f32 bf16                     # two variants interleaved in one process
    python bench/train.py --compare eager compile --warmup 3
    python bench/train.py --config paper --batch 96 --device cuda                       # one GPU, MFU vs 989
    torchrun --standalone --nproc-per-node 4 bench/train.py --config paper --batch 384   # 4 GPUs, global batch

FLOPs per sample: trm_kaggle.flops.train_flops_per_sample (matmuls + attention, backward of the last H-cycle);
MFU = achieved FLOP/s / peak (--peak-tflops; defaults in bench/_common.py; on CPU a measured f32 matmul rate).
Throughput uses the median step time, so a stray slow step on a shared machine does not set the figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import _common as C  # noqa: I001 - puts the checkout on sys.path before trm_kaggle is imported
import torch

from trm_kaggle.augment import build_variant_index
from trm_kaggle.distributed import init_distributed
from trm_kaggle.flops import tokens_per_sequence, train_flops_per_sample
from trm_kaggle.model import TinyRecursiveModel
from trm_kaggle.tasks import load_tasks
from trm_kaggle.train import Trainer, TrainConfig


def main(argv: list[str] | None = None) -> list[C.Runner]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--micro-batch", type=int, default=None, help="rows per forward/backward (gradient accumulation)")
    p.add_argument("--num-variants", type=int, default=16, help="variants per task (embedding rows)")
    args = p.parse_args(argv)
    config = C.model_config(args)
    dist = init_distributed(args.device)
    args.device = str(dist.device)
    device = C.setup_device(args)
    batch = args.batch or (32 if args.config == "small" else 96 if device.type == "cuda" else 4)
    steps = args.steps if args.steps is not None else 10
    warmup = args.warmup if args.warmup is not None else (3 if C.uses_compile(args) else 2)
    logging.basicConfig(level=logging.WARNING)

    task_set = load_tasks(args.data)
    tasks = [task_set.tasks[t] for t in task_set.task_ids if t in task_set.tasks]
    index = build_variant_index(tasks, n=args.num_variants, seed=args.seed)
    peak, peak_src = C.peak_tflops(args, device)
    if dist.is_main:
        C.header("train", args, config, device, peak, peak_src)
        print(f"data: {args.data} ({len(tasks)} tasks, {index.num_identifiers} embedding rows); global batch {batch}"
              f"{f' over {dist.world_size} ranks' if dist.world_size > 1 else ''}; warmup {warmup}, timed {steps}")

    runners = []
    for v in C.variants(args, config):
        cfg = dataclasses.replace(config, forward_dtype=v.dtype, num_puzzle_identifiers=index.num_identifiers)
        torch.manual_seed(args.seed)
        trainer = Trainer(TinyRecursiveModel(cfg), tasks,
                          TrainConfig(global_batch_size=batch, micro_batch=args.micro_batch, seed=args.seed,
                                      num_variants=args.num_variants), index, dist=dist)
        C.compile_model(trainer.model, v.compile, for_training=True)
        runner = C.Runner(v, trainer.train_step, device)
        runner.warm(warmup)
        runners.append(runner)
    others = C.run_interleaved(runners, steps)

    flops = train_flops_per_sample(config)  # the same for every dtype
    T = tokens_per_sequence(config)
    world_peak = peak * dist.world_size if peak else None
    rows = []
    for r in runners:
        s = _slowest_rank(r.median_s, dist)
        samples = batch / s
        achieved = samples * flops / 1e12
        rows.append((r.variant.name, f"{s * 1e3:.1f}", f"{1 / s:.3f}", f"{samples:.1f}", f"{samples * T:,.0f}",
                     f"{achieved * 1e3:.1f}", f"{achieved / world_peak:.1%}" if world_peak else "n/a",
                     f"{r.peak_mib:,.0f}", f"{r.warmup_s:.1f}"))
    if dist.is_main:
        print(f"FLOPs/sample {flops / 1e9:.3f} G (train_flops_per_sample); {T} tokens/sample; memory = "
              f"{C.memory_label(device)} during warmup")
        print(C.contention_line(others))
        C.print_table(("variant", "ms/step", "steps/s", "samples/s", "tokens/s", "GFLOP/s", "MFU", "peak MiB",
                       "warmup s"), rows)
        if len(runners) == 2:
            a, b = runners
            print(f"{b.variant.name} vs {a.variant.name}: {a.median_s / b.median_s:.2f}x the steps/s "
                  f"(>1: {b.variant.name} is faster)")
    return runners


def _slowest_rank(seconds: float, dist) -> float:
    """Data-parallel steps end together: the slowest rank's median is the step time."""
    if dist.world_size == 1:
        return seconds
    t = torch.tensor([seconds], device=dist.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


if __name__ == "__main__":
    main()
