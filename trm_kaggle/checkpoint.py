"""Checkpoints: our safetensors + JSON-manifest format, and a one-time converter from upstream `.ckpt` files.

Our format is a folder:
    model.safetensors   trunk tensors under the model's own names (no pickle, ever)
    manifest.json       format version, TRMConfig, mean task embedding, SHA-256 of model.safetensors, provenance

Pre-trained checkpoints drop the per-variant task-embedding table: post-training on new tasks only ever uses its
row mean (TRM_FACTS §4.3), and the table is most of the file (1.28 M rows x 512 f32 = 2.6 GB for ARC-AGI-2).
A loaded checkpoint has a one-row table holding that mean; `model.resize_puzzle_table(n)` grows it.

    trm-kaggle convert step_723914 checkpoints/trm-arc2      # reads all_config.yaml beside the file
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import CheckpointError, ConfigError
from .model import TinyRecursiveModel, TRMConfig, count_parameters

log = logging.getLogger("trm_kaggle.checkpoint")

FORMAT_NAME = "trm-kaggle-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
TABLE_KEY = "puzzle_emb.weights"

# Upstream arch keys that name the same thing as a TRMConfig field.
_UPSTREAM_ARCH_KEYS = {
    "hidden_size", "num_heads", "expansion", "L_layers", "H_cycles", "L_cycles", "puzzle_emb_len", "puzzle_emb_ndim",
    "halt_max_steps", "halt_exploration_prob", "rope_theta", "rms_norm_eps", "vocab_size", "seq_len",
    "num_puzzle_identifiers", "forward_dtype", "pos_encodings", "no_ACT_continue",
}
# Fields that leave no trace in tensor shapes (TRM_FACTS pitfall 1): they must come from the arch, not be guessed.
_SHAPELESS = ("H_cycles", "L_cycles", "puzzle_emb_len", "halt_max_steps", "num_heads")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ our format
def save_checkpoint(model: TinyRecursiveModel, out_dir: str | Path, provenance: dict[str, Any] | None = None,
                    include_table: bool = False, mean_embedding: torch.Tensor | None = None) -> Path:
    """Write model.safetensors then manifest.json (each atomically; the manifest's hash ties them together)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _fold_lora({k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}, model)
    has_table = TABLE_KEY in state
    if has_table:
        mean = model.mean_puzzle_embedding() if mean_embedding is None else mean_embedding
        if not include_table:
            del state[TABLE_KEY]
    else:
        mean = torch.zeros(0)
    config = model.config.to_dict()
    config["num_puzzle_identifiers"] = model.num_puzzle_identifiers if include_table and has_table else 1

    weights = out / WEIGHTS_FILE
    tmp = _temp_name(weights)
    try:
        open(tmp, "xb").close()
        mode = os.stat(tmp).st_mode & 0o777  # what the umask gives a new file: save_file itself writes 0600
        save_file(state, tmp, metadata={"format": FORMAT_NAME})
        os.chmod(tmp, mode)
        os.replace(tmp, weights)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config,
        "includes_task_table": bool(include_table and has_table),
        # float() of an f32 value is exact, and JSON round-trips Python floats exactly.
        "mean_task_embedding": [float(x) for x in mean.to(torch.float32).cpu().tolist()],
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": file_sha256(weights),
        "weights_bytes": weights.stat().st_size,
        "parameter_count": count_parameters(model) - sum(p.numel() for n, p in model.named_parameters()
                                                          if "._lora_" in n),  # folded away above
        "provenance": {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "trm_kaggle_version": __version__,
            **(provenance or {}),
        },
    }
    _write_json_atomic(out / MANIFEST_FILE, manifest)
    return out


def _fold_lora(state: dict[str, torch.Tensor], model: TinyRecursiveModel) -> dict[str, torch.Tensor]:
    """Fold the factors of a model wrapped by optim.apply_lora (`pretrain --mode lora` saves mid-run) into its base
    weights, as optim.merge_lora would, leaving the live model alone: our format has no LoRA keys, and a file with
    them would not load."""
    for name, module in model.named_modules():
        if not hasattr(module, "_lora_A"):
            continue
        prefix = f"{name}." if name else ""
        A, B = state.pop(prefix + "_lora_A"), state.pop(prefix + "_lora_B")
        w = state[prefix + "weight"]
        delta = (B.to(torch.float32) @ A.to(torch.float32)) * module._lora_scaling
        state[prefix + "weight"] = w + delta.to(w.dtype)
    return state


def read_manifest(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / MANIFEST_FILE
    if Path(ckpt_dir).is_file():
        # The usual mistake: an upstream step_N file (or our model.safetensors) passed where the folder belongs.
        raise CheckpointError(f"{ckpt_dir}: is a file, not a folder; a checkpoint is a folder with {MANIFEST_FILE} "
                              f"and {WEIGHTS_FILE} (convert an upstream step_N file once with `trm-kaggle convert`)")
    if not Path(ckpt_dir).is_dir():
        raise CheckpointError(f"checkpoint folder {str(ckpt_dir)!r} does not exist")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; a checkpoint folder needs {MANIFEST_FILE} and {WEIGHTS_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}")
    for key in ("config", "mean_task_embedding", "weights_sha256"):
        if key not in manifest:
            raise CheckpointError(f"{path}: field {key!r} is missing")
    # A hand-edited manifest must fail here with its name, not later as an AttributeError deep in torch.
    if not isinstance(manifest["config"], dict):
        raise CheckpointError(f"{path}: field 'config' must be an object of TRMConfig fields")
    mean = manifest["mean_task_embedding"]
    if not isinstance(mean, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in mean):
        raise CheckpointError(f"{path}: field 'mean_task_embedding' must be a list of numbers")
    weights_file = manifest.get("weights_file", WEIGHTS_FILE)
    if not isinstance(weights_file, str) or Path(weights_file).name != weights_file or weights_file in ("", ".", ".."):
        raise CheckpointError(f"{path}: weights_file {weights_file!r} must be a file name inside the checkpoint folder")
    return manifest


def load_checkpoint(ckpt_dir: str | Path, map_location: str | torch.device = "cpu",
                    verify_hash: bool = True) -> TinyRecursiveModel:
    """Load one of our checkpoints. Every inconsistency is a CheckpointError that says what and where."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    manifest = read_manifest(ckpt_dir)
    weights = ckpt_dir / manifest.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    if verify_hash:
        actual = file_sha256(weights)
        if actual != manifest["weights_sha256"]:
            raise CheckpointError(f"{weights}: SHA-256 {actual[:12]}… does not match the manifest's "
                                  f"{str(manifest['weights_sha256'])[:12]}… (truncated or replaced file)")
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: cannot be read as safetensors ({e})") from None
    try:
        config = TRMConfig.from_dict(manifest["config"])
    except (TypeError, ValueError, ConfigError) as e:  # ConfigError: out-of-range values, from TRMConfig itself
        raise CheckpointError(f"{ckpt_dir / MANIFEST_FILE}: config is invalid ({e})") from None

    mean = torch.tensor(manifest["mean_task_embedding"], dtype=torch.float32)
    if TABLE_KEY not in state and config.puzzle_emb_ndim > 0:
        if mean.shape != (config.puzzle_emb_ndim,):
            raise CheckpointError(f"{ckpt_dir / MANIFEST_FILE}: mean_task_embedding has {mean.numel()} values, "
                                  f"config.puzzle_emb_ndim is {config.puzzle_emb_ndim}")
        config.num_puzzle_identifiers = 1
        state[TABLE_KEY] = mean.view(1, -1).clone()
    model = _model_from_state(config, state, source=str(weights))
    model.checkpoint_manifest = manifest
    model.checkpoint_mean = mean
    return model.to(map_location)


def _model_from_state(config: TRMConfig, state: dict[str, torch.Tensor], source: str) -> TinyRecursiveModel:
    with torch.device("meta"):
        shapes = TinyRecursiveModel(config).state_dict()
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(shapes[k].shape)}"
             for k in shapes if k in state and tuple(state[k].shape) != tuple(shapes[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}{'…' if len(unexpected) > 4 else ''}")
        if wrong:
            parts.append("shape mismatch " + "; ".join(wrong[:3]))
        raise CheckpointError(f"{source}: tensors do not match the config ({', '.join(parts)})")
    model = TinyRecursiveModel(config)
    # assign=True keeps the file's exact tensors and dtypes (bf16 H_init/L_init stay bf16): bit-for-bit.
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _temp_name(path: Path) -> str:
    """A fresh name beside `path` for an atomic write. Not mkstemp: its files are 0600 and os.replace keeps that,
    which leaves a checkpoint folder unreadable to anyone else (a shared box, a container with another user)."""
    return str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = _temp_name(path)
    try:
        with open(tmp, "x") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -------------------------------------------------------------------------------------------------- upstream
def _strip_upstream_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        name = key
        for prefix in ("_orig_mod.", "model.", "inner."):
            name = name.removeprefix(prefix)
        out[name] = value
    return out


def parse_arch_items(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["L_cycles=4", "mlp_t=false", "lora_alpha=null"]` -> {"L_cycles": 4, "mlp_t": False, "lora_alpha": None}.

    Values read as YAML scalars would (int, float, true/false, null, else text), so a command line gives the same
    arch dict as all_config.yaml does.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"arch value {item!r}: expected KEY=VALUE, e.g. L_cycles=4")
        out[key.strip()] = _scalar(text.strip())
    return out


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~", ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _as_bool(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value is None or value in (True, False):  # True, False, 1, 0; None = not set
        return bool(value)
    raise ValueError(f"{value!r} is not a bool")


def _typed_config_values(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Give each TRMConfig field its declared type: arch values may arrive as text (`--arch mlp_t=False`), where
    bool("False") is True and range("4") fails only deep inside a forward pass."""
    types = {f.name: f.type for f in fields(TRMConfig)}  # annotations are strings: "int", "float", "str", "bool"
    out = {}
    for key, value in values.items():
        kind = types[key]
        try:
            if kind == "bool":
                value = _as_bool(value)
            elif kind == "int":
                number = _scalar(value) if isinstance(value, str) else value
                if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number):
                    raise ValueError
                value = int(number)
            elif kind == "float":
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            elif kind == "str":
                value = str(value)
        except (TypeError, ValueError, OverflowError):
            raise CheckpointError(f"{source}: arch value {key}={value!r} is not a valid {kind}") from None
        out[key] = value
    return out


def _read_upstream_arch(path: Path, arch: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    if arch is not None:
        values, source = arch.get("arch", arch), "given"
        if not isinstance(values, dict):
            raise CheckpointError(f"{path}: the given arch must be a mapping of arch values")
        return dict(values), source
    config_file = path.parent / "all_config.yaml"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no arch given and no all_config.yaml beside it; pass the arch values "
                              f"(e.g. --arch L_cycles=4 puzzle_emb_len=16) — they leave no trace in tensor shapes")
    try:
        import yaml
    except ImportError:
        raise CheckpointError("reading all_config.yaml needs PyYAML: pip install pyyaml") from None
    try:
        loaded = yaml.safe_load(config_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{config_file}: not valid YAML ({' '.join(str(e).split())})") from None
    values = loaded.get("arch", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(values, dict):
        raise CheckpointError(f"{config_file}: expected a mapping with an `arch:` mapping of model settings")
    return dict(values), str(config_file)


def _merge_lora(state: dict[str, torch.Tensor], arch: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Fold fork LoRA factors into their base weights: W + (alpha / r) B A (TRM_FACTS §8.5)."""
    a_keys = [k for k in state if k.endswith("._lora_A")]
    b_keys = [k for k in state if k.endswith("._lora_B")]
    if not a_keys and not b_keys:
        return state
    alpha = arch.get("lora_alpha")
    if isinstance(alpha, str):
        alpha = _scalar(alpha)
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
        raise CheckpointError(f"{source}: arch lora_alpha={alpha!r} is not a number")
    state = dict(state)
    for key in sorted(set(a_keys) | {k[:-1] + "A" for k in b_keys}):  # an orphan B names its missing A
        base = key.removesuffix("._lora_A")
        needed = (base + "._lora_A", base + "._lora_B", base + ".weight")
        missing = [k for k in needed if k not in state]
        if missing:
            raise CheckpointError(f"{source}: LoRA adapter {base!r} is incomplete (no {', '.join(missing)})")
        A, B, w = (state[k] for k in needed)
        rank = A.shape[0]
        if A.ndim != 2 or B.ndim != 2 or B.shape[1] != rank or (B.shape[0], A.shape[1]) != tuple(w.shape):
            raise CheckpointError(f"{source}: LoRA adapter {base!r} has A {tuple(A.shape)}, B {tuple(B.shape)} "
                                  f"for a weight of {tuple(w.shape)}")
        scaling = (alpha or rank) / rank  # the fork: alpha None means alpha = r
        del state[base + "._lora_A"], state[base + "._lora_B"]
        delta = scaling * (B.to(torch.float32) @ A.to(torch.float32))
        state[base + ".weight"] = (w.to(torch.float32) + delta).to(w.dtype)
    log.info("merged %d LoRA adapters into their base weights", len(a_keys))
    return state


def upstream_config(state: dict[str, torch.Tensor], arch: dict[str, Any], overrides: dict[str, Any] | None = None,
                    source: str = "upstream checkpoint") -> TRMConfig:
    """Config from the arch values, with shape-determined fields read from the tensors themselves.

    `overrides` (TRMConfig fields) win over both, so a wrong value shows up as a shape mismatch when loading.
    """
    known = {f.name for f in fields(TRMConfig)}
    values = {k: v for k, v in arch.items() if k in _UPSTREAM_ARCH_KEYS}
    try:
        mlp_t = _as_bool(arch.get("mlp_t", False))
    except ValueError:
        raise CheckpointError(f"{source}: arch value mlp_t={arch.get('mlp_t')!r} is not a valid bool") from None
    if mlp_t:
        raise CheckpointError(f"{source}: arch mlp_t=True (the MLP-mixer variant) is not supported")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown config override(s) {unknown}; expected TRMConfig fields")
    for name in _SHAPELESS:
        if name not in values and name not in overrides:
            log.warning("upstream arch has no %s; using the paper's value %s (it cannot be read from shapes)",
                        name, getattr(TRMConfig, name))
    if "H_init" in state:
        values["hidden_size"] = state["H_init"].shape[0]
        values.setdefault("forward_dtype", str(state["H_init"].dtype).removeprefix("torch."))
    if "embed_tokens.embedding_weight" in state:
        values["vocab_size"] = state["embed_tokens.embedding_weight"].shape[0]
    if TABLE_KEY in state:
        values["num_puzzle_identifiers"], values["puzzle_emb_ndim"] = state[TABLE_KEY].shape
    else:
        values["puzzle_emb_ndim"] = 0
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"L_level\.layers\.(\d+)\.", k))}
    if layer_ids:
        values["L_layers"] = max(layer_ids) + 1
    down = state.get("L_level.layers.0.mlp.down_proj.weight")
    if down is not None and "expansion" not in values:
        # The width is expansion * D * 2/3 rounded up to a multiple of 256, so many expansions give one width: keep
        # the paper's 4 when it fits (else the manifest would say 4.5 for D 512), otherwise invert the formula.
        width, hidden = down.shape[1], values.get("hidden_size", 512)
        paper = TRMConfig.expansion
        fits = -(round(paper * hidden * 2 / 3) // -256) * 256 == width
        values["expansion"] = paper if fits else width * 3 / (2 * hidden)
    values.update(overrides)
    try:
        return TRMConfig.from_dict(_typed_config_values(values, source))
    except (TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{source}: the arch gives an invalid config ({e})") from None


def load_upstream(path: str | Path, arch: dict[str, Any] | None = None,
                  overrides: dict[str, Any] | None = None) -> TinyRecursiveModel:
    """Load an upstream `pretrain.py` checkpoint (compiled or not, base or LoRA) into our model, table and all.

    `arch` is a dict of upstream arch values (or a whole all_config dict with an `arch` key); when None,
    `all_config.yaml` beside the file is read. `overrides` are TRMConfig fields that win over the arch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same thing to the user
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    arch_values, arch_source = _read_upstream_arch(path, arch)
    state = _merge_lora(_strip_upstream_prefixes(raw), arch_values, source=str(path))
    config = upstream_config(state, arch_values, overrides, source=str(path))
    model = _model_from_state(config, state, source=str(path))
    model.checkpoint_manifest = {"provenance": {"source": str(path), "arch_from": arch_source}}
    return model


def convert_upstream(path: str | Path, out_dir: str | Path, arch: dict[str, Any] | None = None,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read an upstream checkpoint once and write our format (trunk + mean task embedding). Returns sizes."""
    path = Path(path)
    # Overrides go in before the model is built, so it is built (and checked against the tensors) as it is saved.
    model = load_upstream(path, arch, overrides)
    mean = model.mean_puzzle_embedding() if model.config.puzzle_emb_ndim > 0 else None
    arch_from = model.checkpoint_manifest["provenance"]["arch_from"]
    provenance = {"converted_from": path.name, "source_sha256": file_sha256(path),
                  "source_table_rows": model.num_puzzle_identifiers, "arch_from": arch_from,
                  "overrides": {k: getattr(model.config, k) for k in (overrides or {})}}
    out = save_checkpoint(model, out_dir, provenance=provenance, include_table=False, mean_embedding=mean)
    before = path.stat().st_size
    after = (out / WEIGHTS_FILE).stat().st_size + (out / MANIFEST_FILE).stat().st_size
    return {"source": str(path), "out": str(out), "bytes_before": before, "bytes_after": after,
            "table_rows_dropped": provenance["source_table_rows"], "arch_from": arch_from,
            "config": read_manifest(out)["config"]}
