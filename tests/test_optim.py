"""Tests for trm_kaggle/optim.py: each rule against a plain per-parameter reference written from TRM_FACTS §5/§8."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trm_kaggle.errors import CheckpointError, ConfigError
from trm_kaggle.optim import (
    EMA,
    AdamATan2,
    SparseSignSGD,
    all_gather_rows,
    apply_lora,
    first_trunk_step,
    lora_modules,
    lr_factor,
    merge_lora,
    sparse_sign_sgd_,
    trunk_active,
)

# ----------------------------------------------------------------------------------------------------------------------
# References: one parameter at a time, float64, the formulas exactly as TRM_FACTS §5.1 / §5.2 write them.
# ----------------------------------------------------------------------------------------------------------------------


class ReferenceAdamATan2:
    def __init__(self, params, lr, betas, weight_decay, variant, a=1.27, b=1.0):
        self.params = params
        self.lr, self.betas, self.wd, self.variant, self.a, self.b = lr, betas, weight_decay, variant, a, b
        self.state = {}

    def step(self, grads):
        beta1, beta2 = self.betas
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            st = self.state.setdefault(i, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            st["t"] += 1
            t, m, v = st["t"], st["m"], st["v"]
            p.mul_(1 - self.lr * self.wd)
            m.add_((1 - beta1) * (g - m))
            v.add_((1 - beta2) * (g * g - v))
            if self.variant == "upstream":
                p.sub_(self.lr / (1 - beta1**t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - beta2**t)))
            else:
                u = torch.atan2(m / (1 - beta1**t), self.b * (v / (1 - beta2**t)).sqrt())
                p.sub_(self.lr * self.a * u)


def reference_sparse_sign_sgd(weights, ids, grads, lr, wd):
    out = weights.clone().double()
    summed = {}
    for i, g in zip(ids.tolist(), grads.double()):
        summed[i] = summed.get(i, 0) + g
    for i, g in summed.items():
        out[i] = out[i] * (1 - lr * wd) - lr * torch.sign(g)
    return out


def random_params(seed, shapes=((5, 7), (3,), (2, 4, 3))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


# ----------------------------------------------------------------------------------------------------------------------
# AdamATan2
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["upstream", "fork"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_atan2_foreach_path_matches_the_per_parameter_rule_over_several_steps(variant, weight_decay):
    init = random_params(0)
    params = [nn.Parameter(t.clone()) for t in init]
    ref_params = [t.clone().double() for t in init]
    opt = AdamATan2(params, lr=0.0, betas=(0.9, 0.95), weight_decay=weight_decay, variant=variant)
    ref = ReferenceAdamATan2(ref_params, 0.0, (0.9, 0.95), weight_decay, variant)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 9):
        lr = 1e-2 * step / 4  # changes every step, as the warm-up schedule does
        opt.param_groups[0]["lr"] = ref.lr = lr
        grads = [torch.randn(p.shape, generator=gen) * 10.0 ** (i - 1) for i, p in enumerate(params)]
        grads[1][0] = 0.0  # an element whose gradient is always zero must not move except by decay
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step([g.double() for g in grads])
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(torch.cat([p.detach().flatten() for p in params])).all()


@pytest.mark.parametrize("variant", ["upstream", "fork"])
def test_adam_atan2_first_step_moves_each_element_by_about_lr_times_sign_of_gradient(variant):
    p = nn.Parameter(torch.zeros(1000))
    g = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    p.grad = g
    AdamATan2([p], lr=1e-3, weight_decay=0.0, variant=variant).step()
    torch.testing.assert_close(p.detach(), -1e-3 * torch.sign(g), rtol=5e-3, atol=0)


@pytest.mark.parametrize("variant", ["upstream", "fork"])
def test_adam_atan2_updates_do_not_depend_on_the_gradient_scale(variant):
    results = []
    for scale in (1e-6, 1.0, 1e6):
        p = nn.Parameter(torch.ones(64))
        opt = AdamATan2([p], lr=1e-2, variant=variant)
        gen = torch.Generator().manual_seed(3)
        for _ in range(5):
            p.grad = torch.randn(64, generator=gen) * scale
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results[2], results[1], rtol=1e-5, atol=1e-7)


def test_adam_atan2_fork_variant_steps_about_1_27_times_further_than_upstream_later_in_training():
    moved = {}
    for variant in ("upstream", "fork"):
        p = nn.Parameter(torch.zeros(4096))
        opt = AdamATan2([p], lr=1e-3, weight_decay=0.0, variant=variant)
        gen = torch.Generator().manual_seed(4)
        for _ in range(200):
            p.grad = torch.randn(4096, generator=gen)  # noisy gradients keep |m| / sqrt(v) small
            before = p.detach().clone()
            opt.step()
        moved[variant] = (p.detach() - before).abs().mean().item()
    assert moved["fork"] / moved["upstream"] == pytest.approx(1.27, rel=0.03)


def test_adam_atan2_leaves_parameters_without_a_gradient_untouched_and_counts_steps_per_parameter():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = AdamATan2([a, b], lr=0.1, weight_decay=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))
    assert b not in opt.state
    b.grad = torch.ones(3)
    opt.step()
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 1
    # b's first step is a step-1 update (bias-corrected by its own count), whatever a's count is
    torch.testing.assert_close(b.detach(), torch.full((3,), (1 - 0.01) - 0.1 * math.atan(0.1) / 0.1))


def test_adam_atan2_reset_state_restarts_moments_and_step_count():
    p = nn.Parameter(torch.zeros(3))
    opt = AdamATan2([p], lr=0.1, weight_decay=0.0)
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    opt.reset_state()
    before = p.detach().clone()
    p.grad = -torch.ones(3)
    opt.step()
    assert opt.state[p]["step"] == 1
    torch.testing.assert_close(p.detach() - before, torch.full((3,), 0.1 * math.atan(0.1) / 0.1))


def test_adam_atan2_state_dict_round_trip_resumes_identically():
    def run(steps, resume_from=None):
        p = nn.Parameter(torch.arange(6.0))
        opt = AdamATan2([p], lr=1e-2, variant="fork")
        if resume_from is not None:
            p.data.copy_(resume_from[0])
            opt.load_state_dict(resume_from[1])
        for k in steps:
            p.grad = torch.sin(torch.arange(6.0) * k)
            opt.step()
        return p.detach().clone(), opt.state_dict()

    straight, _ = run(range(1, 7))
    half = run(range(1, 4))
    resumed, _ = run(range(4, 7), resume_from=half)
    assert torch.equal(straight, resumed)


@pytest.mark.parametrize(
    "kwargs", [dict(variant="adamw"), dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1), dict(b=0.0)]
)
def test_adam_atan2_rejects_bad_options_with_config_error(kwargs):
    with pytest.raises(ConfigError):
        AdamATan2([nn.Parameter(torch.zeros(1))], **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# SparseSignSGD
# ----------------------------------------------------------------------------------------------------------------------


def test_sparse_sign_sgd_equals_the_naive_reference_and_sums_duplicate_ids_before_the_sign():
    gen = torch.Generator().manual_seed(5)
    weights = torch.randn(50, 8, generator=gen)
    ids = torch.tensor([3, 7, 3, 0, 49, 7, 3, 12])
    grads = torch.randn(8, 8, generator=gen)
    # id 3: rows that disagree in sign; their sum decides (a per-row sign would average to a different value)
    grads[0, 0], grads[2, 0], grads[6, 0] = 5.0, -1.0, -1.0
    expected = reference_sparse_sign_sgd(weights, ids, grads, lr=0.01, wd=0.1)
    sparse_sign_sgd_(weights, ids, grads, lr=0.01, weight_decay=0.1)
    torch.testing.assert_close(weights.double(), expected, rtol=0, atol=1e-6)
    assert weights[3, 0] < expected[3, 0] + 1e-6  # moved against +3: -lr * sign(+3)


def test_sparse_sign_sgd_leaves_untouched_rows_bit_for_bit_and_decays_only_touched_rows():
    gen = torch.Generator().manual_seed(6)
    weights = torch.randn(1000, 16, generator=gen)
    before = weights.clone()
    ids = torch.tensor([10, 999, 10, 500])
    grads = torch.zeros(4, 16)  # zero gradient: touched rows only decay
    opt = SparseSignSGD(weights, lr=0.5, weight_decay=0.1)
    opt.step(ids, grads)
    touched = torch.zeros(1000, dtype=torch.bool)
    touched[ids] = True
    assert torch.equal(weights[~touched], before[~touched])
    torch.testing.assert_close(weights[touched], before[touched] * (1 - 0.5 * 0.1))


def test_sparse_sign_sgd_takes_its_lr_from_param_groups_and_accepts_pre_gathered_rows():
    weights = torch.zeros(4, 2)
    calls = []

    def fake_gather(ids, grads):  # stands in for an all-gather over two ranks
        calls.append(len(ids))
        return torch.cat([ids, ids + 2]), torch.cat([grads, grads])

    opt = SparseSignSGD(weights, lr=1.0, weight_decay=0.0, gather=fake_gather)
    opt.param_groups[0]["lr"] = 0.25
    opt.step(torch.tensor([0, 1]), torch.tensor([[1.0, -1.0], [-2.0, 0.0]]))
    assert calls == [2]
    torch.testing.assert_close(weights, torch.tensor([[-0.25, 0.25], [0.25, 0.0], [-0.25, 0.25], [0.25, 0.0]]))
    opt.step(torch.tensor([3]), torch.tensor([[1.0, 1.0]]), gathered=True)  # the trainer gathered itself
    assert calls == [2]
    torch.testing.assert_close(weights[3], torch.tensor([0.0, -0.25]))


def test_all_gather_rows_is_the_identity_without_a_process_group():
    ids, grads = torch.tensor([1, 2]), torch.ones(2, 3)
    got_ids, got_grads = all_gather_rows(ids, grads)
    assert got_ids is ids and got_grads is grads


def test_sparse_sign_sgd_rejects_mismatched_shapes():
    with pytest.raises(ConfigError):
        sparse_sign_sgd_(torch.zeros(4, 2), torch.tensor([0, 1]), torch.zeros(3, 2), lr=0.1)


# ----------------------------------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.register_buffer("table", torch.zeros(4, 3))


def test_ema_tracks_trainable_parameters_only_and_follows_the_recurrence():
    net = TinyNet()
    ema = EMA(net, rate=0.9)
    assert set(ema.shadow) == {"lin.weight", "lin.bias"}
    expected = net.lin.weight.detach().double().clone()
    for k in range(1, 4):
        with torch.no_grad():
            net.lin.weight.add_(float(k))
        ema.update()
        expected = 0.1 * net.lin.weight.detach().double() + 0.9 * expected
    torch.testing.assert_close(ema.shadow["lin.weight"].double(), expected, rtol=1e-6, atol=1e-6)


def test_ema_applied_swaps_shadow_values_in_and_restores_the_live_weights_afterwards():
    net = TinyNet()
    ema = EMA(net, rate=0.5)
    live_before = net.lin.weight.detach().clone()
    with torch.no_grad():
        net.lin.weight.add_(2.0)
    ema.update()
    live = net.lin.weight.detach().clone()
    with ema.applied():
        torch.testing.assert_close(net.lin.weight.detach(), live_before + 1.0)
    assert torch.equal(net.lin.weight.detach(), live)
    with pytest.raises(RuntimeError), ema.applied():  # restored even when the block fails
        raise RuntimeError("boom")
    assert torch.equal(net.lin.weight.detach(), live)


def test_ema_can_be_applied_to_a_copy_of_the_model_by_parameter_name():
    import copy

    net = TinyNet()
    ema = EMA(net)
    with torch.no_grad():
        ema.shadow["lin.bias"].fill_(7.0)
    clone = copy.deepcopy(net)
    ema.copy_to(clone)
    assert torch.equal(clone.lin.bias.detach(), torch.full((2,), 7.0))
    assert not torch.equal(net.lin.bias.detach(), torch.full((2,), 7.0))


def test_ema_state_dict_round_trip_and_mismatch_is_a_checkpoint_error():
    net = TinyNet()
    ema = EMA(net)
    with torch.no_grad():
        net.lin.weight.add_(1.0)
    ema.update()
    other = EMA(TinyNet())
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["lin.weight"], ema.shadow["lin.weight"])
    with pytest.raises(CheckpointError):
        other.load_state_dict({"rate": 0.999, "shadow": {"lin.weight": torch.zeros(2, 3)}})


# ----------------------------------------------------------------------------------------------------------------------
# LR schedule and freeze schedule
# ----------------------------------------------------------------------------------------------------------------------


def test_lr_factor_warms_up_linearly_from_step_one_then_stays_constant_with_min_ratio_one():
    assert lr_factor(1, 200, 1000) == pytest.approx(1 / 200)
    assert lr_factor(100, 200, 1000) == pytest.approx(0.5)
    assert lr_factor(199, 200, 1000) == pytest.approx(199 / 200)
    assert [lr_factor(s, 200, 1000) for s in (200, 201, 600, 1000)] == [1.0, 1.0, 1.0, 1.0]
    assert lr_factor(5, 200, 1000, schedule="constant") == lr_factor(5, 200, 1000)
    assert lr_factor(1, 0, 10) == 1.0


def test_lr_factor_cosine_decays_from_one_to_min_ratio():
    assert lr_factor(10, 10, 110, min_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "args", [(0, 10, 100), (1, -1, 100), (1, 10, 0), (1, 10, 100, 0.5, "constant"), (1, 10, 100, 1.0, "linear")]
)
def test_lr_factor_rejects_bad_arguments(args):
    with pytest.raises(ConfigError):
        lr_factor(*args)


def test_trunk_schedule_for_each_mode_follows_the_fork_freeze():
    total = 12500
    assert first_trunk_step("full", total) == 1 and trunk_active(1, "full", total)
    assert first_trunk_step("lora", total) == 1 and trunk_active(1, "lora", total)
    assert first_trunk_step("embeddings", total) is None and not trunk_active(total, "embeddings", total)
    # fork: skipped while step <= ceil(total * 3125 / 12500) = 3125
    assert first_trunk_step("embeddings-then-full", total) == 3126
    assert not trunk_active(3125, "embeddings-then-full", total)
    assert trunk_active(3126, "embeddings-then-full", total)
    assert first_trunk_step("embeddings-then-full", 15, embeddings_fraction=0.21) == 5  # ceil(3.15) = 4 frozen
    assert first_trunk_step("embeddings-then-full", 100, embeddings_fraction=1.0) is None
    with pytest.raises(ConfigError):
        trunk_active(1, "frozen", total)


# ----------------------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------------------


class CastedLinear(nn.Module):
    """Stand-in with the shape and forward of trm_kaggle.model.CastedLinear."""

    def __init__(self, in_features, out_features, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features**0.5)
        self.bias = nn.Parameter(torch.full((out_features,), -5.0)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype) if self.bias is not None else None)


class StandInBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_weight = nn.Parameter(torch.randn(12, 16))
        self.qkv_proj = CastedLinear(16, 48)
        self.o_proj = CastedLinear(48, 16)
        self.q_head = CastedLinear(16, 2, bias=True)

    def forward(self, x):
        h = self.o_proj(self.qkv_proj(x))
        return h, self.q_head(h)


def randomise_lora(model, seed=7):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m._lora_B.copy_(0.05 * torch.randn(m._lora_B.shape, generator=gen))  # a trained-looking size


def test_apply_lora_keeps_outputs_until_trained_and_uses_fork_state_dict_keys():
    torch.manual_seed(0)
    model = StandInBlock()
    x = torch.randn(3, 5, 16)
    before = model(x)
    wrapped = apply_lora(model, rank=2, alpha=16)
    assert wrapped == ["qkv_proj", "o_proj", "q_head"]
    after = model(x)
    for b, a in zip(before, after):
        assert torch.equal(a, b)  # B is zero at init
    keys = set(model.state_dict())
    assert {"qkv_proj._lora_A", "qkv_proj._lora_B", "q_head._lora_A", "q_head._lora_B", "q_head.bias"} <= keys
    assert model.qkv_proj._lora_A.shape == (2, 16) and model.qkv_proj._lora_B.shape == (48, 2)
    assert isinstance(model.qkv_proj, CastedLinear)
    bound = 1 / math.sqrt(48)
    assert model.o_proj._lora_A.abs().max() <= bound and model.o_proj._lora_A.abs().max() > 0.5 * bound


def test_apply_lora_freezes_base_and_bias_but_not_other_parameters():
    model = StandInBlock()
    apply_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "embed_weight",
        *(f"{m}._lora_{f}" for m in ("qkv_proj", "o_proj", "q_head") for f in "AB"),
    }
    unfrozen = StandInBlock()
    apply_lora(unfrozen, train_base=True, train_bias=True)
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_lora_output_is_base_plus_scaled_low_rank_branch_computed_in_float32():
    torch.manual_seed(1)
    layer = CastedLinear(16, 8, bias=True)
    apply_lora(layer, rank=2, alpha=16)
    randomise_lora(layer)
    x = torch.randn(4, 16).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    base = F.linear(x, layer.weight.to(torch.bfloat16), layer.bias.to(torch.bfloat16))
    branch = (x.float() @ layer._lora_A.T @ layer._lora_B.T) * 8.0
    torch.testing.assert_close(y, base + branch.to(torch.bfloat16))


def test_merged_lora_model_matches_unmerged_output_and_has_the_base_layout_again():
    torch.manual_seed(2)
    model = StandInBlock()
    base_keys = list(model.state_dict())
    apply_lora(model, rank=1, alpha=16)
    randomise_lora(model)
    x = torch.randn(2, 7, 16)
    unmerged = model(x)
    assert merge_lora(model) == 3
    merged = model(x)
    for u, m in zip(unmerged, merged):
        torch.testing.assert_close(m, u, rtol=1e-4, atol=1e-5)
    assert list(model.state_dict()) == base_keys
    assert type(model.qkv_proj) is CastedLinear
    assert all(p.requires_grad for p in model.parameters())  # flags as before apply_lora


def test_lora_targets_select_by_class_or_module_name_and_wrapping_twice_is_refused():
    model = StandInBlock()
    assert apply_lora(model, targets=["q_head"]) == ["q_head"]
    with pytest.raises(ConfigError):
        apply_lora(model, targets=["q_head"])
    with pytest.raises(ConfigError):
        apply_lora(StandInBlock(), targets=["no_such_layer"])
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert apply_lora(plain) == ["0", "2"]


def test_lora_gradients_reach_only_the_factors_when_the_base_is_frozen():
    torch.manual_seed(3)
    model = StandInBlock()
    apply_lora(model)
    randomise_lora(model)
    h, q = model(torch.randn(2, 16))
    (h.sum() + q.sum()).backward()
    assert model.qkv_proj.weight.grad is None and model.q_head.bias.grad is None
    assert model.qkv_proj._lora_A.grad is not None and model.qkv_proj._lora_B.grad is not None
    opt = AdamATan2([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.step()  # frozen bases have no grad and are skipped


# ----------------------------------------------------------------------------------------------------------------------
# LoRA on the real model
# ----------------------------------------------------------------------------------------------------------------------


def test_lora_on_the_default_trm_trains_exactly_the_fork_parameter_count():
    from trm_kaggle.model import TinyRecursiveModel, TRMConfig

    model = TinyRecursiveModel(TRMConfig(num_puzzle_identifiers=2))
    wrapped = apply_lora(model, rank=1, alpha=16)
    assert sorted(wrapped) == sorted(
        ["lm_head", "q_head"]
        + [
            f"L_level.layers.{i}.{m}"
            for i in (0, 1)
            for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
        ]
    )
    # §8.5: with r = 1 the AdamAtan2-trained values are the LoRA factors plus embed_tokens, 24,590 in total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 24_590
    assert model.state_dict()["L_level.layers.0.mlp.down_proj._lora_A"].shape == (1, 1536)
    assert model.state_dict()["lm_head._lora_B"].shape == (12, 1)
    assert model.embed_tokens.embedding_weight.requires_grad


def test_merged_lora_trm_predicts_the_same_as_the_unmerged_one():
    from trm_kaggle.model import TinyRecursiveModel, TRMConfig

    torch.manual_seed(0)
    config = TRMConfig(
        hidden_size=64, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2, puzzle_emb_ndim=64, puzzle_emb_len=2,
        forward_dtype="float32", num_puzzle_identifiers=8,
    )
    model = TinyRecursiveModel(config)
    with torch.no_grad():
        model.puzzle_emb.weights.normal_()
    inputs = torch.randint(0, 12, (2, 900))
    ids = torch.tensor([1, 5])
    base_logits, base_q = model.predict(inputs, ids, act_steps=2)
    apply_lora(model, rank=1, alpha=16)
    logits, q = model.predict(inputs, ids, act_steps=2)
    assert torch.equal(logits, base_logits) and torch.equal(q, base_q)  # B = 0: unchanged until trained
    randomise_lora(model)
    lora_logits, lora_q = model.predict(inputs, ids, act_steps=2)
    assert (lora_logits - base_logits).abs().max() > 1.0  # the branch matters, so a wrong merge could not hide
    merge_lora(model)
    merged_logits, merged_q = model.predict(inputs, ids, act_steps=2)
    # The recursion (here 12 block applications, post-norm) amplifies f32 rounding: merged vs unmerged differ by
    # ~1.8e-3 on logits of size ~4, the same as scaling every weight by (1 + 1e-7) does, so that is the tolerance.
    torch.testing.assert_close(merged_logits, lora_logits, rtol=0, atol=5e-3)
    torch.testing.assert_close(merged_q, lora_q, rtol=0, atol=5e-3)
    assert list(model.state_dict()) == list(TinyRecursiveModel(config).state_dict())
