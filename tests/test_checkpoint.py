"""Checkpoints: our safetensors + manifest format round-trips bit for bit, upstream `.ckpt` files convert exactly, and
every broken file is a CheckpointError that names it. Small models, real ARC inputs, a few seconds in all."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
import yaml

from trm_kaggle.checkpoint import (
    MANIFEST_FILE, WEIGHTS_FILE, convert_upstream, load_checkpoint, load_upstream, parse_arch_items, read_manifest,
    save_checkpoint, upstream_config,
)
from trm_kaggle.encoding import encode_grid
from trm_kaggle.errors import CheckpointError, ConfigError
from trm_kaggle.model import TinyRecursiveModel, TRMConfig
from trm_kaggle.optim import apply_lora

# One H and one L cycle, one ACT step: every tensor in the file still takes part, and a CPU shared by several
# people runs the whole file in seconds. float32 here (bf16 matmuls are ~15x slower on CPU); the tests whose point
# is upstream's bf16 H_init/L_init use BF16.
SMALL = dict(hidden_size=64, num_heads=4, expansion=4.0, L_layers=2, H_cycles=1, L_cycles=1, puzzle_emb_len=16,
             puzzle_emb_ndim=64, halt_max_steps=3, num_puzzle_identifiers=9, forward_dtype="float32")
BF16 = dict(forward_dtype="bfloat16")
ACT_STEPS = 1
# Upstream's arch names (TRM_FACTS §3.1) for the SMALL model; all_config.yaml lists them under `arch:`.
ARCH_FIELDS = ("hidden_size", "num_heads", "expansion", "L_layers", "H_cycles", "L_cycles", "puzzle_emb_len",
               "puzzle_emb_ndim", "halt_max_steps", "halt_exploration_prob", "forward_dtype")


def _model(seed: int = 0, **overrides) -> TinyRecursiveModel:
    """A small model with a trained-looking table (blank row 0 stays zero, as upstream) and a live q head."""
    torch.manual_seed(seed)
    model = TinyRecursiveModel(TRMConfig(**{**SMALL, **overrides}))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        n, d = model.puzzle_emb.weights.shape
        model.puzzle_emb.weights[1:] = torch.randn(n - 1, d, generator=g)
        model.q_head.weight.copy_(torch.randn_like(model.q_head.weight) * 0.05)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second OpenMP thread only waits for a core on a shared machine (8x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(small_tasks) -> torch.Tensor:
    """Three real ARC test inputs on the 900-token canvas."""
    grids = [small_tasks.tasks[t].test[0].input for t in small_tasks.task_ids[:3]]
    return torch.stack([torch.from_numpy(encode_grid(g)).long() for g in grids])


def _predict(model: TinyRecursiveModel, inputs: torch.Tensor, ids=(0, 0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    return model.predict(inputs, torch.tensor(ids), act_steps=ACT_STEPS)


def _assert_same_predictions(a: TinyRecursiveModel, b: TinyRecursiveModel, inputs, ids=(0, 0, 0)) -> None:
    (la, qa), (lb, qb) = _predict(a, inputs, ids), _predict(b, inputs, ids)
    assert torch.equal(la, lb) and torch.equal(qa, qb)


def _arch(model: TinyRecursiveModel, **extra) -> dict:
    arch = {"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
            "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
            "H_layers": 0, "pos_encodings": "rope", "mlp_t": False, "no_ACT_continue": True}
    arch.update({k: getattr(model.config, k) for k in ARCH_FIELDS})
    arch.update(extra)
    return arch


def _write_upstream(model: TinyRecursiveModel, folder: Path, compiled: bool = True, all_config: dict | None = None,
                    step: int = 1000) -> Path:
    """What upstream pretrain.py leaves behind: torch.save of the (compiled) ACTLossHead's state dict, as `step_N`,
    with all_config.yaml beside it (top-level run keys plus `arch:`) when `all_config` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "_orig_mod.model.inner." if compiled else "model.inner."
    path = folder / f"step_{step}"
    torch.save({prefix + k: v.clone() for k, v in model.state_dict().items()}, path)
    if all_config is not None:
        run = {"data_paths": ["data/arc2concept-aug-1000"], "global_batch_size": 768, "epochs": 100000, "lr": 1e-4,
               "puzzle_emb_lr": 1e-2, "weight_decay": 0.1, "ema": True, "ema_rate": 0.999, "seed": 0,
               "project_name": "Arc2concept-aug-1000-ACT-torch", "run_name": "test", "checkpoint_path": str(folder)}
        (folder / "all_config.yaml").write_text(yaml.safe_dump({"arch": all_config, **run}))
    return path


def _same_weights(model: TinyRecursiveModel, **config) -> TinyRecursiveModel:
    """A model with `model`'s tensors under another config (fields that leave no trace in shapes)."""
    other = TinyRecursiveModel(TRMConfig(**{**SMALL, **config}))
    other.load_state_dict(model.state_dict())
    return other


def _mean_table_copy(model: TinyRecursiveModel, rows: int) -> TinyRecursiveModel:
    """Our own model, its table replaced by `rows` copies of its f32 row mean (upstream's reset, §4.3)."""
    model.resize_puzzle_table(rows)
    return model


# ------------------------------------------------------------------------------------------------- our format


def test_our_format_round_trips_every_tensor_bit_for_bit(tmp_path, inputs):
    model = _model(**BF16)
    load_ids = (0, 4, 8)
    save_checkpoint(model, tmp_path / "ckpt", include_table=True)
    loaded = load_checkpoint(tmp_path / "ckpt")
    original, again = model.state_dict(), loaded.state_dict()
    assert list(original) == list(again)
    for key, tensor in original.items():
        assert again[key].dtype == tensor.dtype and torch.equal(again[key], tensor), key
    assert loaded.H_init.dtype == loaded.L_init.dtype == torch.bfloat16
    assert loaded.config == model.config
    _assert_same_predictions(model, loaded, inputs, load_ids)


def test_default_save_keeps_the_trunk_exactly_and_the_table_as_its_mean_row(tmp_path, inputs):
    model = _model()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.num_puzzle_identifiers == 1 and loaded.config.num_puzzle_identifiers == 1
    assert torch.equal(loaded.puzzle_emb.weights[0], model.mean_puzzle_embedding())
    for key, tensor in model.state_dict().items():
        if key != "puzzle_emb.weights":
            assert torch.equal(loaded.state_dict()[key], tensor) and loaded.state_dict()[key].dtype == tensor.dtype, key
    loaded.resize_puzzle_table(5, mean=loaded.checkpoint_mean)
    _assert_same_predictions(_mean_table_copy(model, 5), loaded, inputs, (0, 2, 4))


def test_our_format_is_two_files_and_never_pickle(tmp_path):
    save_checkpoint(_model(**BF16), tmp_path / "ckpt", include_table=True)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted([WEIGHTS_FILE, MANIFEST_FILE])
    raw = (tmp_path / "ckpt" / WEIGHTS_FILE).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert header["__metadata__"]["format"] == "trm-kaggle-checkpoint"
    assert header["H_init"]["dtype"] == header["L_init"]["dtype"] == "BF16"
    assert header["puzzle_emb.weights"]["dtype"] == "F32" and header["puzzle_emb.weights"]["shape"] == [9, 64]
    assert not raw.startswith((b"PK", b"\x80"))  # neither a torch zip nor a pickle stream


def test_saving_a_loaded_checkpoint_again_writes_the_same_weights_file(tmp_path):
    save_checkpoint(_model(), tmp_path / "a")
    save_checkpoint(load_checkpoint(tmp_path / "a"), tmp_path / "b")
    assert (tmp_path / "a" / WEIGHTS_FILE).read_bytes() == (tmp_path / "b" / WEIGHTS_FILE).read_bytes()


def test_checkpoint_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    """A checkpoint folder is uploaded and shared; temp-file creation must not leave it owner-only (0600)."""
    save_checkpoint(_model(), tmp_path / "ckpt")
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    for name in (WEIGHTS_FILE, MANIFEST_FILE):
        assert (tmp_path / "ckpt" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_manifest_holds_config_exact_mean_blank_row_included_provenance_and_hash(tmp_path):
    model = _model()
    save_checkpoint(model, tmp_path / "ckpt", provenance={"kind": "unit-test", "steps": 7})
    manifest = read_manifest(tmp_path / "ckpt")
    assert manifest["config"] == {**model.config.to_dict(), "num_puzzle_identifiers": 1}
    table = model.puzzle_emb.weights
    assert torch.all(table[0] == 0)  # the blank row: the mean is over all 9 rows, not the 8 trained ones
    mean = table.to(torch.float32).mean(dim=0)
    assert manifest["mean_task_embedding"] == mean.tolist()
    assert torch.equal(torch.tensor(manifest["mean_task_embedding"], dtype=torch.float32), mean)
    assert not torch.allclose(mean, table[1:].mean(dim=0))
    weights = tmp_path / "ckpt" / WEIGHTS_FILE
    assert manifest["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["weights_bytes"] == weights.stat().st_size
    assert manifest["provenance"]["kind"] == "unit-test" and manifest["provenance"]["steps"] == 7
    assert {"created", "trm_kaggle_version"} <= set(manifest["provenance"])
    assert load_checkpoint(tmp_path / "ckpt").checkpoint_manifest["provenance"] == manifest["provenance"]


def test_a_lora_wrapped_model_is_saved_with_its_factors_merged(tmp_path, inputs):
    """`pretrain --mode lora` saves mid-training: the file must still load (our format has no LoRA keys)."""
    model = _model()
    apply_lora(model, rank=2, alpha=4.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_lora_B"):
                p.copy_(torch.randn_like(p) * 0.1)
    save_checkpoint(model, tmp_path / "ckpt", include_table=True)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert not any("_lora_" in k for k in loaded.state_dict())
    (la, qa), (lb, qb) = _predict(model, inputs), _predict(loaded, inputs)
    torch.testing.assert_close(lb, la, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(qb, qa, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- upstream


@pytest.mark.parametrize("compiled", [True, False], ids=["orig_mod-prefix", "DISABLE_COMPILE"])
@pytest.mark.parametrize("arch_from", ["all_config.yaml", "arch-dict"])
def test_converted_upstream_checkpoint_predicts_as_our_model_with_the_same_mean_table(tmp_path, inputs, compiled,
                                                                                      arch_from):
    model = _model(**(BF16 if compiled and arch_from == "all_config.yaml" else {}))  # upstream's usual case in bf16
    path = _write_upstream(model, tmp_path / "run", compiled=compiled,
                           all_config=_arch(model) if arch_from == "all_config.yaml" else None)
    arch = None if arch_from == "all_config.yaml" else _arch(model)
    result = convert_upstream(path, tmp_path / "ours", arch=arch)
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted([WEIGHTS_FILE, MANIFEST_FILE])
    assert result["bytes_before"] == path.stat().st_size and 0 < result["bytes_after"]
    assert result["table_rows_dropped"] == 9
    loaded = load_checkpoint(tmp_path / "ours")
    assert loaded.config == TRMConfig(**{**SMALL, "num_puzzle_identifiers": 1,
                                          "forward_dtype": model.config.forward_dtype})
    assert loaded.H_init.dtype == model.H_init.dtype
    provenance = loaded.checkpoint_manifest["provenance"]
    assert provenance["converted_from"] == path.name
    assert provenance["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["arch_from"] == (str(path.parent / "all_config.yaml") if arch is None else "given")
    loaded.resize_puzzle_table(6, mean=loaded.checkpoint_mean)
    _assert_same_predictions(_mean_table_copy(model, 6), loaded, inputs, (1, 3, 5))


def test_a_whole_all_config_dict_may_be_given_as_the_arch(tmp_path):
    model = _model()
    path = _write_upstream(model, tmp_path / "run")
    convert_upstream(path, tmp_path / "ours", arch={"arch": _arch(model, L_cycles=3), "lr": 1e-4})
    assert read_manifest(tmp_path / "ours")["config"]["L_cycles"] == 3


@pytest.mark.parametrize("arch_len, override, expected", [(16, None, 16), (1, None, 1), (16, 1, 1), (1, 16, 16)])
def test_puzzle_emb_len_comes_from_the_arch_and_an_override_changes_it(tmp_path, inputs, arch_len, override,
                                                                       expected):
    """P leaves no trace in any shape (pitfall 1): the same tensors give different predictions for P 16 and P 1."""
    model = _model(puzzle_emb_len=arch_len)
    path = _write_upstream(model, tmp_path / "run", all_config=_arch(model))
    overrides = None if override is None else {"puzzle_emb_len": override}
    result = convert_upstream(path, tmp_path / "ours", overrides=overrides)
    assert result["config"]["puzzle_emb_len"] == expected
    loaded = load_checkpoint(tmp_path / "ours")
    assert loaded.config.puzzle_emb_len == loaded.prefix_len == expected
    loaded.resize_puzzle_table(4, mean=loaded.checkpoint_mean)
    reference = _mean_table_copy(_same_weights(model, puzzle_emb_len=expected), 4)
    _assert_same_predictions(reference, loaded, inputs, (0, 1, 3))
    if expected != arch_len:
        as_in_arch = _mean_table_copy(_same_weights(model, puzzle_emb_len=arch_len), 4)
        assert not torch.equal(_predict(as_in_arch, inputs)[0], _predict(loaded, inputs)[0])


def test_overrides_are_typed_and_checked_against_the_config_fields(tmp_path):
    model = _model()
    path = _write_upstream(model, tmp_path / "run", all_config=_arch(model))
    result = convert_upstream(path, tmp_path / "ours", overrides={"L_cycles": "5"})
    assert result["config"]["L_cycles"] == 5 and read_manifest(tmp_path / "ours")["provenance"]["overrides"] == {
        "L_cycles": 5}
    for bad in ({"dtype": "float32"}, {"no_such_field": 1}, {"L_cycles": "four"}, {"hidden_size": 128}):
        with pytest.raises(CheckpointError, match="step_1000"):
            convert_upstream(path, tmp_path / "bad", overrides=bad)
    assert not (tmp_path / "bad").exists()


def test_arch_values_given_as_strings_are_read_as_their_config_types(tmp_path, inputs):
    """`--arch L_cycles=4 mlp_t=False` arrives as text; 'False' must not be truthy, '4' must become an int."""
    model = _model()
    path = _write_upstream(model, tmp_path / "run")
    arch = {k: str(v) for k, v in _arch(model).items() if k not in ("name", "loss")}
    convert_upstream(path, tmp_path / "ours", arch=arch)
    loaded = load_checkpoint(tmp_path / "ours")
    assert loaded.config == TRMConfig(**{**SMALL, "num_puzzle_identifiers": 1})
    loaded.resize_puzzle_table(2, mean=loaded.checkpoint_mean)
    _assert_same_predictions(_mean_table_copy(model, 2), loaded, inputs, (0, 1, 1))


@pytest.mark.parametrize("hidden, heads", [(64, 4), (128, 4), (512, 8)])
def test_an_arch_without_expansion_reads_the_mlp_width_from_the_tensors_and_keeps_the_papers_4(hidden, heads):
    with torch.device("meta"):  # shapes are all that matter here, and a 512 model need not be initialised
        model = TinyRecursiveModel(TRMConfig(hidden_size=hidden, num_heads=heads, puzzle_emb_ndim=hidden))
    shapes = model.state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    arch = {"hidden_size": hidden, "num_heads": heads, "H_cycles": 3, "L_cycles": 4, "puzzle_emb_len": 16,
            "halt_max_steps": 16}
    config = upstream_config(state, arch)
    assert config.expansion == 4.0 and config.mlp_hidden == state["L_level.layers.0.mlp.down_proj.weight"].shape[1]
    state["L_level.layers.0.mlp.down_proj.weight"] = torch.zeros(hidden, 2048)  # a genuinely wider MLP
    assert upstream_config(state, arch).mlp_hidden == 2048


def test_arch_items_parse_as_yaml_scalars():
    items = ["L_cycles=4", "expansion=4.0", "mlp_t=false", "lora_alpha=null", "forward_dtype=bfloat16"]
    assert parse_arch_items(items) == {"L_cycles": 4, "expansion": 4.0, "mlp_t": False, "lora_alpha": None,
                                       "forward_dtype": "bfloat16"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_arch_items(["L_cycles"])


@pytest.mark.parametrize("alpha", [4.0, None])
def test_lora_checkpoint_converts_with_its_factors_merged(tmp_path, inputs, alpha):
    model = _model()
    wrapped = apply_lora(model, rank=2, alpha=alpha)
    assert len(wrapped) == 2 + 4 * SMALL["L_layers"]  # lm_head, q_head and four projections per layer (§8.5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_lora_B"):
                p.copy_(torch.randn_like(p) * 0.1)
    assert model.state_dict()["lm_head._lora_A"].shape == (2, 64)
    assert model.state_dict()["L_level.layers.0.mlp.down_proj._lora_B"].shape == (64, 2)
    path = _write_upstream(model, tmp_path / "run", all_config=_arch(model, lora_rank=2, lora_alpha=alpha))
    convert_upstream(path, tmp_path / "ours")
    loaded = load_checkpoint(tmp_path / "ours")
    assert not any("_lora_" in k for k in loaded.state_dict())
    loaded.resize_puzzle_table(3, mean=loaded.checkpoint_mean)
    model.resize_puzzle_table(3)
    (la, qa), (lb, qb) = _predict(model, inputs, (0, 1, 2)), _predict(loaded, inputs, (0, 1, 2))
    torch.testing.assert_close(lb, la, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(qb, qa, atol=1e-4, rtol=1e-4)
    # The merge matters: the base weights alone predict something else.
    base = load_upstream(_write_upstream(_model(), tmp_path / "base",
                                         all_config=_arch(model)))
    base.resize_puzzle_table(3)
    assert not torch.allclose(_predict(base, inputs, (0, 1, 2))[0], la, atol=1e-3)


def test_a_lora_factor_without_its_partner_is_a_checkpoint_error(tmp_path):
    model = _model()
    state = {f"model.inner.{k}": v for k, v in model.state_dict().items()}
    state["model.inner.lm_head._lora_A"] = torch.zeros(1, 64)
    torch.save(state, tmp_path / "step_1")
    with pytest.raises(CheckpointError, match=r"step_1.*lm_head\._lora_B"):
        load_upstream(tmp_path / "step_1", arch=_arch(model))


@pytest.mark.parametrize("compiled", [True, False], ids=["orig_mod-prefix", "DISABLE_COMPILE"])
def test_loading_upstream_keeps_the_full_table_and_predicts_bit_for_bit(tmp_path, inputs, compiled):
    model = _model(**(BF16 if compiled else {}))
    loaded = load_upstream(_write_upstream(model, tmp_path / "run", compiled=compiled, all_config=_arch(model)))
    assert loaded.num_puzzle_identifiers == 9
    assert torch.equal(loaded.puzzle_emb.weights, model.puzzle_emb.weights)
    for ids in [(0, 1, 2), (8, 5, 3), (7, 7, 4)]:
        _assert_same_predictions(model, loaded, inputs, ids)


def test_a_loaded_upstream_model_has_the_files_tensors_and_dtypes(tmp_path):
    model = _model(**BF16)
    loaded = load_upstream(_write_upstream(model, tmp_path / "run", all_config=_arch(model)))
    for key, tensor in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == tensor.dtype and torch.equal(loaded.state_dict()[key], tensor), key


class _Payload:
    """Unpickling this would create a file: proof that torch.load ran code from the checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_object_in_an_upstream_checkpoint_is_refused_without_running_it(tmp_path):
    model = _model()
    marker = tmp_path / "executed"
    state = {f"model.inner.{k}": v for k, v in model.state_dict().items()}
    state["evil"] = _Payload(marker)
    torch.save(state, tmp_path / "step_1")
    with pytest.raises(CheckpointError, match="step_1"):
        load_upstream(tmp_path / "step_1", arch=_arch(model))
    assert not marker.exists()


def test_an_upstream_file_with_non_tensor_values_is_a_checkpoint_error(tmp_path):
    model = _model()
    torch.save({"step": 5, **{f"model.inner.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "step_1")
    with pytest.raises(CheckpointError, match="step_1.*state dict of tensors"):
        load_upstream(tmp_path / "step_1", arch=_arch(model))


def test_missing_all_config_and_no_arch_is_a_checkpoint_error_that_says_what_to_pass(tmp_path):
    path = _write_upstream(_model(), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"step_1000.*all_config\.yaml.*--arch"):
        convert_upstream(path, tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("content, reason", [
    ("arch: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "mapping"),
    ("arch: 5\n", "mapping"),
    ("arch: {pos_encodings: learned, hidden_size: 64, num_heads: 4}\n", "invalid"),
    ("arch: {mlp_t: true, hidden_size: 64, num_heads: 4}\n", "mlp_t"),
])
def test_a_bad_all_config_yaml_is_a_checkpoint_error_naming_the_file(tmp_path, content, reason):
    path = _write_upstream(_model(), tmp_path / "run")
    (tmp_path / "run" / "all_config.yaml").write_text(content)
    with pytest.raises(CheckpointError, match=reason) as info:
        load_upstream(path)
    assert "run" in str(info.value) and ("all_config.yaml" in str(info.value) or "step_1000" in str(info.value))


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04 truncated zip"])
def test_an_unreadable_upstream_file_is_a_checkpoint_error_naming_it(tmp_path, content):
    (tmp_path / "step_1").write_bytes(content)
    with pytest.raises(CheckpointError, match="step_1"):
        load_upstream(tmp_path / "step_1", arch={})


def test_a_missing_upstream_file_is_a_checkpoint_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match="step_9"):
        convert_upstream(tmp_path / "step_9", tmp_path / "ours", arch={})


# ----------------------------------------------------------------------------------------------------- faults


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_checkpoint(_model(), tmp_path / "ckpt")


def _rewrite_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest.update(changes)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _error(folder: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder, **kwargs)
    return str(info.value)


def test_a_missing_folder_is_a_checkpoint_error_naming_it(tmp_path):
    assert str(tmp_path / "nope") in _error(tmp_path / "nope")


def test_a_file_given_as_the_checkpoint_folder_says_it_is_not_a_folder(tmp_path):
    path = _write_upstream(_model(), tmp_path / "run")
    message = _error(path)
    assert str(path) in message and "not a folder" in message and "convert" in message


def test_a_missing_manifest_is_a_checkpoint_error_naming_it(saved):
    (saved / MANIFEST_FILE).unlink()
    assert str(saved / MANIFEST_FILE) in _error(saved)


def test_a_missing_weights_file_is_a_checkpoint_error_naming_it(saved):
    (saved / WEIGHTS_FILE).unlink()
    assert str(saved / WEIGHTS_FILE) in _error(saved)


def test_a_truncated_weights_file_fails_the_hash_and_without_the_hash_fails_to_parse(saved):
    weights = saved / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = _error(saved)
    assert str(weights) in message and "SHA-256" in message
    message = _error(saved, verify_hash=False)
    assert str(weights) in message and "safetensors" in message
    _rewrite_manifest(saved, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    assert str(weights) in _error(saved)


def test_one_corrupted_byte_is_a_hash_mismatch_naming_the_file(saved):
    weights = saved / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # inside the tensor data: the file still parses, only the hash can tell
    weights.write_bytes(bytes(data))
    assert load_checkpoint(saved, verify_hash=False) is not None
    message = _error(saved)
    assert str(weights) in message and "does not match" in message


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe"])
def test_a_manifest_that_is_not_json_is_a_checkpoint_error_naming_it(saved, text):
    (saved / MANIFEST_FILE).write_bytes(text.encode("latin-1"))
    message = _error(saved)
    assert str(saved / MANIFEST_FILE) in message and "JSON" in message


@pytest.mark.parametrize("changes", [
    dict(format="something-else"), dict(format_version=99), dict(config=None), dict(config=[1, 2]),
    dict(mean_task_embedding="zeros"), dict(mean_task_embedding=[0.0] * 3), dict(weights_file="../model.safetensors"),
])
def test_a_manifest_with_wrong_fields_is_a_checkpoint_error_naming_it(saved, changes):
    _rewrite_manifest(saved, **changes)
    assert str(saved) in _error(saved)


def test_a_missing_manifest_field_is_a_checkpoint_error_naming_it(saved):
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    del manifest["weights_sha256"]
    (saved / MANIFEST_FILE).write_text(json.dumps(manifest))
    message = _error(saved)
    assert str(saved / MANIFEST_FILE) in message and "weights_sha256" in message


@pytest.mark.parametrize("change, expect", [
    (dict(hidden_size=128), "shape mismatch"),       # valid config, tensors for 64
    (dict(L_layers=3), "missing"),                   # a layer the file does not have
    (dict(hidden_size=65), "invalid"),               # not a multiple of num_heads: ConfigError inside
    (dict(L_cycles="many"), "invalid"),
    (dict(no_such_field=1, hidden_size=128), "shape mismatch"),
])
def test_a_config_that_does_not_match_the_tensors_is_a_checkpoint_error_naming_the_checkpoint(saved, change, expect):
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    manifest["config"].update(change)
    manifest["weights_sha256"] = hashlib.sha256((saved / WEIGHTS_FILE).read_bytes()).hexdigest()
    (saved / MANIFEST_FILE).write_text(json.dumps(manifest))
    message = _error(saved)
    assert str(saved) in message and expect in message
