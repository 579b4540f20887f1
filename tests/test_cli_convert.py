"""`trm-kaggle convert`: exit 0 with sizes, config and destination; exit 2 with one line for a missing or bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from trm_kaggle.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint, read_manifest
from trm_kaggle.cli import main
from trm_kaggle.model import TinyRecursiveModel, TRMConfig

SMALL = dict(hidden_size=64, num_heads=4, L_layers=2, H_cycles=1, L_cycles=1, puzzle_emb_len=16, puzzle_emb_ndim=64,
             halt_max_steps=3, num_puzzle_identifiers=9, forward_dtype="float32")


@pytest.fixture
def upstream(tmp_path) -> Path:
    """An upstream-style run folder: `step_N` (compiled key prefix) with all_config.yaml beside it."""
    torch.manual_seed(0)
    model = TinyRecursiveModel(TRMConfig(**SMALL))
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({f"_orig_mod.model.inner.{k}": v for k, v in model.state_dict().items()}, folder / "step_500")
    arch = {"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
            "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}, **SMALL}
    del arch["num_puzzle_identifiers"]
    (folder / "all_config.yaml").write_text(yaml.safe_dump({"arch": arch, "global_batch_size": 768, "ema": True}))
    return folder / "step_500"


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trm-kaggle convert: error:")]
    assert len(err) == 1
    return err[0]


def test_convert_exits_0_and_prints_sizes_config_and_destination(upstream, tmp_path, capsys):
    out = tmp_path / "ours"
    assert main(["convert", str(upstream), str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS_FILE, MANIFEST_FILE])
    assert f"{upstream.stat().st_size / 1e6:,.2f} MB" in printed and "9 task-embedding rows" in printed
    assert "puzzle_emb_len=16" in printed and "hidden_size=64" in printed and "L_cycles=1" in printed
    assert str(out) in printed and "all_config.yaml" in printed
    assert load_checkpoint(out).config.puzzle_emb_len == 16


def test_convert_takes_the_arch_from_the_command_line_and_overrides_puzzle_emb_len(upstream, tmp_path, capsys):
    (upstream.parent / "all_config.yaml").unlink()
    arch = ["hidden_size=64", "num_heads=4", "H_cycles=1", "L_cycles=1", "halt_max_steps=3", "mlp_t=False"]
    assert main(["convert", str(upstream), str(tmp_path / "ours"), "--arch", *arch, "--puzzle-emb-len", "1"]) == 0
    config = read_manifest(tmp_path / "ours")["config"]
    assert (config["puzzle_emb_len"], config["L_cycles"], config["halt_max_steps"]) == (1, 1, 3)
    assert "arch from given" in capsys.readouterr().out


def test_convert_exits_2_with_one_line_for_a_missing_file(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "step_1"), str(tmp_path / "ours")]) == 2
    assert "step_1" in _one_error_line(capsys)
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_convert_exits_2_with_one_line_for_a_corrupt_file(upstream, tmp_path, capsys, damage):
    data = upstream.read_bytes()
    upstream.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not torch" * 50, "empty": b""}[damage])
    assert main(["convert", str(upstream), str(tmp_path / "ours")]) == 2
    assert str(upstream) in _one_error_line(capsys)
    assert not (tmp_path / "ours").exists()


def test_convert_exits_2_when_no_arch_is_known(upstream, tmp_path, capsys):
    (upstream.parent / "all_config.yaml").unlink()
    assert main(["convert", str(upstream), str(tmp_path / "ours")]) == 2
    assert "--arch" in _one_error_line(capsys)


def test_convert_exits_2_for_an_arch_item_that_is_not_key_value(upstream, tmp_path, capsys):
    assert main(["convert", str(upstream), str(tmp_path / "ours"), "--arch", "L_cycles"]) == 2
    assert "KEY=VALUE" in _one_error_line(capsys)
