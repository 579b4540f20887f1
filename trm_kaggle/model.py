"""The Tiny Recursive Model, in plain PyTorch.

Numerically the same function as upstream's `TinyRecursiveReasoningModel_ACTV1` (TRM_FACTS §3): one weight-tied
2-block network updates a latent z_L `L_cycles` times from (z_H + x), then z_H from z_L, `H_cycles` times per ACT
step, with gradients only through the last H-cycle. Post-norm blocks with weightless RMSNorm, half-split RoPE over a
flat index, SwiGLU, and explicit casts (weights stored f32, activations in `forward_dtype`), all in upstream's
operation order so that float32 and bfloat16 results line up with upstream's.

Parameter and buffer names follow upstream's inner model (`embed_tokens.embedding_weight`, `L_level.layers.0...`)
so that converting an upstream checkpoint is a prefix strip, not a rename table.

    model = TinyRecursiveModel(TRMConfig(num_puzzle_identifiers=1001))
    logits, q_halt_logits = model.predict(inputs, puzzle_identifiers)        # eval: 16 ACT steps from a fresh carry
    carry = model.initial_carry(batch); carry, out = model(carry, batch)     # training: one ACT step
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

# float64 exists for semantic tests against an independent reference; upstream only uses bf16 and f32.
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16, "float64": torch.float64}


@dataclass
class TRMConfig:
    """Architecture. Defaults are the paper's ARC model (upstream README: L_cycles 4, puzzle_emb_len 16)."""

    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    L_layers: int = 2
    H_cycles: int = 3
    L_cycles: int = 4
    puzzle_emb_len: int = 16  # 0 means ceil(puzzle_emb_ndim / hidden_size), as upstream
    puzzle_emb_ndim: int = 512
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    vocab_size: int = 12
    seq_len: int = 900
    num_puzzle_identifiers: int = 1
    forward_dtype: str = "bfloat16"
    pos_encodings: str = "rope"
    no_ACT_continue: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size <= 0 or self.num_heads <= 0 or self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} must be a positive multiple of num_heads {self.num_heads}")
        if (self.hidden_size // max(self.num_heads, 1)) % 2:
            problems.append("head dimension must be even for RoPE")
        for name in ("L_layers", "H_cycles", "L_cycles", "halt_max_steps", "vocab_size", "seq_len", "num_puzzle_identifiers"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.puzzle_emb_len < 0 or self.puzzle_emb_ndim < 0:
            problems.append("puzzle_emb_len and puzzle_emb_ndim must be >= 0")
        if self.puzzle_emb_ndim > self.prefix_len * self.hidden_size:
            problems.append(f"puzzle_emb_ndim {self.puzzle_emb_ndim} does not fit in {self.prefix_len} prefix positions")
        if self.forward_dtype not in _DTYPES:
            problems.append(f"forward_dtype must be one of {sorted(_DTYPES)}, got {self.forward_dtype!r}")
        if self.pos_encodings != "rope":
            problems.append(f"only pos_encodings='rope' is supported (the ARC setting), got {self.pos_encodings!r}")
        if not self.no_ACT_continue:
            problems.append("no_ACT_continue=False is dead code upstream and is not supported")
        if problems:
            raise ConfigError("invalid TRMConfig: " + "; ".join(problems))

    @property
    def prefix_len(self) -> int:
        if self.puzzle_emb_len == 0:
            return -(self.puzzle_emb_ndim // -self.hidden_size)
        return self.puzzle_emb_len

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.forward_dtype]

    @property
    def mlp_hidden(self) -> int:
        return _find_multiple(round(self.expansion * self.hidden_size * 2 / 3), 256)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TRMConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _find_multiple(a: int, b: int) -> int:
    return -(a // -b) * b


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """JAX-style truncated normal whose realised std equals `std` (TRM_FACTS §3.4)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2.0)
        a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_l, pdf_u = c * math.exp(-0.5 * lower**2), c * math.exp(-0.5 * upper**2)
        comp_std = std / math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
        tensor.uniform_(a, b)
        tensor.erfinv_()
        tensor.mul_(sqrt2 * comp_std)
        tensor.clip_(lower * comp_std, upper * comp_std)
    return tensor


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm with statistics in float32."""
    dtype = x.dtype
    x = x.to(torch.promote_types(dtype, torch.float32))  # f32 for bf16/f32 (upstream); f64 stays f64
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x.to(dtype)


class CastedLinear(nn.Module):
    """Linear layer whose f32 weights are cast to the activation dtype at use."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class PuzzleEmbedding(nn.Module):
    """The per-variant task-embedding table.

    The table is a buffer, not a parameter: it is trained by sparse sign-SGD (trm_kaggle.optim), never by Adam, never
    averaged by EMA, and a 240k-row table must not be touched densely on every step. In training the rows of the batch
    are gathered into a fresh leaf tensor (`last_rows`) whose gradient the trainer reads after backward.
    """

    def __init__(self, num_ids: int, dim: int, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.weights = nn.Buffer(torch.zeros(num_ids, dim), persistent=True)
        self.last_ids: torch.Tensor | None = None
        self.last_rows: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            rows = self.weights[ids].detach().requires_grad_(True)
            self.last_ids, self.last_rows = ids, rows
            return rows.to(self.cast_to)
        return self.weights[ids].to(self.cast_to)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_cached = nn.Buffer(emb.cos(), persistent=False)
        self.sin_cached = nn.Buffer(emb.sin(), persistent=False)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """RoPE on [B, T, heads, head_dim] in float32, cast back (half-split convention)."""
    dtype = q.dtype
    work = torch.promote_types(dtype, cos.dtype)  # f32 tables: f32 for bf16/f32 (upstream); f64 stays f64
    q, k = q.to(work), k.to(work)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q.to(dtype), k.to(dtype)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * num_heads * self.head_dim, bias=False)
        self.o_proj = CastedLinear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, 3 * self.num_heads, self.head_dim)
        q, k, v = qkv.split(self.num_heads, dim=2)  # heads 0..H-1 queries, then keys, then values
        q, k = apply_rotary(q, k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, inter: int):
        super().__init__()
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.mlp_hidden)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = rms_norm(h + self.self_attn(h, cos, sin), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """The single weight-tied network used for both the z_L and the z_H updates."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.L_layers))

    def forward(self, hidden: torch.Tensor, injection: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        hidden = hidden + injection
        for layer in self.layers:
            hidden = layer(hidden, cos, sin)
        return hidden


@dataclass
class Carry:
    """ACT state carried across training steps: latents, step counts, halted flags and the rows being worked on."""

    z_H: torch.Tensor
    z_L: torch.Tensor
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]


class TinyRecursiveModel(nn.Module):
    def __init__(self, config: TRMConfig):
        super().__init__()
        self.config = config
        D, dtype = config.hidden_size, config.dtype
        self.prefix_len = config.prefix_len
        self.embed_scale = math.sqrt(D)
        # Creation order matches upstream's, so the same torch seed draws the same initial weights.
        self.embed_tokens = CastedEmbedding(config.vocab_size, D, init_std=1.0 / self.embed_scale, cast_to=dtype)
        self.lm_head = CastedLinear(D, config.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim, cast_to=dtype)
        self.rotary_emb = RotaryEmbedding(D // config.num_heads, config.seq_len + self.prefix_len, config.rope_theta)
        self.L_level = ReasoningModule(config)
        self.H_init = nn.Buffer(trunc_normal_init_(torch.empty(D, dtype=dtype), std=1.0), persistent=True)
        self.L_init = nn.Buffer(trunc_normal_init_(torch.empty(D, dtype=dtype), std=1.0), persistent=True)
        with torch.no_grad():
            # A fresh q head never asks to halt early: sigmoid(-5) ~ 0.007.
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    # ----------------------------------------------------------------------------------------------- embeddings
    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(inputs.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            pe = self.puzzle_emb(puzzle_identifiers)
            pad = self.prefix_len * self.config.hidden_size - pe.shape[-1]
            if pad > 0:
                pe = F.pad(pe, (0, pad))
            x = torch.cat((pe.view(-1, self.prefix_len, self.config.hidden_size), x), dim=-2)
        return self.embed_scale * x

    @property
    def num_puzzle_identifiers(self) -> int:
        return self.puzzle_emb.weights.shape[0] if self.config.puzzle_emb_ndim > 0 else 0

    def mean_puzzle_embedding(self) -> torch.Tensor:
        """Row mean of the table, computed in f32, blank row included (upstream's reset, TRM_FACTS §4.3)."""
        return self.puzzle_emb.weights.to(torch.float32).mean(dim=0)

    def resize_puzzle_table(self, num_ids: int, init: str = "mean", mean: torch.Tensor | None = None,
                            std: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Replace the table with `num_ids` new rows: all at the mean (default), or mean + std * N(0, 1)."""
        if self.config.puzzle_emb_ndim == 0:
            raise ConfigError("this model has no task embeddings (puzzle_emb_ndim = 0)")
        if num_ids < 1:
            raise ConfigError(f"num_ids must be >= 1, got {num_ids}")
        old = self.puzzle_emb.weights
        mean = self.mean_puzzle_embedding() if mean is None else mean.to(torch.float32)
        new = mean.to(old.device).expand(num_ids, -1).clone()
        if init == "normal":
            if std is None:
                std = old.to(torch.float32).std(dim=0, unbiased=False)
            noise = torch.randn(num_ids, old.shape[1], generator=generator).to(old.device)
            new = new + std.clamp_min(1e-6).to(old.device) * noise
        elif init != "mean":
            raise ConfigError(f"init must be 'mean' or 'normal', got {init!r}")
        self.puzzle_emb.weights = new.to(old.dtype)
        self.config.num_puzzle_identifiers = num_ids

    # ---------------------------------------------------------------------------------------------- recursion
    def _latent_recursion(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor):
        cfg = self.config
        cos, sin = self.rotary_emb.cos_cached, self.rotary_emb.sin_cached
        with torch.no_grad():
            for _ in range(cfg.H_cycles - 1):
                for _ in range(cfg.L_cycles):
                    z_L = self.L_level(z_L, z_H + x, cos, sin)
                z_H = self.L_level(z_H, z_L, cos, sin)
        for _ in range(cfg.L_cycles):
            z_L = self.L_level(z_L, z_H + x, cos, sin)
        z_H = self.L_level(z_H, z_L, cos, sin)
        return z_H, z_L

    def act_step(self, z_H: torch.Tensor, z_L: torch.Tensor, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor):
        """One ACT step of the inner model: returns the detached new latents, token logits and q logits."""
        x = self.input_embeddings(inputs, puzzle_identifiers)
        z_H, z_L = self._latent_recursion(z_H, z_L, x)
        logits = self.lm_head(z_H)[:, self.prefix_len:]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return z_H.detach(), z_L.detach(), logits, q_logits[..., 0], q_logits[..., 1]

    def fresh_latents(self, batch_size: int, device: torch.device | None = None):
        T = self.config.seq_len + self.prefix_len
        device = device or self.H_init.device
        z_H = self.H_init.to(device).expand(batch_size, T, -1).clone()
        z_L = self.L_init.to(device).expand(batch_size, T, -1).clone()
        return z_H, z_L

    # ------------------------------------------------------------------------------------- training ACT wrapper
    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        """Everything starts halted, so the first step takes every row from its batch."""
        B = batch["inputs"].shape[0]
        device = batch["inputs"].device
        z_H, z_L = self.fresh_latents(B, device)
        return Carry(z_H=z_H, z_L=z_L, steps=torch.zeros(B, dtype=torch.int32, device=device),
                     halted=torch.ones(B, dtype=torch.bool, device=device),
                     current_data={k: torch.empty_like(v) for k, v in batch.items()})

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor],
                exploration: tuple[torch.Tensor, torch.Tensor] | None = None):
        """One ACT step, as upstream's wrapper: halted rows restart on the new batch's row; others keep theirs.

        `exploration` = (uniform [B], min_steps [B]) replaces the two random draws of upstream's halting
        exploration, so a trainer can draw them for the global batch and give each rank its slice.
        """
        cfg = self.config
        halted = carry.halted
        z_H = torch.where(halted.view(-1, 1, 1), self.H_init, carry.z_H)
        z_L = torch.where(halted.view(-1, 1, 1), self.L_init, carry.z_L)
        steps = torch.where(halted, 0, carry.steps)
        data = {k: torch.where(halted.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v) for k, v in carry.current_data.items()}

        z_H, z_L, logits, q_halt, q_continue = self.act_step(z_H, z_L, data["inputs"], data["puzzle_identifiers"])
        with torch.no_grad():
            steps = steps + 1
            halted = steps >= cfg.halt_max_steps
            if self.training and cfg.halt_max_steps > 1:
                halted = halted | (q_halt > 0)
                if exploration is None:
                    uniform = torch.rand_like(q_halt)
                    drawn = torch.randint_like(steps, low=2, high=cfg.halt_max_steps + 1)
                else:
                    uniform, drawn = (t.to(q_halt.device) for t in exploration)
                min_steps = (uniform < cfg.halt_exploration_prob) * drawn
                halted = halted & (steps >= min_steps)
        new_carry = Carry(z_H=z_H, z_L=z_L, steps=steps, halted=halted, current_data=data)
        return new_carry, {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

    # -------------------------------------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor, act_steps: int | None = None):
        """Upstream's evaluation: eval mode, fresh carry, `act_steps` (default halt_max_steps) ACT steps.

        Returns float32 token logits [B, seq_len, vocab] and q-halt logits [B] from the last step.
        """
        steps = self.config.halt_max_steps if act_steps is None else int(act_steps)
        if steps < 1:
            raise ConfigError(f"act_steps must be >= 1, got {act_steps}")
        was_training = self.training
        self.eval()
        try:
            z_H, z_L = self.fresh_latents(inputs.shape[0], inputs.device)
            for _ in range(steps):
                z_H, z_L, logits, q_halt, _ = self.act_step(z_H, z_L, inputs, puzzle_identifiers)
        finally:
            self.train(was_training)
        return logits.to(torch.float32), q_halt


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
