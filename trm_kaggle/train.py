"""One training loop for post-training (test-time adaptation) and pre-training.

Post-training starts from one of our checkpoints and trains on the *train* pairs of the challenge tasks. Every task
gets N variants (default 1000), each with its own task-embedding row initialised at the checkpoint's mean embedding.
Each epoch visits every task once, draws one of its variants uniformly and uses that variant's examples, translated
at random (one example per draw stays at the top-left, as upstream). Batches are packed greedily to the global batch.

The ACT semantics are upstream's (TRM_FACTS §6.3): one optimiser step per ACT step; the carry persists across
batches, and a row keeps its example until it halts. The loss is stablemax cross-entropy (f64) + 0.5 x q-halt BCE,
summed over rows and divided by the global batch. AdamATan2 trains the trunk, sparse sign-SGD the table rows, and
an EMA (0.999) of the trunk is what inference uses.

Defaults and why (TRM_FACTS §5.1, §8.2 disagree with each other):
  * lr 2e-4 / 2e-2 at global batch 384: the paper's text for its competition runs (the fork's committed configs
    say 1e-4 / 1e-2 or 0.7e-4 / 0.7e-2; pass --lr 1e-4 --emb-lr 1e-2 for those).
  * AdamATan2 variant "fork" (a = 1.27, bias correction inside atan2): every fork branch, including the one that
    trained the paper's checkpoints, used adam-atan2-pytorch. --adam-variant upstream gives the adam-atan2 rule.

    trainer = Trainer(model, tasks, TrainConfig(), variant_index)
    trainer.train(budget=budget.child("train", 3600), max_steps=15000)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import Augmentation, VariantIndex
from .distributed import DistInfo, all_gather_rows, all_reduce_sum_, any_rank
from .encoding import GRID_SIZE, IGNORE_LABEL_ID, SEQ_LEN, encode_examples
from .errors import CheckpointError, ConfigError
from .model import Carry, TinyRecursiveModel
from .optim import EMA, TRAIN_MODES, AdamATan2, apply_lora, first_trunk_step, lr_factor, sparse_sign_sgd_
from .tasks import Example, Task

log = logging.getLogger("trm_kaggle.train")


@dataclass
class TrainConfig:
    """Post-training hyper-parameters; defaults are the paper's competition recipe."""

    global_batch_size: int = 384
    lr: float = 2e-4
    emb_lr: float = 2e-2
    weight_decay: float = 0.1
    emb_weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_variant: str = "fork"
    warmup_steps: int = 2000
    lr_schedule: str = "constant"  # "cosine" decays to lr_min_ratio
    lr_min_ratio: float = 1.0
    ema: bool = True
    ema_rate: float = 0.999
    mode: str = "full"  # full | embeddings | embeddings-then-full | lora
    embeddings_fraction: float = 0.25
    lora_rank: int = 1
    lora_alpha: float = 16.0
    num_variants: int = 1000
    embedding_init: str = "mean"  # mean | normal
    translate: bool = True
    include_test_pairs: bool = False  # pre-training also learns from solved test pairs
    seed: int = 0
    micro_batch: int | None = None  # rows per forward/backward on one rank; None = the whole local batch
    snapshot_every: int = 50  # steps between in-memory "last good" snapshots (NaN rollback)
    max_nan_events: int = 3
    save_every_s: float = 300.0

    def __post_init__(self) -> None:
        if self.mode not in TRAIN_MODES:
            raise ConfigError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.adam_variant not in ("fork", "upstream"):
            raise ConfigError(f"adam_variant must be 'fork' or 'upstream', got {self.adam_variant!r}")
        if self.embedding_init not in ("mean", "normal"):
            raise ConfigError(f"embedding_init must be 'mean' or 'normal', got {self.embedding_init!r}")
        if self.global_batch_size < 1 or self.num_variants < 1 or self.warmup_steps < 0:
            raise ConfigError("global_batch_size and num_variants must be >= 1, warmup_steps >= 0")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError(f"micro_batch must be >= 1, got {self.micro_batch}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# ------------------------------------------------------------------------------------------------------ loss
def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(s(x) / sum s(x)) with s(x) = 1/(1-x) for x < 0 and x + 1 otherwise (upstream's stablemax)."""
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def act_loss(logits: torch.Tensor, q_halt_logits: torch.Tensor, labels: torch.Tensor):
    """Upstream's ACTLossHead (TRM_FACTS §3.8): returns (loss summed over rows, per-row exact correctness, metrics)."""
    mask = labels != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    safe_labels = torch.where(mask, labels, 0).to(torch.int64)
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    token_loss = -torch.gather(logprobs, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    token_loss = torch.where(mask, token_loss, 0)
    lm_loss = (token_loss.sum(-1) / counts.clamp_min(1)).sum()
    with torch.no_grad():
        correct = mask & (logits.argmax(-1) == labels)
        seq_correct = correct.sum(-1) == counts
    q_loss = F.binary_cross_entropy_with_logits(q_halt_logits, seq_correct.to(q_halt_logits.dtype), reduction="sum")
    loss = lm_loss + 0.5 * q_loss
    token_acc = (correct.sum(-1) / counts.clamp_min(1)).to(torch.float64)
    return loss, seq_correct, {"lm_loss": lm_loss.detach(), "q_halt_loss": q_loss.detach(), "token_acc": token_acc}


# ---------------------------------------------------------------------------------------------------- sampler
class ExampleSampler:
    """Deterministic global batches: every rank draws the same batch from the same seed and keeps its slice.

    Its whole state is (epoch, cursor, leftover) plus a numpy bit-generator state, all JSON-able for resume.
    """

    def __init__(self, tasks: Sequence[Task], variant_index: VariantIndex, global_batch_size: int, seed: int = 0,
                 translate: bool = True, include_test_pairs: bool = False):
        self.tasks = [t for t in tasks if t.task_id in variant_index.variants]
        self.examples: list[tuple[Example, ...]] = []
        for task in self.tasks:
            pairs = list(task.train)
            if include_test_pairs:
                pairs += [ex for ex in task.test if ex.output is not None]
            self.examples.append(tuple(pairs))
        if not any(self.examples):
            raise ConfigError("no training examples: every task is invalid or has no train pairs")
        self.variant_index = variant_index
        self.global_batch_size = global_batch_size
        self.translate = translate
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.epoch = 0
        self.order: list[int] = []
        self.cursor = 0

    @property
    def examples_per_epoch(self) -> int:
        return sum(len(e) for e in self.examples)

    def _next_task(self) -> int:
        if self.cursor >= len(self.order):
            self.order = self.rng.permutation(len(self.tasks)).tolist()
            self.cursor = 0
            self.epoch += 1
        i = self.order[self.cursor]
        self.cursor += 1
        return i

    def next_batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs uint8 [G, 900], labels uint8 [G, 900], identifiers int64 [G]) for the whole global batch."""
        chosen: list[tuple[Example, tuple[int, int]]] = []
        ids: list[int] = []
        while len(chosen) < self.global_batch_size:
            i = self._next_task()
            task, examples = self.tasks[i], self.examples[i]
            if not examples:
                continue
            variants = self.variant_index.variants[task.task_id]
            k = int(self.rng.integers(len(variants)))
            aug = variants[k]
            identifier = self.variant_index.identifier(task.task_id, k)
            order = self.rng.permutation(len(examples))
            take = order[: self.global_batch_size - len(chosen)]
            # Upstream's no_aug_id: one example of the draw stays untranslated. It is drawn among the examples taken
            # (the first of a random order), so a draw cut at the end of a batch keeps its untranslated one too.
            keep_home = int(take[0])
            for j in take:
                ex = examples[int(j)]
                ex = Example(aug.apply(ex.input), aug.apply(ex.output))  # a transpose swaps h and w: augment first
                offset = (0, 0)
                if self.translate and int(j) != keep_home:
                    h = max(ex.input.shape[0], ex.output.shape[0])
                    w = max(ex.input.shape[1], ex.output.shape[1])
                    offset = (int(self.rng.integers(GRID_SIZE - h + 1)), int(self.rng.integers(GRID_SIZE - w + 1)))
                chosen.append((ex, offset))
                ids.append(identifier)
        inputs, labels = encode_examples([ex for ex, _ in chosen], [off for _, off in chosen])
        return inputs, labels, np.asarray(ids, dtype=np.int64)

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "order": self.order, "cursor": self.cursor,
                "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.order, self.cursor = state["epoch"], list(state["order"]), state["cursor"]
        self.rng.bit_generator.state = state["rng"]


# ---------------------------------------------------------------------------------------------------- trainer
@dataclass
class StepStats:
    step: int
    loss: float
    lm_loss: float
    q_halt_loss: float
    halted: int
    exact: int
    lr_factor: float
    seconds: float


@dataclass
class TrainSummary:
    steps_done: int = 0
    start_step: int = 0
    stopped_by: str = ""
    seconds: float = 0.0
    nan_events: int = 0
    oom_events: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Trainer:
    """Owns the model's optimisers, EMA, sampler and carry; `train()` runs until a step count or a deadline."""

    def __init__(self, model: TinyRecursiveModel, tasks: Iterable[Task], config: TrainConfig,
                 variant_index: VariantIndex, dist: DistInfo | None = None, total_steps: int | None = None):
        self.model = model
        self.config = config
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.variant_index = variant_index
        if config.global_batch_size % self.dist.world_size:
            raise ConfigError(f"global batch {config.global_batch_size} is not divisible by {self.dist.world_size} ranks")
        self.local_batch = config.global_batch_size // self.dist.world_size
        self.micro_batch = min(config.micro_batch or self.local_batch, self.local_batch)
        self.sampler = ExampleSampler(list(tasks), variant_index, config.global_batch_size, seed=config.seed,
                                      translate=config.translate, include_test_pairs=config.include_test_pairs)
        self.total_steps = total_steps or 1
        if config.mode == "lora":
            apply_lora(model, rank=config.lora_rank, alpha=config.lora_alpha)
        self.model.to(self.device).train()
        self.trunk_params = [p for p in model.parameters() if p.requires_grad]
        self.adam = AdamATan2(self.trunk_params, lr=0.0, betas=(config.beta1, config.beta2),
                              weight_decay=config.weight_decay, variant=config.adam_variant)
        self.ema = EMA(model, rate=config.ema_rate) if config.ema and self.trunk_params else None
        self.step = 0
        self.lr_scale = 1.0  # halved on every NaN rollback
        self.nan_events = 0
        self.oom_events = 0
        self.carry: Carry | None = None
        self._snapshot: dict[str, Any] | None = None
        self._trunk_on: bool | None = None

    # ------------------------------------------------------------------------------------------- schedule
    def set_total_steps(self, total_steps: int) -> None:
        """The planned step count fixes the embeddings-only phase and a cosine schedule; constant LR ignores it."""
        self.total_steps = max(1, int(total_steps))

    def _warmup(self) -> int:
        # A CPU rehearsal of 50 steps must not spend them all warming up: cap warm-up at a fifth of the plan.
        return min(self.config.warmup_steps, max(1, self.total_steps // 5))

    def _trunk_trains(self, step: int) -> bool:
        first = first_trunk_step(self.config.mode, self.total_steps, self.config.embeddings_fraction)
        return first is not None and step >= first

    def _set_trunk_grad(self, on: bool) -> None:
        """Freeze the trunk during embeddings-only phases: backward then skips its weight gradients entirely."""
        if on == self._trunk_on:
            return
        if on and self._trunk_on is False:
            self.adam.reset_state()  # the fork starts the trunk optimiser with fresh moments
        for p in self.trunk_params:
            p.requires_grad_(on)
        self._trunk_on = on

    # ------------------------------------------------------------------------------------------- one step
    def _exploration(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Halting exploration draws for the global batch, seeded by step, sliced per rank (rank-count invariant)."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        G, hmax = self.config.global_batch_size, self.model.config.halt_max_steps
        uniform = torch.rand(G, generator=g)
        # With halt_max_steps 1 the draw is unused (upstream explores only when it exceeds 1); keep the range valid.
        drawn = torch.randint(2, max(hmax, 2) + 1, (G,), generator=g, dtype=torch.int32)
        lo = self.dist.rank * self.local_batch
        return uniform[lo:lo + self.local_batch], drawn[lo:lo + self.local_batch]

    def _local_batch(self) -> dict[str, torch.Tensor]:
        inputs, labels, ids = self.sampler.next_batch()
        lo = self.dist.rank * self.local_batch
        sl = slice(lo, lo + self.local_batch)
        labels_t = torch.from_numpy(labels[sl].astype(np.int64))
        labels_t[labels_t == 0] = IGNORE_LABEL_ID  # PAD is not supervised; EOS is
        return {"inputs": torch.from_numpy(inputs[sl].astype(np.int32)).to(self.device),
                "labels": labels_t.to(self.device),
                "puzzle_identifiers": torch.from_numpy(ids[sl]).to(self.device)}

    def _forward_backward(self, batch, exploration, micro: int):
        """Forward/backward over row chunks of the local batch; the new carry is committed only if all succeed."""
        if self.carry is None:  # train_step creates it; reaching here without one is a programming error
            raise RuntimeError("Trainer._forward_backward called before the ACT carry was created")
        G = self.config.global_batch_size
        parts, ids, rows = [], [], []
        totals = {"loss": 0.0, "lm_loss": 0.0, "q_halt_loss": 0.0}
        halted_n = exact_n = 0
        for lo in range(0, self.local_batch, micro):
            sl = slice(lo, lo + micro)
            sub = Carry(z_H=self.carry.z_H[sl], z_L=self.carry.z_L[sl], steps=self.carry.steps[sl],
                        halted=self.carry.halted[sl], current_data={k: v[sl] for k, v in self.carry.current_data.items()})
            new, out = self.model(sub, {k: v[sl] for k, v in batch.items()},
                                  exploration=(exploration[0][sl], exploration[1][sl]))
            loss, seq_correct, metrics = act_loss(out["logits"], out["q_halt_logits"], new.current_data["labels"])
            (loss / G).backward()
            emb = self.model.puzzle_emb
            ids.append(emb.last_ids)
            rows.append(emb.last_rows.grad)
            parts.append(new)
            totals["loss"] = totals["loss"] + loss.detach()
            totals["lm_loss"] = totals["lm_loss"] + metrics["lm_loss"]
            totals["q_halt_loss"] = totals["q_halt_loss"] + metrics["q_halt_loss"]
            halted_n = halted_n + new.halted.sum()
            exact_n = exact_n + (new.halted & seq_correct).sum()
        new_carry = Carry(z_H=torch.cat([p.z_H for p in parts]), z_L=torch.cat([p.z_L for p in parts]),
                          steps=torch.cat([p.steps for p in parts]), halted=torch.cat([p.halted for p in parts]),
                          current_data={k: torch.cat([p.current_data[k] for p in parts]) for k in parts[0].current_data})
        return new_carry, torch.cat(ids), torch.cat(rows), totals, halted_n, exact_n

    def train_step(self) -> StepStats | None:
        """One optimiser step (= one ACT step). Returns None when the step was rolled back after a NaN."""
        t0 = time.perf_counter()
        step = self.step + 1
        trunk_on = self._trunk_trains(step)
        self._set_trunk_grad(trunk_on)
        batch = self._local_batch()
        if self.carry is None:
            self.carry = self.model.initial_carry(batch)
        exploration = self._exploration(step)
        if self._snapshot is None or step % self.config.snapshot_every == 1:
            self._take_snapshot()
        while True:
            try:
                new_carry, ids, rows, totals, halted_n, exact_n = self._forward_backward(batch, exploration, self.micro_batch)
                break
            except Exception as exc:  # noqa: BLE001 - only OOM is handled; everything else re-raises
                if not _is_oom(exc) or self.micro_batch == 1:
                    raise
                self.model.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.micro_batch = max(1, self.micro_batch // 2)
                self.oom_events += 1
                log.warning("out of memory at step %d: micro-batch halved to %d (global batch %d kept by "
                            "accumulation)", step, self.micro_batch, self.config.global_batch_size)

        grads = [p.grad for p in self.trunk_params if p.grad is not None]
        all_reduce_sum_(grads, self.dist)
        ids, rows = all_gather_rows(ids, rows, self.dist)
        finite = torch.isfinite(totals["loss"]) & torch.isfinite(rows).all()
        if grads:
            finite = finite & torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if any_rank(not bool(finite), self.dist):
            self._rollback(step)
            return None

        factor = lr_factor(step, self._warmup(), self.total_steps, min_ratio=self.config.lr_min_ratio,
                           schedule="cosine" if self.config.lr_schedule == "cosine" else "constant") * self.lr_scale
        sparse_sign_sgd_(self.model.puzzle_emb.weights, ids, rows.to(torch.float32),
                         lr=self.config.emb_lr * factor, weight_decay=self.config.emb_weight_decay)
        if trunk_on and grads:
            for group in self.adam.param_groups:
                group["lr"] = self.config.lr * factor
            self.adam.step()
            if self.ema is not None:
                self.ema.update()
        self.model.zero_grad(set_to_none=True)
        self.carry = new_carry
        self.step = step
        return StepStats(step=step, loss=float(totals["loss"]) / self.local_batch,
                         lm_loss=float(totals["lm_loss"]) / self.local_batch,
                         q_halt_loss=float(totals["q_halt_loss"]) / self.local_batch,
                         halted=int(halted_n), exact=int(exact_n), lr_factor=factor, seconds=time.perf_counter() - t0)

    # ------------------------------------------------------------------------------------- NaN rollback
    def _take_snapshot(self) -> None:
        self._snapshot = {
            "step": self.step,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "adam": _clone_state(self.adam.state_dict()),
            "ema": _clone_state(self.ema.state_dict()) if self.ema else None,
        }

    def _rollback(self, step: int) -> None:
        self.nan_events += 1
        self.model.zero_grad(set_to_none=True)
        snap = self._snapshot
        self.model.load_state_dict(snap["model"])
        self.adam.load_state_dict(_clone_state(snap["adam"]))
        if self.ema and snap["ema"] is not None:
            self.ema.load_state_dict(_clone_state(snap["ema"]))
        self.step = snap["step"]
        self.carry = None  # latents of the bad step are suspect: restart every row
        self.lr_scale *= 0.5
        log.warning("non-finite loss or gradient at step %d: rolled back to step %d, LR scale now %g (event %d of %d)",
                    step, self.step, self.lr_scale, self.nan_events, self.config.max_nan_events)

    # ------------------------------------------------------------------------------------------------ loop
    def train(self, max_steps: int | None = None, should_stop: Callable[[], bool] = lambda: False,
              on_step: Callable[[StepStats], None] | None = None, save_state: Callable[[], None] | None = None,
              clock: Callable[[], float] = time.monotonic) -> TrainSummary:
        """Train until `max_steps` total steps, `should_stop()` (deadline, signal), or repeated NaNs."""
        summary = TrainSummary(start_step=self.step)
        t_start = last_save = clock()
        while True:
            if max_steps is not None and self.step >= max_steps:
                summary.stopped_by = "steps"
                break
            if any_rank(should_stop(), self.dist):
                summary.stopped_by = "deadline"
                break
            if self.nan_events >= self.config.max_nan_events:
                summary.stopped_by = "nan"
                log.error("%d non-finite steps: training stops here and inference uses the last good weights",
                          self.nan_events)
                break
            t0 = clock()
            stats = self.train_step()
            if stats is not None:
                # Timed on the caller's clock, so a deadline rule built on it compares like with like.
                stats.seconds = clock() - t0
                summary.history.append(asdict(stats))
                if on_step is not None:
                    on_step(stats)
            if save_state is not None and clock() - last_save >= self.config.save_every_s:
                save_state()
                last_save = clock()
        summary.steps_done = self.step - summary.start_step
        summary.seconds = clock() - t_start
        summary.nan_events, summary.oom_events = self.nan_events, self.oom_events
        return summary

    @contextlib.contextmanager
    def inference_weights(self):
        """EMA weights in the model for inference; the live weights come back afterwards."""
        self.model.eval()
        try:
            if self.ema is not None:
                with self.ema.applied(self.model):
                    yield self.model
            else:
                yield self.model
        finally:
            self.model.train()

    # -------------------------------------------------------------------------------------- save / resume
    def save_state(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Everything needed to resume, as safetensors + JSON (no pickle). Only rank 0 writes."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        if not self.dist.is_main:
            return out
        out.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"model/{k}"] = v.detach().cpu().contiguous()
        adam_meta = _flatten_optimizer(self.adam.state_dict(), "adam", tensors)
        ema_meta = None
        if self.ema is not None:
            ema_state = self.ema.state_dict()
            ema_meta = {k: v for k, v in ema_state.items() if not isinstance(v, dict)}
            for name, t in ema_state.get("shadow", {}).items():
                tensors[f"ema/{name}"] = t.detach().cpu().contiguous()
        meta = {"step": self.step, "lr_scale": self.lr_scale, "nan_events": self.nan_events,
                "micro_batch": self.micro_batch, "total_steps": self.total_steps, "trunk_on": self._trunk_on,
                "sampler": self.sampler.state(), "adam": adam_meta, "ema": ema_meta,
                "config": asdict(self.config), "variant_index": _variant_fingerprint(self.variant_index),
                **(extra or {})}
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".state.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, out / "train_state.safetensors")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        meta["tensors_bytes"] = (out / "train_state.safetensors").stat().st_size
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".state.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, out / "train_state.json")
        return out

    def load_state(self, out_dir: str | Path) -> dict[str, Any]:
        from safetensors.torch import load_file

        out = Path(out_dir)
        try:
            meta = json.loads((out / "train_state.json").read_text())
            if (out / "train_state.safetensors").stat().st_size != meta.get("tensors_bytes"):
                raise CheckpointError(f"{out}: train_state.safetensors does not match train_state.json (torn write)")
            tensors = load_file(str(out / "train_state.safetensors"), device="cpu")
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{out}: cannot resume from this training state ({e})") from None
        if meta["variant_index"] != _variant_fingerprint(self.variant_index):
            raise CheckpointError(f"{out}: the saved state was trained on other tasks or variants; refusing to resume")
        model_state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
        self.model.load_state_dict(model_state)
        self.adam.load_state_dict(_unflatten_optimizer(meta["adam"], "adam", tensors))
        if self.ema is not None and meta.get("ema") is not None:
            shadow = {k.removeprefix("ema/"): v for k, v in tensors.items() if k.startswith("ema/")}
            self.ema.load_state_dict({**meta["ema"], "shadow": shadow})
        self.step = meta["step"]
        self.lr_scale = meta["lr_scale"]
        self.nan_events = meta["nan_events"]
        self.micro_batch = meta["micro_batch"]
        self.total_steps = meta["total_steps"]
        self._trunk_on = meta["trunk_on"]
        if self._trunk_on is not None:
            for p in self.trunk_params:
                p.requires_grad_(self._trunk_on)
        self.sampler.load_state(meta["sampler"])
        self.carry = None  # the ACT carry (GBs at batch 384) is not saved: rows restart from fresh latents
        self.model.to(self.device)
        return meta


def _variant_fingerprint(index: VariantIndex) -> dict[str, Any]:
    return {"tasks": len(index.task_ids), "num_identifiers": index.num_identifiers,
            "first": index.task_ids[:3], "last": index.task_ids[-3:]}


def _clone_state(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_state(v) for v in obj]
    return obj


def _flatten_optimizer(state: dict[str, Any], prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Split an optimiser state dict into tensors (into `tensors`) and a JSON-able remainder."""
    meta: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, per_param in state["state"].items():
        entry = {}
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                name = f"{prefix}/{idx}/{key}"
                tensors[name] = value.detach().cpu().contiguous()
                entry[key] = {"tensor": name}
            else:
                entry[key] = value
        meta["state"][str(idx)] = entry
    return meta


def _unflatten_optimizer(meta: dict[str, Any], prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                           for k, v in entry.items()}
    return {"param_groups": meta["param_groups"], "state": state}


# ------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def exact_accuracy(model: TinyRecursiveModel, tasks: Sequence[Task], variant_index: VariantIndex,
                   pairs: str = "train", batch_size: int = 64, act_steps: int | None = None,
                   device: torch.device | str = "cpu") -> float:
    """Fraction of (task, pair) whose identity-variant prediction is exactly right (train pairs by default)."""
    from .encoding import decode_predictions

    rows, ids, targets = [], [], []
    for task in tasks:
        if task.task_id not in variant_index.variants:
            continue
        for ex in (task.train if pairs == "train" else task.test):
            if ex.output is None:
                continue
            rows.append(ex)
            ids.append(variant_index.identifier(task.task_id, 0))
            targets.append(ex.output)
    if not rows:
        return float("nan")
    correct = 0
    for lo in range(0, len(rows), batch_size):
        inputs, _ = encode_examples(rows[lo:lo + batch_size])
        logits, _ = model.predict(torch.from_numpy(inputs.astype(np.int64)).to(device),
                                  torch.tensor(ids[lo:lo + batch_size], device=device), act_steps=act_steps)
        for grid, target in zip(decode_predictions(logits.argmax(-1).cpu().numpy()), targets[lo:lo + batch_size]):
            correct += int(grid is not None and grid.shape == target.shape and np.array_equal(grid, target))
    return correct / len(rows)
