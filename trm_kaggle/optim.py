"""Optimisers, LR schedule, EMA, freeze schedule and LoRA for post-training (TRM_FACTS §5, §8).

Everything here is plain PyTorch (no compiled extension), so it runs the same on a CPU test box and on Kaggle GPUs.

    trunk = AdamATan2(trainable_params, lr=0.0, betas=(0.9, 0.95), weight_decay=0.1, variant="fork")
    table = SparseSignSGD(model.puzzle_emb.weights, lr=1e-2, weight_decay=0.1)
    ema = EMA(model, rate=0.999)
    for step in range(1, total_steps + 1):
        f = lr_factor(step, warmup_steps, total_steps)
        ...backward...
        emb = model.puzzle_emb                                      # rows of this batch, see model.PuzzleEmbedding
        table.step(emb.last_ids, emb.last_rows.grad, lr=f * 1e-2)   # gather=all_gather_rows when distributed
        if trunk_active(step, "embeddings-then-full", total_steps):
            if step == first_trunk_step("embeddings-then-full", total_steps):
                trunk.reset_state()                                 # fresh moments, as the fork
            for g in trunk.param_groups:
                g["lr"] = f * 1e-4
            trunk.step()
        trunk.zero_grad(set_to_none=True)
        ema.update()
    with ema.applied():
        save(model)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trm_kaggle.errors import CheckpointError, ConfigError

__all__ = [
    "AdamATan2",
    "SparseSignSGD",
    "sparse_sign_sgd_",
    "all_gather_rows",
    "EMA",
    "lr_factor",
    "TRAIN_MODES",
    "trunk_active",
    "first_trunk_step",
    "apply_lora",
    "merge_lora",
    "lora_modules",
]


# ----------------------------------------------------------------------------------------------------------------------
# AdamATan2 (§5.1)
# ----------------------------------------------------------------------------------------------------------------------


class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of m / (sqrt(v) + eps): no epsilon, invariant to the gradient's scale.

    variant="upstream" is the `adam-atan2` package that upstream TRM trains with:
        p <- p * (1 - lr*wd);  m <- lerp(m, g, 1-b1);  v <- lerp(v, g*g, 1-b2)
        p <- p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
    variant="fork" is `adam-atan2-pytorch` (lucidrains) that every Trelis-fork branch imports:
        u = atan2(m / (1 - b1^t), b * sqrt(v / (1 - b2^t)));  p <- p * (1 - lr*wd);  p <- p - lr * a * u
    The fork's package is used with its default decoupled_wd=False, which (despite the name) is the same
    p * (1 - lr*wd) decay as upstream's; only decoupled_wd=True would divide wd by the initial LR, and nobody sets it.

    Both move each element by about lr * sign(g) on step 1: upstream by lr * atan(1-b1)/(1-b1) = 0.997 lr (b1 0.9),
    the fork by lr * 1.27 * atan(1/b) = 0.997 lr (b 1).
    Only parameters with a .grad move; each parameter keeps its own step counter t (from 1), so a parameter that
    skips a step (no grad) is bias-corrected by its own count. Set the LR per step through param_groups[i]["lr"].
    """

    VARIANTS = ("upstream", "fork")
    # torch.optim adds its own keys (e.g. "differentiable") to groups loaded from a state dict; pass only ours on.
    _RULE_KEYS = ("lr", "betas", "weight_decay", "variant", "a", "b")

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.1,
        variant: str = "upstream",
        a: float = 1.27,
        b: float = 1.0,
    ):
        if variant not in self.VARIANTS:
            raise ConfigError(f"AdamATan2 variant must be one of {self.VARIANTS}, got {variant!r}")
        if not lr >= 0.0:
            raise ConfigError(f"AdamATan2 lr must be >= 0, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ConfigError(f"AdamATan2 betas must lie in [0, 1), got {betas}")
        if not weight_decay >= 0.0:
            raise ConfigError(f"AdamATan2 weight_decay must be >= 0, got {weight_decay}")
        if not b > 0.0:
            raise ConfigError(f"AdamATan2 b must be > 0 (it scales the atan2 denominator), got {b}")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, variant=variant, a=a, b=b)
        super().__init__(params, defaults)

    def reset_state(self) -> None:
        """Forget moments and step counters, so the next step is step 1 again (the fork's trunk after the freeze)."""
        self.state.clear()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Bucket by (device, dtype, step count): one foreach pass per bucket. In training every trainable parameter
            # has a grad every step, so this is a single bucket per device.
            buckets: dict[tuple, tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("AdamATan2 does not take sparse gradients; use SparseSignSGD for the task table")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                key = (p.device, p.dtype, state["step"])
                ps, gs, ms, vs = buckets.setdefault(key, ([], [], [], []))
                ps.append(p)
                gs.append(p.grad if p.grad.dtype == p.dtype else p.grad.to(p.dtype))
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
            for (_, _, t), (ps, gs, ms, vs) in buckets.items():
                _adam_atan2_foreach(ps, gs, ms, vs, t=t, **{k: group[k] for k in self._RULE_KEYS})
        return loss


def _adam_atan2_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    t: int,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    variant: str,
    a: float,
    b: float,
) -> None:
    beta1, beta2 = betas
    if lr != 0.0 and weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    bias1 = 1.0 - beta1**t
    bias2 = 1.0 - beta2**t
    # Both variants reduce to  p -= step_size * atan(ratio * m / sqrt(v)):
    #   upstream: atan2(m, sqrt(v)/sqrt(bias2))            -> ratio = sqrt(bias2),              step = lr / bias1
    #   fork:     atan2(m/bias1, b*sqrt(v)/sqrt(bias2))    -> ratio = sqrt(bias2) / (bias1*b), step = lr * a
    if variant == "upstream":
        ratio, step_size = math.sqrt(bias2), lr / bias1
    else:
        ratio, step_size = math.sqrt(bias2) / (bias1 * b), lr * a
    # PyTorch has no _foreach_atan2, so use atan2(y, x) = atan(y / x) for x >= 0. Clamping x at the smallest normal
    # float keeps 0/0 (an element whose gradient has always been exactly zero, e.g. rows of absent tokens) at
    # atan(0) = 0, as atan2(0, 0) is, and turns y/0 into a huge ratio whose atan is +-pi/2, as atan2(y, 0) is.
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, ratio)
    torch._foreach_clamp_min_(denom, torch.finfo(params[0].dtype).tiny)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_atan_(update)
    torch._foreach_add_(params, update, alpha=-step_size)


# ----------------------------------------------------------------------------------------------------------------------
# Sparse sign-SGD for the per-variant task-embedding table (§5.2)
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sparse_sign_sgd_(weights: Tensor, ids: Tensor, grads: Tensor, lr: float, weight_decay: float = 0.1) -> None:
    """In place: for each distinct id in `ids`, w[id] <- w[id]*(1 - lr*wd) - lr*sign(sum of its gradient rows).

    Rows not in `ids` are not read or written. `ids`/`grads` are the rows of the whole (global) batch: in distributed
    training pass what `all_gather_rows` returns. Works on [N, D] temporaries only (never [num_ids, D]), and has no
    host sync: instead of torch.unique (whose output size is data-dependent, so CUDA must sync to allocate it) the ids
    are sorted, run starts marked, and a cumulative sum gives each row its group index; the gradient is summed into an
    [N, D] buffer (rows past the number of groups stay zero and unused). Every duplicate then computes the same new
    row, so the scattered write of duplicates is deterministic in value.
    Caveat: on CUDA index_add_ sums in no fixed order, so a group sum within rounding of zero can change sign between
    runs; sign() of an exact-zero sum is 0 and the row only decays, as upstream.
    """
    if ids.ndim != 1 or grads.ndim != 2 or grads.shape[0] != ids.shape[0] or grads.shape[1] != weights.shape[1]:
        raise ConfigError(
            f"sparse_sign_sgd_: need ids [N] and grads [N, {weights.shape[1]}], "
            f"got {tuple(ids.shape)} and {tuple(grads.shape)}"
        )
    n = ids.shape[0]
    if n == 0:
        return
    ids = ids.to(device=weights.device, dtype=torch.long)
    grads = grads.to(device=weights.device, dtype=weights.dtype)
    sorted_ids, order = torch.sort(ids)
    run_start = torch.ones(n, dtype=torch.long, device=ids.device)
    run_start[1:] = (sorted_ids[1:] != sorted_ids[:-1]).long()
    group = torch.empty_like(run_start)
    group[order] = torch.cumsum(run_start, 0) - 1
    summed = torch.zeros_like(grads).index_add_(0, group, grads)
    direction = summed.sign_().index_select(0, group)
    rows = weights.index_select(0, ids)
    rows.mul_(1.0 - lr * weight_decay).add_(direction, alpha=-lr)
    weights.index_copy_(0, ids, rows)


def all_gather_rows(ids: Tensor, grads: Tensor, group=None) -> tuple[Tensor, Tensor]:
    """Concatenate every rank's (ids [B], grads [B, D]) in rank order; a no-op without an initialised process group.

    All ranks must pass the same B (they do: the per-rank batch is fixed, §5.5).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return ids, grads
    world = dist.get_world_size(group)
    id_parts = [torch.empty_like(ids) for _ in range(world)]
    grad_parts = [torch.empty_like(grads) for _ in range(world)]
    dist.all_gather(id_parts, ids.contiguous(), group=group)
    dist.all_gather(grad_parts, grads.contiguous(), group=group)
    return torch.cat(id_parts), torch.cat(grad_parts)


class SparseSignSGD:
    """Holds the task-embedding table (a plain f32 buffer, not an nn.Parameter) and its LR / weight decay.

    `param_groups` mirrors torch optimisers (one group with "lr" and "weight_decay") so a schedule can set
    `opt.param_groups[0]["lr"]` on both optimisers alike. `step(ids, grads)` applies the rows of this rank's batch;
    pass `gather=all_gather_rows` (or any callable with that signature) to combine all ranks' rows first, or gather
    yourself and call `sparse_sign_sgd_` / `step(..., gathered=True)`.
    """

    def __init__(
        self,
        weights: Tensor,
        lr: float = 1e-2,
        weight_decay: float = 0.1,
        gather: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ):
        if weights.ndim != 2:
            raise ConfigError(f"SparseSignSGD needs a [num_ids, D] table, got shape {tuple(weights.shape)}")
        if not lr >= 0.0 or not weight_decay >= 0.0:
            raise ConfigError(f"SparseSignSGD lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
        self.weights = weights
        self.gather = gather
        self.param_groups = [{"lr": lr, "weight_decay": weight_decay}]

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.param_groups[0]["lr"] = value

    def step(self, ids: Tensor, grads: Tensor, lr: float | None = None, gathered: bool = False) -> None:
        if self.gather is not None and not gathered:
            ids, grads = self.gather(ids, grads)
        group = self.param_groups[0]
        sparse_sign_sgd_(self.weights, ids, grads, group["lr"] if lr is None else lr, group["weight_decay"])

    def state_dict(self) -> dict:
        # The table lives in the model's state dict; this holds the hyper-parameters only (sign-SGD is stateless).
        return {"param_groups": [dict(g) for g in self.param_groups]}

    def load_state_dict(self, state: dict) -> None:
        self.param_groups = [dict(g) for g in state["param_groups"]]


# ----------------------------------------------------------------------------------------------------------------------
# EMA of the trainable parameters (§5.6)
# ----------------------------------------------------------------------------------------------------------------------


class EMA:
    """f32 shadow copies of the trainable parameters (requires_grad only), updated as
    shadow = (1 - rate)*param + rate*shadow after each step, with no bias correction (§5.6).

    The puzzle table and H_init/L_init are buffers and frozen LoRA bases have requires_grad False, so none of them is
    averaged, exactly as upstream. Register after loading the checkpoint and after apply_lora.
    """

    def __init__(self, model_or_named_params: nn.Module | Iterable[tuple[str, Tensor]], rate: float = 0.999):
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"EMA rate must lie in [0, 1], got {rate}")
        named = (
            model_or_named_params.named_parameters()
            if isinstance(model_or_named_params, nn.Module)
            else model_or_named_params
        )
        self.rate = rate
        self.params: dict[str, Tensor] = {name: p for name, p in named if p.requires_grad}
        self.shadow: dict[str, Tensor] = {
            name: p.detach().to(torch.float32, copy=True) for name, p in self.params.items()
        }

    @torch.no_grad()
    def update(self) -> None:
        if not self.params:
            return
        shadows = list(self.shadow.values())
        values = [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in self.params.values()]
        # lerp(s, p, 1-mu) = s + (1-mu)(p - s) = (1-mu) p + mu s
        torch._foreach_lerp_(shadows, values, 1.0 - self.rate)

    def _targets(self, model: nn.Module | None) -> dict[str, Tensor]:
        if model is None:
            return self.params
        own = dict(model.named_parameters())
        missing = [name for name in self.shadow if name not in own]
        if missing:
            raise ConfigError(f"EMA: model lacks {len(missing)} averaged parameter(s), e.g. {missing[0]!r}")
        return {name: own[name] for name in self.shadow}

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Overwrite the parameters (of `model`, by name, or of the tracked model) with the shadow values."""
        for name, p in self._targets(model).items():
            p.copy_(self.shadow[name])

    @contextmanager
    def applied(self, model: nn.Module | None = None) -> Iterator[None]:
        """Within the block the parameters hold the averaged values (for evaluation or saving); restored after."""
        targets = self._targets(model)
        with torch.no_grad():
            backup = {name: p.detach().clone() for name, p in targets.items()}
            for name, p in targets.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in targets.items():
                    p.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"rate": self.rate, "shadow": {name: s.clone() for name, s in self.shadow.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            extra, missing = sorted(set(shadow) - set(self.shadow)), sorted(set(self.shadow) - set(shadow))
            raise CheckpointError(f"EMA state does not match the model: unexpected {extra[:3]}, missing {missing[:3]}")
        for name, s in shadow.items():
            if s.shape != self.shadow[name].shape:
                raise CheckpointError(
                    f"EMA state {name!r} has shape {tuple(s.shape)}, the model {tuple(self.shadow[name].shape)}"
                )
            self.shadow[name].copy_(s)
        self.rate = state.get("rate", self.rate)


# ----------------------------------------------------------------------------------------------------------------------
# LR schedule (§5.4) and freeze schedule (§5.3, §8)
# ----------------------------------------------------------------------------------------------------------------------


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float = 1.0, schedule: str = "cosine"
) -> float:
    """Multiplier of the base LR at `step` (the first batch is step 1): linear warm-up step/warmup, then
    min_ratio + max(0, (1 - min_ratio) * 0.5 * (1 + cos(pi * progress))).

    With min_ratio 1.0 (every ARC config) "cosine" is constant 1 after warm-up; schedule="constant" says so explicitly
    and refuses a min_ratio that would otherwise be ignored.
    """
    if step < 1:
        raise ConfigError(f"lr_factor: steps count from 1, got {step}")
    if warmup_steps < 0 or total_steps < 1:
        raise ConfigError(f"lr_factor: need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"lr_factor: schedule must be 'constant' or 'cosine', got {schedule!r}")
    if schedule == "constant" and min_ratio != 1.0:
        raise ConfigError(f"lr_factor: schedule 'constant' ignores min_ratio, so it must be 1.0, got {min_ratio}")
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + max(0.0, (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


TRAIN_MODES = ("full", "embeddings", "embeddings-then-full", "lora")


def first_trunk_step(mode: str, total_steps: int, embeddings_fraction: float = 0.25) -> int | None:
    """The first step at which the trunk optimiser runs, or None if it never does.

    "full" and "lora" train the trunk from step 1 (in "lora" the trunk optimiser holds the LoRA factors and
    embed_tokens); "embeddings" never does; "embeddings-then-full" skips ceil(total_steps * fraction) steps, as the
    fork's freeze_weights_epochs does (§5.3: 3125 of 12500 epochs = the first quarter).
    """
    if mode not in TRAIN_MODES:
        raise ConfigError(f"train mode must be one of {TRAIN_MODES}, got {mode!r}")
    if mode in ("full", "lora"):
        return 1
    if mode == "embeddings":
        return None
    if not embeddings_fraction >= 0.0:
        raise ConfigError(f"embeddings_fraction must be >= 0, got {embeddings_fraction}")
    frozen = math.ceil(total_steps * embeddings_fraction)
    return None if frozen >= total_steps else frozen + 1


def trunk_active(step: int, mode: str, total_steps: int, embeddings_fraction: float = 0.25) -> bool:
    """Whether the trunk optimiser steps at `step` (from 1). While it does not, its gradients are discarded; when it
    starts (step == first_trunk_step) call AdamATan2.reset_state() and use the current scheduled LR (no new warm-up)."""
    first = first_trunk_step(mode, total_steps, embeddings_fraction)
    return first is not None and step >= first


# ----------------------------------------------------------------------------------------------------------------------
# LoRA (§8.5)
# ----------------------------------------------------------------------------------------------------------------------

_DEFAULT_LORA_CLASSES = frozenset({"CastedLinear"})
_lora_classes: dict[type, type] = {}


class _LoRAForward:
    """Mixin placed in front of the wrapped linear's own class: y = base(x) + scale * B(A(dropout(x))), branch in f32.

    The factors live on the linear module itself, so the state-dict keys are `<module>._lora_A` / `<module>._lora_B`
    beside `<module>.weight`, as in fork LoRA checkpoints, and the module keeps its identity (optimisers and EMA that
    already hold `.weight` stay valid; isinstance(m, CastedLinear) stays true).
    """

    _lora_A: nn.Parameter
    _lora_B: nn.Parameter
    _lora_scaling: float
    _lora_dropout: float

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        h = x.float()
        if self._lora_dropout > 0.0:
            h = F.dropout(h, self._lora_dropout, self.training)
        delta = F.linear(F.linear(h, self._lora_A), self._lora_B) * self._lora_scaling
        return y + delta.to(y.dtype)


def _lora_class(base: type) -> type:
    if base not in _lora_classes:
        _lora_classes[base] = type(f"LoRA{base.__name__}", (_LoRAForward, base), {"_lora_base_class": base})
    return _lora_classes[base]


def lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every linear that currently carries LoRA factors."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _LoRAForward)]


def _is_target(name: str, module: nn.Module, targets: frozenset[str] | None) -> bool:
    if not isinstance(getattr(module, "weight", None), Tensor) or module.weight.ndim != 2:
        return False
    if targets is None:
        return type(module).__name__ in _DEFAULT_LORA_CLASSES or isinstance(module, nn.Linear)
    return type(module).__name__ in targets or name in targets or name.rsplit(".", 1)[-1] in targets


def apply_lora(
    model: nn.Module,
    rank: int = 1,
    alpha: float | None = 16,
    dropout: float = 0.0,
    targets: Iterable[str] | None = None,
    train_base: bool = False,
    train_bias: bool = False,
) -> list[str]:
    """Add LoRA factors to every targeted linear of `model` in place; returns the names of the wrapped modules.

    targets: None = every CastedLinear and nn.Linear (in TRM: qkv/o and gate_up/down of each layer, lm_head, q_head);
    otherwise strings matched against the class name, the full module name, or its last component ("qkv_proj").
    A [rank, in] ~ U(+-1/sqrt(in)) (Kaiming-uniform, a=sqrt(5)), B [out, rank] = 0, so the model is unchanged until
    trained; scale = alpha / rank (alpha None -> rank). Base weights and biases of wrapped linears are frozen unless
    train_base / train_bias; nothing else is touched (embed_tokens stays trainable). Call before building the trunk
    optimiser and the EMA so that they pick up the new trainable set.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout must lie in [0, 1), got {dropout}")
    scaling = (rank if alpha is None else alpha) / rank
    target_set = None if targets is None else frozenset(targets)
    chosen = [(name, m) for name, m in model.named_modules() if _is_target(name, m, target_set)]
    if not chosen:
        raise ConfigError(f"apply_lora: no linear module matches targets {sorted(target_set or _DEFAULT_LORA_CLASSES)}")
    for name, m in chosen:
        if isinstance(m, _LoRAForward):
            raise ConfigError(f"apply_lora: {name!r} already has LoRA factors")
    for _, m in chosen:
        out_features, in_features = m.weight.shape
        lora_a = torch.empty(rank, in_features, dtype=torch.float32, device=m.weight.device)
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
        m.__class__ = _lora_class(type(m))
        m._lora_A = nn.Parameter(lora_a)
        m._lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32, device=m.weight.device))
        m._lora_scaling = float(scaling)
        m._lora_dropout = float(dropout)
        # Remember the flags so merge_lora can give back the model exactly as it was.
        m._lora_saved_requires_grad = (m.weight.requires_grad, None if m.bias is None else m.bias.requires_grad)
        m.weight.requires_grad_(train_base)
        if m.bias is not None:
            m.bias.requires_grad_(train_bias)
    return [name for name, _ in chosen]


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold scale * B @ A into each wrapped base weight (in f32), drop the factors and the wrapper; returns how many.

    The merged model has the original classes and state-dict keys, for saving in the base layout or for inference
    without the extra matmuls. Requires-grad flags return to what they were before apply_lora.
    """
    wrapped = lora_modules(model)
    for _, m in wrapped:
        delta = (m._lora_B.float() @ m._lora_A.float()) * m._lora_scaling
        m.weight.add_(delta.to(m.weight.dtype))
        weight_flag, bias_flag = m._lora_saved_requires_grad
        del m._lora_A, m._lora_B, m._lora_scaling, m._lora_dropout, m._lora_saved_requires_grad
        m.__class__ = m._lora_base_class
        m.weight.requires_grad_(weight_flag)
        if m.bias is not None and bias_flag is not None:
            m.bias.requires_grad_(bias_flag)
    return len(wrapped)
