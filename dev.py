#!/usr/bin/env python3
"""Set up and run, on a fresh machine with nothing but Python 3.10+:

    python3 dev.py rehearse     # the main job: a 5-minute CPU rehearsal -> runs/rehearsal/submission.json + report
    python3 dev.py test         # the test suite

Set-up is done once into .venv (with access to system packages, so an installed torch is reused, as on Kaggle).
Where torch is missing, CPU torch 2.13.0 is installed first: a bare `torch` requirement would otherwise pull
several GB of CUDA wheels on Linux. (Outside this workplace, point pip at a CPU wheel index with
PIP_EXTRA_INDEX_URL if your default index only serves CUDA builds.) Extra arguments pass through:

    python3 dev.py rehearse --budget 10m --challenges my_tasks.json --solutions my_solutions.json
    python3 dev.py test -k budget -x
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH_CPU = "torch==2.13.0"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def _run(*cmd: str | Path, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _quiet_ok(*cmd: str | Path) -> bool:
    return subprocess.run([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def setup() -> None:
    stamp = VENV / ".trm-kaggle-setup"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == want and _quiet_ok(PY, "-c", "import trm_kaggle, torch"):
        return
    if not PY.exists():
        venv.EnvBuilder(with_pip=True, system_site_packages=True).create(VENV)
    pip = (PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check")
    if not _quiet_ok(PY, "-c", "import torch"):
        _run(*pip, TORCH_CPU)
    _run(*pip, "-e", f"{ROOT}[dev,notebook]")
    # The notebook test executes the .ipynb with a kernel named python3: make it this environment's Python.
    _run(PY, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3", "--display-name", "Python 3")
    stamp.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("rehearse", "test", "setup"):
        print(__doc__)
        return 2
    setup()
    command, rest = argv[0], argv[1:]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "JUPYTER_PATH": str(VENV / "share" / "jupyter")}
    if command == "rehearse":
        return subprocess.run([str(PY), "-m", "trm_kaggle.cli", "rehearse", *rest], cwd=ROOT, env=env).returncode
    if command == "test":
        code = subprocess.run([str(PY), "-m", "pytest", *rest], cwd=ROOT, env=env).returncode
        return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
