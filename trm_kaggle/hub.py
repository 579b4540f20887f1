"""Getting checkpoints in and out: Hugging Face for upstream checkpoints, Kaggle for our uploads.

    trm-kaggle fetch-checkpoint Trelis/TRM-ARC-AGI-II --filename step_723914 --out checkpoints/trm-arc2
    trm-kaggle publish --kind model you/trm-arc2/pyTorch/default checkpoints/trm-arc2
    trm-kaggle publish --kind dataset you/trm-wheels upload/wheels

Both need the network (and `publish` needs Kaggle credentials); on a machine without them each fails at once
with one line saying which, instead of a traceback or a long hang. Neither is used on Kaggle itself: the notebook
finds its checkpoint among the attached inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .checkpoint import convert_upstream
from .errors import CheckpointError, ConfigError, TrmKaggleError


class HubError(TrmKaggleError):
    """The network, a hub or credentials are not available."""


def fetch_checkpoint(repo_id: str, filename: str | None = None, out_dir: str | Path | None = None,
                     revision: str | None = None, arch_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Download an upstream TRM checkpoint (and its all_config.yaml) from Hugging Face and convert it to ours."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:
        raise HubError("fetch-checkpoint needs huggingface_hub: pip install 'trm-kaggle[notebook]'") from None

    network_errors = (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, ValueError)
    try:
        if filename is None:
            files = huggingface_hub.list_repo_files(repo_id, revision=revision)
            steps = sorted((f for f in files if Path(f).name.startswith("step_")), key=_step_number)
            if not steps:
                raise HubError(f"{repo_id}: no step_<N> checkpoint file; pass --filename")
            filename = steps[-1]
        weights = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)
        config_name = str(Path(filename).parent / "all_config.yaml").removeprefix("./")
        try:
            huggingface_hub.hf_hub_download(repo_id, config_name, revision=revision)
        except network_errors:
            pass  # convert_upstream says clearly that the arch is missing, if it is
    except HubError:
        raise
    except network_errors as e:
        raise HubError(f"cannot download {repo_id}/{filename or '?'}: no network or no such file "
                       f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    out = Path(out_dir) if out_dir else Path("checkpoints") / repo_id.split("/")[-1].lower()
    info = convert_upstream(weights, out, overrides=arch_overrides)
    info["repo_id"], info["filename"] = repo_id, filename
    return info


def _step_number(name: str) -> int:
    try:
        return int(Path(name).name.removeprefix("step_"))
    except ValueError:
        return -1


def kaggle_credentials_present() -> bool:
    """kagglehub reads KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN, or a kaggle.json file."""
    if os.environ.get("KAGGLE_API_TOKEN") or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        return True
    homes = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else []
    homes += [Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    return any((h / "kaggle.json").is_file() or (h / "access_token").is_file() for h in homes)


def publish(kind: str, handle: str, directory: str | Path, notes: str = "") -> None:
    """Upload a checkpoint folder as a Kaggle model, or a folder (e.g. offline wheels) as a Kaggle dataset."""
    if kind not in ("model", "dataset"):
        raise ConfigError(f"--kind must be 'model' or 'dataset', got {kind!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a folder")
    if kind == "model" and not (directory / "manifest.json").is_file():
        raise CheckpointError(f"{directory}: not one of our checkpoints (no manifest.json)")
    if not kaggle_credentials_present():
        raise HubError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle")
    try:
        import kagglehub
    except ImportError:
        raise HubError("publish needs kagglehub: pip install 'trm-kaggle[notebook]'") from None
    try:
        if kind == "model":
            manifest = json.loads((directory / "manifest.json").read_text())
            notes = notes or f"trm-kaggle checkpoint {manifest.get('weights_sha256', '')[:12]}"
            kagglehub.model_upload(handle, str(directory), license_name="MIT", version_notes=notes)
        else:
            kagglehub.dataset_upload(handle, str(directory), version_notes=notes)
    except Exception as e:  # kagglehub raises many types (HTTP, auth, validation); all mean "upload failed"
        raise HubError(f"upload of {directory} to {handle} failed ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]})") from None
