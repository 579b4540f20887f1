"""An independent, functional statement of upstream TRM's evaluation forward pass, written from TRM_FACTS §3.

It shares no code with trm_kaggle.model: it works on a flat state dict with upstream's key names, spells out
attention as softmax(QK^T / sqrt(d)) V instead of calling SDPA, and builds RoPE tables itself. Tests use it to
check that TinyRecursiveModel computes the same function (float32, within 1e-4).
"""

from __future__ import annotations

import math

import torch


def _linear(x, w, b=None):
    y = x @ w.to(x.dtype).t()
    return y if b is None else y + b.to(x.dtype)


def _norm(x, eps):
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope_tables(T, head_dim, theta):
    i = torch.arange(head_dim // 2, dtype=torch.float32)
    inv_freq = 1.0 / theta ** (2 * i / head_dim)  # TRM_FACTS §3.3, literally
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=1)
    return angles.cos(), angles.sin()


def _rope(x, cos, sin):
    # x: [B, T, heads, d]; half-split rotation: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
    d = x.shape[-1] // 2
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    rotated = torch.cat([-x32[..., d:], x32[..., :d]], dim=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def _block(h, sd, prefix, cfg, cos, sin, sdpa):
    B, T, D = h.shape
    H = cfg["num_heads"]
    d = D // H
    qkv = _linear(h, sd[prefix + "self_attn.qkv_proj.weight"]).reshape(B, T, 3, H, d)
    q, k, v = _rope(qkv[:, :, 0], cos, sin), _rope(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
    if sdpa:  # the kernel upstream calls; its float32 rounding differs from the explicit formula below
        attn = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        attn = attn.transpose(1, 2).reshape(B, T, D)
    else:
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d)
        attn = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(B, T, D)
    h = _norm(h + _linear(attn, sd[prefix + "self_attn.o_proj.weight"]), cfg["rms_norm_eps"])
    gate_up = _linear(h, sd[prefix + "mlp.gate_up_proj.weight"])
    inter = gate_up.shape[-1] // 2
    gate, up = gate_up[..., :inter], gate_up[..., inter:]
    mlp = _linear(torch.nn.functional.silu(gate) * up, sd[prefix + "mlp.down_proj.weight"])
    return _norm(h + mlp, cfg["rms_norm_eps"])


def _net(z, injection, sd, cfg, cos, sin, sdpa):
    z = z + injection
    for i in range(cfg["L_layers"]):
        z = _block(z, sd, f"L_level.layers.{i}.", cfg, cos, sin, sdpa)
    return z


def reference_predict(sd: dict, cfg: dict, inputs: torch.Tensor, ids: torch.Tensor, act_steps: int,
                      dtype=torch.float32, sdpa: bool = True):
    """Eval forward from a fresh carry for `act_steps` ACT steps; returns (logits [B,900,V], q_halt [B]).

    `dtype` is the activation dtype (weights are cast to it, RoPE and norms are computed in float32 or wider).
    `sdpa=False` spells attention out as softmax(QK^T/sqrt(d))V.
    """
    D, P = cfg["hidden_size"], cfg["puzzle_emb_len"]
    B = inputs.shape[0]
    tokens = sd["embed_tokens.embedding_weight"].to(dtype)[inputs]
    prefix = torch.zeros(B, P * D, dtype=dtype)
    emb = sd["puzzle_emb.weights"][ids].to(dtype)
    prefix[:, : emb.shape[1]] = emb
    x = torch.cat([prefix.view(B, P, D), tokens], dim=1) * math.sqrt(D)
    T = x.shape[1]
    cos, sin = _rope_tables(T, D // cfg["num_heads"], cfg.get("rope_theta", 10000.0))
    z_H = sd["H_init"].to(dtype).expand(B, T, D)
    z_L = sd["L_init"].to(dtype).expand(B, T, D)
    for _ in range(act_steps):
        for _ in range(cfg["H_cycles"]):
            for _ in range(cfg["L_cycles"]):
                z_L = _net(z_L, z_H + x, sd, cfg, cos, sin, sdpa)
            z_H = _net(z_H, z_L, sd, cfg, cos, sin, sdpa)
    logits = _linear(z_H, sd["lm_head.weight"])[:, P:]
    q = _linear(z_H[:, 0], sd["q_head.weight"], sd["q_head.bias"]).to(torch.promote_types(dtype, torch.float32))
    return logits.to(torch.promote_types(dtype, torch.float32)), q[:, 0]
