#!/usr/bin/env python
"""Build the Kaggle side of trm-kaggle: the notebook, the offline wheels, and ready-to-upload datasets.

    python build_notebook.py                   # notebook + offline_wheels/ + requirements-kaggle.txt
    python build_notebook.py --notebook-only   # just notebook/trm_arc_submission.ipynb (no pip, no network)
    python build_notebook.py --check           # exit 1 if the committed notebook or wheel list is stale
    python build_notebook.py --dataset-dir upload --checkpoint checkpoints/trm --kaggle-user me
        # also assemble upload/trm-kaggle-wheels, upload/trm-kaggle-checkpoint and upload/notebook,
        # each with its Kaggle metadata, then: kaggle datasets create -p upload/trm-kaggle-wheels (etc.)

The notebook is generated from notebook/trm_arc_submission.py (jupytext percent format) with outputs
cleared and fixed metadata, so a rebuild is byte-identical. The wheels are the trm_kaggle wheel built
from this checkout (reproducible: fixed SOURCE_DATE_EPOCH, file modes and umask) plus the dependencies
in TO_VENDOR, downloaded once for Kaggle's Python and platform.

--check needs no network and builds nothing: it regenerates the notebook and the wheel list in memory and
compares bytes. The trm_kaggle wheel's hash changes with every source edit anywhere in the package, so the
committed list names only its version; its hash is written into the uploaded dataset's copy of the list.

What is committed: the dependency wheels (they cannot be fetched offline, and they are small) but not the
trm_kaggle wheel (offline_wheels/.gitignore). That one would be stale after any colleague's commit, would
capture whatever uncommitted work sat in the tree when it was built, and takes two seconds to rebuild
offline, so committing it buys nothing. --dataset-dir always rebuilds it, so an upload is never stale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NOTEBOOK_SRC = Path("notebook/trm_arc_submission.py")
NOTEBOOK_OUT = Path("notebook/trm_arc_submission.ipynb")
WHEEL_DIR = Path("offline_wheels")
REQUIREMENTS = Path("requirements-kaggle.txt")

KAGGLE_PYTHON = "3.11"
KAGGLE_PLATFORM = "manylinux2014_x86_64"

# Runtime dependencies Kaggle's GPU image already has. We never vendor these: torch alone is ~800 MB of
# CUDA wheels, and pip would replace Kaggle's tuned build. Notebook-side imports are listed too, so that
# every import the notebook or the run can make is accounted for here.
KAGGLE_PROVIDED = ("torch", "numpy", "kagglehub", "matplotlib", "ipython")

# Dependencies we carry as wheels, pinned: name -> version. Only pure-Python or manylinux x86_64 wheels
# for CPython 3.11; each entry's own dependencies must be installed or listed here too (we download with
# --no-deps so nothing unplanned sneaks in).
#
# safetensors: current Kaggle images ship it (transformers needs it), so strictly it is not required. We
# carry it anyway because it is the one runtime dependency not central to the image, and without it the run
# cannot read its checkpoint at all. Its abi3 wheel is 0.5 MB and covers every CPython >= 3.10; pip leaves
# an installed copy alone (our requirement is >= 0.4), so on today's image it is simply never used.
TO_VENDOR = {"safetensors": "0.8.0"}

# 1980-01-01, the earliest time a zip can record: a constant, so the wheel does not change with the clock
# or the commit date, only with its contents.
SOURCE_DATE_EPOCH = "315532800"

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


class BuildError(Exception):
    """The build or check cannot go on; the message says what to do."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def project_metadata(root: Path = ROOT) -> tuple[str, list[str]]:
    """(version, dependency names) from pyproject.toml."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0] for dep in project.get("dependencies", [])]
    return project["version"], names


# ------------------------------------------------------------------------------------------- notebook


def render_notebook(root: Path = ROOT) -> bytes:
    """The .ipynb bytes for the notebook source: outputs cleared, fixed ids and metadata, no timestamps."""
    try:
        import jupytext
        import nbformat
    except ImportError as exc:
        raise BuildError(f"{exc.name} is needed to build the notebook: pip install jupytext nbformat") from exc

    nb = jupytext.reads((root / NOTEBOOK_SRC).read_text(encoding="utf-8"), fmt="py:percent")
    # jupytext records its own version and paths in the metadata; none of that belongs in a committed file.
    nb.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:02d}"  # nbformat would draw random ids
        cell.metadata = nbformat.from_dict({})
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.nbformat, nb.nbformat_minor = 4, 5
    return (nbformat.writes(nb, version=4) + "\n").encode("utf-8")


def build_notebook(root: Path = ROOT) -> Path:
    out = root / NOTEBOOK_OUT
    data = render_notebook(root)
    if not out.is_file() or out.read_bytes() != data:
        out.write_bytes(data)
    return out


# ------------------------------------------------------------------------------------------- wheels


def _copy_sources(root: Path, dest: Path) -> None:
    """What setuptools needs to build the wheel, with fixed file modes, into an empty folder (a stale
    build/ or *.egg-info in the checkout could otherwise leak deleted modules into the wheel)."""
    names = ["pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE"]
    files = [root / name for name in names if (root / name).is_file()]
    files += [p for p in (root / "trm_kaggle").rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    for src in files:
        target = dest / src.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        os.chmod(target, 0o644)


def build_package_wheel(root: Path, out_dir: Path) -> Path:
    """trm_kaggle's wheel from this checkout, reproducibly, into out_dir (old trm_kaggle wheels removed)."""
    with tempfile.TemporaryDirectory(prefix="trm-wheel-") as tmp:
        src, dist = Path(tmp, "src"), Path(tmp, "dist")
        _copy_sources(root, src)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
               "--disable-pip-version-check", "-q", "-w", str(dist), str(src)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, umask=0o022)
        if result.returncode != 0:
            raise BuildError(f"building the trm_kaggle wheel failed:\n{result.stdout}{result.stderr}")
        (wheel,) = dist.glob("trm_kaggle-*.whl")
        for old in out_dir.glob("trm_kaggle-*.whl"):
            old.unlink()
        return Path(shutil.copy2(wheel, out_dir / wheel.name))


def _wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return _norm(name), version


def _acceptable_tags(path: Path) -> bool:
    """Pure Python, or a CPython wheel for manylinux x86_64 that Kaggle's 3.11 can load."""
    python_tag, abi_tag, platform_tag = path.stem.split("-")[-3:]
    if platform_tag == "any":
        return True
    return "x86_64" in platform_tag and "manylinux" in platform_tag and (abi_tag == "abi3" or "cp311" in python_tag)


def vendor_dependencies(out_dir: Path, known: dict[str, dict]) -> list[Path]:
    """The TO_VENDOR wheels in out_dir: kept when already there with the recorded hash, else downloaded."""
    wheels = []
    for name, version in sorted(TO_VENDOR.items()):
        have = [p for p in out_dir.glob("*.whl") if _wheel_name_version(p) == (_norm(name), version)]
        if have and known.get(_norm(name), {}).get("sha256") == _sha256(have[0]):
            wheels.append(have[0])
            continue
        with tempfile.TemporaryDirectory(prefix="trm-dl-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", KAGGLE_PYTHON, "--implementation", "cp", "--platform", KAGGLE_PLATFORM,
                   "--disable-pip-version-check", "-q", "-d", tmp, f"{name}=={version}"]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise BuildError(f"downloading {name}=={version} failed (network?):\n{result.stderr}")
            (wheel,) = Path(tmp).glob("*.whl")
            if not _acceptable_tags(wheel):
                raise BuildError(f"{wheel.name} is not pure Python or manylinux x86_64 for CPython {KAGGLE_PYTHON}")
            for p in have:
                p.unlink()
            wheels.append(Path(shutil.copy2(wheel, out_dir / wheel.name)))
    return wheels


# ------------------------------------------------------------------------------------------- requirements list

_REQ_LINE = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?: --hash=sha256:(?P<sha256>[0-9a-f]{64}))?  # (?P<file>\S+)")


def requirements_text(wheels: list[Path], hash_package: bool) -> str:
    """The wheel list, one pip requirement per wheel with its sha256. The trm-kaggle line carries its hash
    only when hash_package (the uploaded copy): in the committed list it would change with every edit."""
    lines = [
        "# Generated by build_notebook.py; do not edit. The wheels in offline_wheels/, for Kaggle's",
        f"# CPython {KAGGLE_PYTHON} on {KAGGLE_PLATFORM}. The notebook installs them with",
        "#   pip install --no-index --find-links <wheels dataset> trm-kaggle",
        f"# Provided by Kaggle's image, so not here: {', '.join(KAGGLE_PROVIDED)}.",
    ]
    for wheel in sorted(wheels, key=_wheel_name_version):
        name, version = _wheel_name_version(wheel)
        if name == "trm-kaggle" and not hash_package:
            lines.append(f"{name}=={version}  # {wheel.name}, built from the checkout (not committed; hash in the upload)")
        else:
            lines.append(f"{name}=={version} --hash=sha256:{_sha256(wheel)}  # {wheel.name}")
    return "\n".join(lines) + "\n"


def read_requirements(path: Path) -> dict[str, dict]:
    """name -> {version, sha256 (None for trm-kaggle), file}; {} when the file is absent."""
    if not path.is_file():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        match = _REQ_LINE.match(line)
        if match:
            entries[_norm(match["name"])] = match.groupdict()
    return entries


def _package_wheel_name(root: Path) -> Path:
    # What setuptools names it (normalised name, version, pure Python); the check needs it without building.
    return Path(f"trm_kaggle-{project_metadata(root)[0]}-py3-none-any.whl")


def build_wheels(root: Path = ROOT) -> list[Path]:
    out_dir = root / WHEEL_DIR
    out_dir.mkdir(exist_ok=True)
    known = read_requirements(root / REQUIREMENTS)
    wheels = [build_package_wheel(root, out_dir), *vendor_dependencies(out_dir, known)]
    for stray in set(out_dir.glob("*.whl")) - set(wheels):  # the folder holds exactly the list
        stray.unlink()
    (root / REQUIREMENTS).write_text(requirements_text(wheels, hash_package=False))
    return wheels


# ------------------------------------------------------------------------------------------- check


def check(root: Path = ROOT) -> list[str]:
    """Why the committed notebook or wheel list is stale (empty: up to date). No network, no build."""
    problems = []
    committed = root / NOTEBOOK_OUT
    if not committed.is_file():
        problems.append(f"{NOTEBOOK_OUT} is missing")
    elif committed.read_bytes() != render_notebook(root):
        problems.append(f"{NOTEBOOK_OUT} does not match {NOTEBOOK_SRC}")

    _, dependencies = project_metadata(root)
    placed = {_norm(n) for n in (*KAGGLE_PROVIDED, *TO_VENDOR)}
    unplaced = [d for d in dependencies if _norm(d) not in placed]
    if unplaced:
        problems.append(f"pyproject dependencies in neither KAGGLE_PROVIDED nor TO_VENDOR: {', '.join(unplaced)}")

    # The list the sources call for, from the committed dependency wheels and the package's version.
    wheel_dir = root / WHEEL_DIR
    vendored = []
    for name, version in sorted(TO_VENDOR.items()):
        found = [p for p in wheel_dir.glob("*.whl") if _wheel_name_version(p) == (_norm(name), version)]
        if not found:
            problems.append(f"no {name}=={version} wheel in {WHEEL_DIR}")
        vendored += found[:1]
    extra = {p.name for p in wheel_dir.glob("*.whl") if not p.name.startswith("trm_kaggle-")} - {p.name for p in vendored}
    problems += [f"{WHEEL_DIR / name} is not in TO_VENDOR" for name in sorted(extra)]
    expected = requirements_text([*vendored, _package_wheel_name(root)], hash_package=False)
    listed = root / REQUIREMENTS
    if not listed.is_file() or listed.read_text() != expected:
        problems.append(f"{REQUIREMENTS} does not list what TO_VENDOR, the wheels and pyproject.toml call for")
    return problems


# ------------------------------------------------------------------------------------------- datasets


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def assemble_datasets(root: Path, dest: Path, checkpoint: Path | None, user: str) -> list[Path]:
    """Folders ready for `kaggle datasets create -p` / `kaggle kernels push -p`, each with its metadata."""
    made = []
    wheels = dest / "trm-kaggle-wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    for wheel in sorted((root / WHEEL_DIR).glob("*.whl")):
        shutil.copy2(wheel, wheels / wheel.name)
    (wheels / REQUIREMENTS.name).write_text(requirements_text(sorted(wheels.glob("*.whl")), hash_package=True))
    _write_json(wheels / "dataset-metadata.json",
                {"title": "trm-kaggle offline wheels", "id": f"{user}/trm-kaggle-wheels", "licenses": [{"name": "MIT"}]})
    made.append(wheels)
    sources = [f"{user}/trm-kaggle-wheels"]

    if checkpoint is not None:
        if not ((checkpoint / "manifest.json").is_file() and any(checkpoint.glob("*.safetensors"))):
            raise BuildError(f"{checkpoint} is not a checkpoint folder (manifest.json and *.safetensors)")
        target = dest / "trm-kaggle-checkpoint"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint, target / checkpoint.name)  # a subfolder: Kaggle lists it as-is
        _write_json(target / "dataset-metadata.json",
                    {"title": "trm-kaggle checkpoint", "id": f"{user}/trm-kaggle-checkpoint", "licenses": [{"name": "MIT"}]})
        made.append(target)
        sources.append(f"{user}/trm-kaggle-checkpoint")

    kernel = dest / "notebook"
    shutil.rmtree(kernel, ignore_errors=True)
    kernel.mkdir(parents=True)
    shutil.copy2(root / NOTEBOOK_OUT, kernel / NOTEBOOK_OUT.name)
    # The 4xL4 accelerator is chosen in the notebook editor's settings; the API has no stable field for it.
    _write_json(kernel / "kernel-metadata.json", {
        "id": f"{user}/trm-arc-submission", "title": "TRM ARC submission", "code_file": NOTEBOOK_OUT.name,
        "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
        "enable_internet": False, "dataset_sources": sources, "competition_sources": ["arc-prize-2025"],
        "kernel_sources": [], "model_sources": [],
    })
    made.append(kernel)
    return made


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the notebook or wheel list is stale (no network)")
    mode.add_argument("--notebook-only", action="store_true", help="regenerate only the .ipynb")
    parser.add_argument("--dataset-dir", type=Path, help="also assemble upload-ready dataset folders here")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder for the checkpoint dataset")
    parser.add_argument("--kaggle-user", default=os.environ.get("KAGGLE_USERNAME", "YOUR-KAGGLE-USERNAME"),
                        help="owner of the datasets in their metadata (default $KAGGLE_USERNAME)")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # tests build in a copy
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.check and args.dataset_dir:
        parser.error("--check builds nothing; run --dataset-dir on its own")

    try:
        if args.check:
            problems = check(root)
            for problem in problems:
                print(f"stale: {problem}")
            if problems:
                print("run `python build_notebook.py` and commit the result", file=sys.stderr)
                return 1
            print("notebook and wheel list are up to date")
            return 0
        print(f"notebook: {build_notebook(root).relative_to(root)}")
        if args.notebook_only:
            return 0
        for wheel in build_wheels(root):
            print(f"wheel: {wheel.relative_to(root)} ({wheel.stat().st_size / 1024:.0f} KiB)")
        if args.dataset_dir:
            for folder in assemble_datasets(root, args.dataset_dir.resolve(), args.checkpoint, args.kaggle_user):
                print(f"upload: {folder}")
    except BuildError as exc:
        print(f"build_notebook.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
