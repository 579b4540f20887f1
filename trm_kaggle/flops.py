"""FLOPs of one training step and one inference sequence, counted from the config (for MFU and for planning).

Only matrix multiplies are counted (2 FLOPs per multiply-add); RMSNorm, RoPE, SiLU, the stablemax loss and the
optimisers are elementwise and left out, as in nanoGPT's and PaLM's MFU. With D = hidden_size, I = SwiGLU width
(TRMConfig.mlp_hidden) and T = seq_len + prefix_len tokens (900 + puzzle_emb_len), one block on one token costs

    2 * (D*3D + D*D + D*2I + I*D)     qkv_proj, o_proj, gate_up_proj, down_proj
  + 2 * 2 * T * D                     attention: Q @ K^T and P @ V over all T keys (non-causal), summed over heads

One ACT step calls the weight-tied reasoning module H_cycles * (L_cycles + 1) times, each call L_layers blocks over
T tokens, then lm_head (2 * D * vocab per token, on all T positions: the prefix is sliced off afterwards) and q_head
(2 * D * 2 on one token). Training back-propagates through the last L_cycles + 1 calls only (the earlier H-cycles run
under no_grad), at twice their forward cost (grad w.r.t. inputs and w.r.t. weights), plus lm_head's backward.

Paper config (D 512, I 1536, 8 heads, L_layers 2, H3 L4, P16, T 916):
    block/token = 6,815,744 + 1,875,968 = 8,691,712
    forward   = 15 calls * 2 blocks * 916 * 8,691,712     = 238.9 GFLOP per sample
    backward  =  5 calls * 2 blocks * 916 * 8,691,712 * 2 = 159.2 GFLOP
    lm_head   = 3 * 2 * 512 * 12 * 916                    = 0.03 GFLOP
    total     = 398.1 GFLOP per sample, 152.9 TFLOP per optimiser step at global batch 384
which is issue 7's "about 153 TFLOP per step at batch 384": the same count (matmuls + attention, backward only
through the last H-cycle). A "6 x params x tokens" estimate would be far off here, because the 6.8M weights are
reused 30 times per step and attention is 22% of the block FLOPs at T 916.

Inference runs act_steps ACT steps of forward only (model.predict: every step goes through lm_head too):
    paper config, 16 steps: 16 * 238.9 = 3.82 TFLOP per sequence (variant).
"""

from __future__ import annotations

from .model import TRMConfig


def tokens_per_sequence(config: TRMConfig) -> int:
    """Positions each block sees: the 900-token canvas plus the puzzle-embedding prefix."""
    return config.seq_len + config.prefix_len


def block_flops_per_token(config: TRMConfig) -> int:
    """Forward matmul FLOPs of one transformer block on one token (weights + attention)."""
    D, I, T = config.hidden_size, config.mlp_hidden, tokens_per_sequence(config)
    weights = 2 * (D * 3 * D + D * D + D * 2 * I + I * D)
    attention = 2 * 2 * T * D
    return weights + attention


def module_calls_per_act_step(config: TRMConfig) -> int:
    return config.H_cycles * (config.L_cycles + 1)


def _heads_flops(config: TRMConfig) -> int:
    """lm_head on all T positions and q_head on position 0, forward."""
    D, T = config.hidden_size, tokens_per_sequence(config)
    return 2 * D * config.vocab_size * T + 2 * D * 2


def act_step_forward_flops(config: TRMConfig) -> int:
    """Forward FLOPs of one ACT step on one sequence."""
    T = tokens_per_sequence(config)
    blocks = module_calls_per_act_step(config) * config.L_layers
    return blocks * T * block_flops_per_token(config) + _heads_flops(config)


def train_flops_per_sample(config: TRMConfig) -> int:
    """FLOPs of one optimiser step (= one ACT step) per batch row: full forward + 2x backward of the last H-cycle."""
    T = tokens_per_sequence(config)
    grad_blocks = (config.L_cycles + 1) * config.L_layers
    backward = 2 * (grad_blocks * T * block_flops_per_token(config) + _heads_flops(config))
    return act_step_forward_flops(config) + backward


def infer_flops_per_sequence(config: TRMConfig, act_steps: int | None = None) -> int:
    """FLOPs to predict one sequence (one variant of one test input) in `act_steps` ACT steps (default halt_max_steps)."""
    steps = config.halt_max_steps if act_steps is None else int(act_steps)
    return steps * act_step_forward_flops(config)
