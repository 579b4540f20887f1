"""TinyRecursiveModel computes upstream TRM's function: parity, shapes, ACT semantics, initialisation."""

import math

import pytest
import torch

from trm_kaggle.errors import ConfigError
from trm_kaggle.model import TinyRecursiveModel, TRMConfig, count_parameters, trunc_normal_init_

from .trm_reference import reference_predict

SMALL = dict(hidden_size=64, num_heads=4, expansion=4.0, L_layers=2, H_cycles=2, L_cycles=2, puzzle_emb_len=4,
             puzzle_emb_ndim=64, halt_max_steps=16, num_puzzle_identifiers=7, forward_dtype="float32")


def _nontrivial(model: TinyRecursiveModel, seed: int = 1) -> TinyRecursiveModel:
    """Random task embeddings and q head, so that parity covers the prefix and the halting head."""
    g = torch.Generator().manual_seed(seed)
    D = model.config.hidden_size
    with torch.no_grad():
        model.puzzle_emb.weights.copy_(torch.randn(model.num_puzzle_identifiers, model.config.puzzle_emb_ndim, generator=g))
        model.q_head.weight.copy_(torch.randn(2, D, generator=g) * 0.05)
        model.q_head.bias.copy_(torch.randn(2, generator=g))
    return model


def _batch(B, num_ids, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 12, (B, 900), generator=g), torch.randint(0, num_ids, (B,), generator=g)


@pytest.mark.parametrize("act_steps", [1, 16])
@pytest.mark.parametrize("puzzle_emb_len", [4, 1])
def test_small_model_matches_the_reference_in_float32(act_steps, puzzle_emb_len):
    torch.manual_seed(0)
    cfg = TRMConfig(**{**SMALL, "puzzle_emb_len": puzzle_emb_len})
    model = _nontrivial(TinyRecursiveModel(cfg))
    inputs, ids = _batch(3, cfg.num_puzzle_identifiers)
    logits, q = model.predict(inputs, ids, act_steps=act_steps)
    ref_logits, ref_q = reference_predict(model.state_dict(), cfg.to_dict(), inputs, ids, act_steps)
    assert logits.dtype == torch.float32 and logits.shape == (3, 900, 12) and q.shape == (3,)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(q, ref_q, atol=1e-4, rtol=0)


@pytest.mark.parametrize("act_steps", [1, 16])
def test_small_model_computes_the_reference_function_exactly_in_float64(act_steps):
    """Semantics, free of rounding: the reference spells attention out by hand, the model calls SDPA."""
    torch.manual_seed(0)
    cfg = TRMConfig(**{**SMALL, "forward_dtype": "float64"})
    model = _nontrivial(TinyRecursiveModel(cfg))
    inputs, ids = _batch(2, cfg.num_puzzle_identifiers)
    logits, q = model.predict(inputs, ids, act_steps=act_steps)
    ref_logits, ref_q = reference_predict(model.state_dict(), cfg.to_dict(), inputs, ids, act_steps,
                                          dtype=torch.float64, sdpa=False)
    # predict() returns float32 by contract, so float32 rounding (~6e-8 relative) is all that may remain.
    torch.testing.assert_close(logits, ref_logits.float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(q, ref_q.float(), atol=1e-6, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("act_steps", [1, 16])
def test_paper_config_matches_the_reference_in_float32(act_steps):
    torch.manual_seed(0)
    cfg = TRMConfig(num_puzzle_identifiers=5, forward_dtype="float32")
    model = _nontrivial(TinyRecursiveModel(cfg))
    inputs, ids = _batch(1, 5)
    logits, q = model.predict(inputs, ids, act_steps=act_steps)
    ref_logits, ref_q = reference_predict(model.state_dict(), cfg.to_dict(), inputs, ids, act_steps)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(q, ref_q, atol=1e-4, rtol=0)


def test_paper_config_has_upstreams_parameter_count_and_state_dict_layout():
    with torch.device("meta"):
        model = TinyRecursiveModel(TRMConfig(num_puzzle_identifiers=3))
    assert count_parameters(model) == 6_829_058  # TRM_FACTS §3.2
    sd = model.state_dict()
    assert len(sd) == 15
    assert sd["H_init"].dtype == torch.bfloat16 and sd["L_init"].dtype == torch.bfloat16
    assert tuple(sd["L_level.layers.0.mlp.gate_up_proj.weight"].shape) == (3072, 512)
    assert tuple(sd["L_level.layers.1.mlp.down_proj.weight"].shape) == (512, 1536)
    assert tuple(sd["puzzle_emb.weights"].shape) == (3, 512)
    assert "rotary_emb.cos_cached" not in sd  # non-persistent, as upstream


def test_swiglu_width_is_rounded_up_to_a_multiple_of_256():
    assert [TRMConfig(hidden_size=d, num_heads=4).mlp_hidden for d in (128, 256, 512, 1024)] == [512, 768, 1536, 2816]


def test_fresh_model_is_initialised_as_upstream():
    torch.manual_seed(0)
    model = TinyRecursiveModel(TRMConfig(**SMALL))
    assert torch.all(model.q_head.weight == 0) and torch.all(model.q_head.bias == -5)
    assert torch.all(model.puzzle_emb.weights == 0)
    w = model.L_level.layers[0].mlp.down_proj.weight
    # LeCun truncated normal: realised std = 1/sqrt(fan_in), clipped at about 2.27 std.
    assert abs(w.std().item() * math.sqrt(w.shape[1]) - 1) < 0.05
    assert w.abs().max().item() <= 2.28 / math.sqrt(w.shape[1])


def test_truncated_normal_has_the_requested_std():
    t = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(t.std().item() - 0.5) < 0.01 and t.abs().max().item() <= 2 * 0.5 * 1.13685 + 1e-6


def test_the_same_seed_gives_the_same_model():
    torch.manual_seed(3)
    a = TinyRecursiveModel(TRMConfig(**SMALL))
    torch.manual_seed(3)
    b = TinyRecursiveModel(TRMConfig(**SMALL))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_only_position_zero_of_the_prefix_carries_the_task_embedding():
    torch.manual_seed(0)
    model = _nontrivial(TinyRecursiveModel(TRMConfig(**SMALL)))
    inputs, ids = _batch(2, 7)
    x = model.input_embeddings(inputs, ids)
    assert x.shape == (2, 4 + 900, 64)
    assert torch.all(x[:, 1:4] == 0)
    torch.testing.assert_close(x[:, 0], model.puzzle_emb.weights[ids] * 8.0)  # sqrt(64) = 8


def test_eval_runs_exactly_halt_max_steps_while_training_may_halt_early():
    torch.manual_seed(0)
    cfg = TRMConfig(**{**SMALL, "halt_max_steps": 4, "halt_exploration_prob": 0.0})
    model = TinyRecursiveModel(cfg)
    with torch.no_grad():
        model.q_head.bias.fill_(5.0)  # the head says "halt" everywhere
    inputs, ids = _batch(3, 7)
    batch = {"inputs": inputs, "labels": inputs, "puzzle_identifiers": ids}
    model.train()
    carry, _ = model(model.initial_carry(batch), batch)
    assert carry.halted.all() and carry.steps.tolist() == [1, 1, 1]
    model.eval()
    carry = model.initial_carry(batch)
    for step in range(1, 5):
        carry, _ = model(carry, batch)
        assert carry.halted.all() == (step == 4)


def test_rows_that_did_not_halt_keep_their_example_across_batches():
    torch.manual_seed(0)
    model = TinyRecursiveModel(TRMConfig(**{**SMALL, "halt_exploration_prob": 0.0})).train()
    first, ids = _batch(2, 7, seed=5)
    second, _ = _batch(2, 7, seed=6)
    carry, _ = model(model.initial_carry({"inputs": first, "labels": first, "puzzle_identifiers": ids}),
                     {"inputs": first, "labels": first, "puzzle_identifiers": ids})
    carry, _ = model(carry, {"inputs": second, "labels": second, "puzzle_identifiers": ids})
    assert not carry.halted.any()  # q head bias -5: nobody halts before step 16
    assert torch.equal(carry.current_data["inputs"], first)


def test_training_step_predicts_the_same_as_predict_for_one_step():
    torch.manual_seed(0)
    model = _nontrivial(TinyRecursiveModel(TRMConfig(**SMALL)))
    inputs, ids = _batch(2, 7)
    batch = {"inputs": inputs, "labels": inputs, "puzzle_identifiers": ids}
    model.train()
    _, out = model(model.initial_carry(batch), batch)
    logits, q = model.predict(inputs, ids, act_steps=1)
    torch.testing.assert_close(out["logits"].float(), logits)
    torch.testing.assert_close(out["q_halt_logits"], q)
    assert model.training  # predict restores the mode it found


def test_gradient_reaches_the_trunk_and_the_batch_rows_of_the_task_table():
    torch.manual_seed(0)
    model = _nontrivial(TinyRecursiveModel(TRMConfig(**SMALL))).train()
    inputs, ids = _batch(2, 7)
    batch = {"inputs": inputs, "labels": inputs, "puzzle_identifiers": ids}
    _, out = model(model.initial_carry(batch), batch)
    out["logits"].float().sum().backward()
    assert model.L_level.layers[0].self_attn.qkv_proj.weight.grad.abs().sum() > 0
    rows = model.puzzle_emb.last_rows
    assert rows.grad is not None and rows.grad.shape == (2, 64)
    assert torch.equal(model.puzzle_emb.last_ids, ids)


def test_resizing_the_task_table_starts_every_row_at_the_mean():
    torch.manual_seed(0)
    model = _nontrivial(TinyRecursiveModel(TRMConfig(**SMALL)))
    mean = model.puzzle_emb.weights.mean(0)
    model.resize_puzzle_table(1000)
    assert model.puzzle_emb.weights.shape == (1000, 64) and model.config.num_puzzle_identifiers == 1000
    assert torch.equal(model.puzzle_emb.weights[0], mean) and torch.equal(model.puzzle_emb.weights[999], mean)
    model.resize_puzzle_table(50, init="normal", generator=torch.Generator().manual_seed(0))
    assert model.puzzle_emb.weights.std(0).mean() > 0


def test_bfloat16_forward_returns_float32_outputs():
    torch.manual_seed(0)
    model = TinyRecursiveModel(TRMConfig(**{**SMALL, "forward_dtype": "bfloat16"}))
    logits, q = model.predict(*_batch(1, 7), act_steps=1)
    assert logits.dtype == torch.float32 and q.dtype == torch.float32


@pytest.mark.parametrize("bad", [dict(hidden_size=65), dict(H_cycles=0), dict(forward_dtype="int8"),
                                 dict(pos_encodings="learned"), dict(puzzle_emb_ndim=1000, puzzle_emb_len=1)])
def test_invalid_configs_are_rejected_with_a_config_error(bad):
    with pytest.raises(ConfigError):
        TRMConfig(**{**SMALL, **bad})
