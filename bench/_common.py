"""What bench/train.py and bench/infer.py share: configs, variants (dtype x eager/compile), peak FLOP/s, memory, timing.

A *variant* is a '+'-joined spec applied on top of the command line's --dtype:
    eager          the model as written (default)
    compile        torch.compile of the reasoning module (model.L_level.compile(): the 2-block network called
                   H_cycles*(L_cycles+1) times per ACT step; parameter names are unchanged, so EMA and snapshots work)
    compile-step   torch.compile of the whole recursion (training: model._latent_recursion) or of the whole ACT step
                   (inference: model.act_step), one larger graph
    f32 | bf16     forward_dtype
e.g. `--compare eager compile`, `--compare f32 bf16`, `--compare f32 bf16+compile`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/train.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(ROOT))

from trm_kaggle.errors import ConfigError  # noqa: E402
from trm_kaggle.model import TRMConfig  # noqa: E402

# The bundled CPU checkpoint's architecture (the /work/pretrain cpu-small run) and the paper's ARC model.
PRESETS = {
    "small": dict(hidden_size=64, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2, puzzle_emb_len=1,
                  puzzle_emb_ndim=64, halt_max_steps=4, forward_dtype="float32"),
    "paper": dict(hidden_size=512, num_heads=8, L_layers=2, H_cycles=3, L_cycles=4, puzzle_emb_len=16,
                  puzzle_emb_ndim=512, halt_max_steps=16, forward_dtype="bfloat16"),
}
DTYPES = {"f32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "f16": "float16", "float16": "float16"}
COMPILE_MODES = ("eager", "compile", "compile-step")

# Dense peak TFLOP/s at the dtype a GPU run normally uses (bf16); pass --peak-tflops for anything else
# (e.g. H100 SXM: FP32 67, TF32 dense 495).
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "L4": 121.0, "A100": 312.0}
SAMPLE_TASKS = ROOT / "sample_data" / "arc-agi_test_challenges.json"


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TRMConfig fields on top of --config")
    p.add_argument("--config", choices=sorted(PRESETS), default="small")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed units per variant (after --warmup)")
    p.add_argument("--warmup", type=int, default=None, help="untimed units per variant (compile happens here)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="forward_dtype (default: the preset's)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak for MFU; default H100/H200 989, L4 121 (bf16 dense), CPU: measured f32 matmul")
    p.add_argument("--variant", default="eager", help="one variant, e.g. compile or bf16+compile")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None, help="two variants, timed interleaved")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--data", default=str(SAMPLE_TASKS), help="ARC challenges file (real tasks)")
    p.add_argument("--seed", type=int, default=0)


def model_config(args) -> TRMConfig:
    values = dict(PRESETS[args.config])
    types = {f.name: type(f.default) for f in dataclasses.fields(TRMConfig)}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"bad override {item!r}: expected KEY=VALUE with KEY a TRMConfig field")
        kind = types[key]
        values[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
    if "hidden_size=" in " ".join(args.overrides) and "puzzle_emb_ndim=" not in " ".join(args.overrides):
        values["puzzle_emb_ndim"] = values["hidden_size"]  # upstream's yaml: puzzle_emb_ndim = hidden_size
    if args.dtype:
        values["forward_dtype"] = DTYPES[args.dtype]
    try:
        return TRMConfig(**values)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    dtype: str
    compile: str  # one of COMPILE_MODES


def uses_compile(args) -> bool:
    return "compile" in " ".join(args.compare or [args.variant])


def parse_variant(spec: str, base_dtype: str) -> Variant:
    dtype, mode = base_dtype, "eager"
    for token in spec.split("+"):
        if token in DTYPES:
            dtype = DTYPES[token]
        elif token in COMPILE_MODES:
            mode = token
        else:
            raise SystemExit(f"unknown variant token {token!r} in {spec!r}: use {sorted(DTYPES)} or {COMPILE_MODES}")
    return Variant(spec, dtype, mode)


def variants(args, config: TRMConfig) -> list[Variant]:
    if args.compare:
        return [parse_variant(s, config.forward_dtype) for s in args.compare]
    return [parse_variant(args.variant, config.forward_dtype)]


# ---------------------------------------------------------------------------------------------------- hardware
def setup_device(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    return device


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU {torch.get_num_threads()} threads ({_cpu_model()}), torch {torch.__version__}"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    """The 1-minute load: figures taken while other work shares the cores are not comparable."""
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best-of-`reps` rate of an n x n x n matmul: what this device's BLAS sustains, our practical peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def peak_tflops(args, device: torch.device) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value, f"{key} bf16 dense datasheet"
        return None, f"unknown GPU {name!r}: pass --peak-tflops"
    # Best of 3 rounds of best-of-5: a busy neighbour can only make a measured peak lower, never higher.
    f32 = max(matmul_tflops(device, torch.float32) for _ in range(3))
    bf16 = max(matmul_tflops(device, torch.bfloat16) for _ in range(3))
    return f32, f"measured f32 2048^3 matmul; bf16 matmul: {bf16 * 1e3:.0f} GFLOP/s"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------ memory
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the RSS high-water mark that getrusage's ru_maxrss reports
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def memory_label(device: torch.device) -> str:
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "max RSS of the process"


# ------------------------------------------------------------------------------------------------------ timing
@dataclasses.dataclass
class Runner:
    """One variant: `unit()` runs one timed unit (a train step, an inference batch) and must end synchronised."""

    variant: Variant
    unit: Callable[[], object]
    device: torch.device
    times: list[float] = dataclasses.field(default_factory=list)
    peak_mib: float = 0.0
    warmup_s: float = 0.0

    def warm(self, n: int) -> None:
        """Untimed units; peak memory is taken here, so each variant's figure is its own (it includes compiling)."""
        reset_peak_memory(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            self.unit()
        sync(self.device)
        self.warmup_s = time.perf_counter() - t0
        self.peak_mib = peak_memory_mib(self.device)

    def timed(self) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        self.unit()
        sync(self.device)
        self.times.append(time.perf_counter() - t0)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def run_interleaved(runners: list[Runner], steps: int) -> float | None:
    """A, B, A, B, ...: load from other processes on a shared machine then hits both variants alike.

    Returns the share of the machine's CPUs that *other* processes used meanwhile (Linux; None elsewhere): a figure
    taken while that is well above 0 is contended, whatever the load average said when it started.
    """
    before = _cpu_busy()
    t0, own0 = time.perf_counter(), _own_cpu_s()
    for _ in range(steps):
        for r in runners:
            r.timed()
    after = _cpu_busy()
    if before is None or after is None:
        return None
    wall = time.perf_counter() - t0
    others = (after - before) - (_own_cpu_s() - own0)
    return max(0.0, others / (wall * (os.cpu_count() or 1)))


def contention_line(others: float | None) -> str:
    share = "n/a" if others is None else f"{others:.0%}"
    return f"other processes used {share} of the CPUs while timing; load {load_average()} at end"


def _cpu_busy() -> float | None:
    """Seconds of non-idle CPU time summed over all CPUs since boot (/proc/stat, USER_HZ ticks)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def compile_model(model, mode: str, for_training: bool) -> None:
    if mode == "compile":
        model.L_level.compile()
    elif mode == "compile-step":
        if for_training:
            model._latent_recursion = torch.compile(model._latent_recursion)
        else:
            model.act_step = torch.compile(model.act_step)


def print_table(head, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def header(kind: str, args, config: TRMConfig, device: torch.device, peak: float | None, peak_src: str) -> None:
    print(f"bench/{kind}.py  {' '.join(sys.argv[1:])}")
    print(f"machine: {describe_machine(device)}; git {git_revision()}; load {load_average()} at start; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    cfg = {k: v for k, v in config.to_dict().items() if k in PRESETS["paper"]}
    print(f"config {args.config}: {cfg}")
    print(f"peak: {peak * 1e3:.0f} GFLOP/s ({peak_src})" if peak else f"peak: n/a ({peak_src})")
