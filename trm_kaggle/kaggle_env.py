"""Everything the Kaggle notebook does, so the notebook itself stays a list of calls.

The notebook (`notebook/trm_arc_submission.py`) runs in three places, told apart here:

    hidden-set rerun     KAGGLE_IS_COMPETITION_RERUN set   full budget (12 h less a margin), never raises
    interactive / commit KAGGLE_KERNEL_RUN_TYPE set        a short rehearsal (15 min)
    local                neither                           a few minutes, roots from TRM_KAGGLE_* variables

Local overrides (also honoured on Kaggle, where nobody sets them):

    TRM_KAGGLE_INPUT_ROOT   where the attached datasets live     (default /kaggle/input on Kaggle, else .)
    TRM_KAGGLE_WORKING_DIR  the writable folder                  (default /kaggle/working on Kaggle, else .)
    TRM_KAGGLE_OUT          where the run writes its outputs     (default: working dir; locally ./out)
    TRM_KAGGLE_CHALLENGES   the challenges file                  (default: found under the input root)
    TRM_KAGGLE_CHECKPOINT   the checkpoint folder                (default: found under the input root)
    TRM_KAGGLE_BUDGET       run budget: 90, 90s, 15m or 2h       (default: by place, see above)
    TRM_KAGGLE_KEEP_GOING   1: swallow stage errors as on the rerun (to rehearse that path)

This module imports only the standard library at import time: the notebook imports it straight from the
attached wheel (a zip) before anything is installed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

# budget and errors import only the standard library, so this module still imports from a bare wheel.
from .budget import parse_duration
from .errors import CheckpointError, ConfigError, TaskFileError, TrmKaggleError

log = logging.getLogger("trm_kaggle.kaggle_env")

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
COMPETITION_SLUG = "arc-prize-2025"
CHALLENGES_NAME = "arc-agi_test_challenges.json"
WHEEL_GLOB = "trm_kaggle-*.whl"
MANIFEST_NAME = "manifest.json"

# Kaggle stops a notebook at 12 h wall clock, start-up included, and a notebook that overruns scores nothing.
# The margin covers what happens outside the run's own budget: kernel start-up, the offline install and
# input lookup (a few minutes), the hard-kill grace below (10 min) and the final validation (seconds),
# with the rest as slack for a run that finishes late.
DEFAULT_MARGIN_MINUTES = 30.0
# A run still alive this long after its budget has ended is killed, so the last cell can still repair
# the submission before Kaggle's own limit.
KILL_GRACE_S = 600.0
REHEARSAL_S = 15 * 60.0  # "Save & Run All": long enough to exercise every stage, short enough to iterate
LOCAL_S = 5 * 60.0
# Deep enough for a Kaggle model mount (input/<model>/<framework>/<variation>/<version>/<files>) and a
# dataset with a folder or two inside; bounded so a huge attached dataset cannot stall the lookup.
MAX_SEARCH_DEPTH = 7
# Never worth descending into when the input root is a local checkout.
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", ".hypothesis", "build"}


# ------------------------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Env:
    """Where the notebook runs and where things are. Built once by detect_environment()."""

    is_kaggle: bool
    is_rerun: bool
    input_root: Path
    working_dir: Path
    n_gpus: int
    out_dir: Path
    challenges: Path | None = None  # explicit override (TRM_KAGGLE_CHALLENGES)
    checkpoint: Path | None = None  # explicit override (TRM_KAGGLE_CHECKPOINT)
    budget_override_s: float | None = None  # TRM_KAGGLE_BUDGET
    keep_going: bool = False  # swallow stage errors (always on the rerun)

    @property
    def place(self) -> str:
        if self.is_rerun:
            return "Kaggle hidden-set rerun"
        return "Kaggle interactive/commit" if self.is_kaggle else "local"


def _count_gpus() -> int:
    try:
        import torch
    except Exception:  # no torch (or a broken one): the run will say so itself; here we only count
        return 0
    try:
        return int(torch.cuda.device_count())
    except Exception:
        return 0


def detect_environment(
    environ: Mapping[str, str] | None = None,
    input_root: str | os.PathLike | None = None,
    working_dir: str | os.PathLike | None = None,
    n_gpus: int | None = None,
) -> Env:
    """Tell the hidden rerun, a Kaggle session and a local run apart, and fix the roots for this run.

    Arguments win over TRM_KAGGLE_* variables, which win over the defaults; `environ` defaults to
    os.environ (tests pass their own).
    """
    environ = os.environ if environ is None else environ
    is_rerun = bool(environ.get("KAGGLE_IS_COMPETITION_RERUN"))
    # KAGGLE_KERNEL_RUN_TYPE is "Interactive" or "Batch" in every Kaggle notebook; the folder is the backstop.
    is_kaggle = is_rerun or bool(environ.get("KAGGLE_KERNEL_RUN_TYPE"))
    if not is_kaggle and "TRM_KAGGLE_INPUT_ROOT" not in environ and input_root is None:
        is_kaggle = KAGGLE_INPUT.is_dir()

    def root(arg, name: str, kaggle_default: Path) -> Path:
        value = arg if arg is not None else environ.get(name)
        if value:
            return Path(value).expanduser()
        return kaggle_default if is_kaggle else Path.cwd()

    inputs = root(input_root, "TRM_KAGGLE_INPUT_ROOT", KAGGLE_INPUT)
    working = root(working_dir, "TRM_KAGGLE_WORKING_DIR", KAGGLE_WORKING)
    if environ.get("TRM_KAGGLE_OUT"):
        out = Path(environ["TRM_KAGGLE_OUT"]).expanduser()
    else:  # Kaggle scores /kaggle/working/submission.json; locally keep outputs out of the checkout's root
        out = working if is_kaggle else working / "out"

    def optional_path(name: str) -> Path | None:
        return Path(environ[name]).expanduser() if environ.get(name) else None

    budget = environ.get("TRM_KAGGLE_BUDGET")
    return Env(
        is_kaggle=is_kaggle,
        is_rerun=is_rerun,
        input_root=inputs,
        working_dir=working,
        n_gpus=_count_gpus() if n_gpus is None else n_gpus,
        out_dir=out,
        challenges=optional_path("TRM_KAGGLE_CHALLENGES"),
        checkpoint=optional_path("TRM_KAGGLE_CHECKPOINT"),
        budget_override_s=budget_from_text(budget) if budget else None,
        keep_going=is_rerun or environ.get("TRM_KAGGLE_KEEP_GOING", "") not in ("", "0"),
    )


def describe(env: Env) -> str:
    """One line for the notebook's first output."""
    return (
        f"{env.place}: input {env.input_root}, out {env.out_dir}, "
        f"{env.n_gpus} GPU(s), python {sys.version.split()[0]}"
    )


# ------------------------------------------------------------------------------------------- budget

def budget_from_text(text: str) -> float:
    """TRM_KAGGLE_BUDGET in seconds ('90', '90s', '15m', '2h', '1h30m'), read as the CLI reads --budget."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ConfigError(f"budget {text!r} must be more than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """Whole seconds with an 's', a form the CLI's --budget reads (budget.parse_duration)."""
    return f"{max(1, int(seconds))}s"


def run_budget_seconds(
    env: Env, full_hours: float = 12.0, margin_minutes: float = DEFAULT_MARGIN_MINUTES
) -> float:
    """The one budget for `trm-kaggle run`: the whole 12 h less a margin on the hidden rerun only.

    TRM_KAGGLE_BUDGET wins everywhere (it is never set on Kaggle unless you set it); otherwise the
    interactive commit gets a short rehearsal and a local run a few minutes.
    """
    if env.budget_override_s is not None:
        return env.budget_override_s
    if env.is_rerun:
        budget = full_hours * 3600.0 - margin_minutes * 60.0
        if budget <= 0:
            raise ConfigError(f"a {margin_minutes} min margin leaves nothing of {full_hours} h")
        return budget
    return REHEARSAL_S if env.is_kaggle else LOCAL_S


# ------------------------------------------------------------------------------------------- finding inputs


def _walk_dirs(root: Path, max_depth: int = MAX_SEARCH_DEPTH) -> Iterator[Path]:
    """Every folder under root (root first), in sorted order, following links but never twice."""
    seen: set[str] = set()
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            real = os.path.realpath(folder)
            if real in seen:
                continue
            seen.add(real)
            with os.scandir(folder) as entries:
                children = sorted(
                    (entry.name for entry in entries if entry.is_dir() and entry.name not in _SKIP_DIRS),
                    reverse=True,  # popped from the end, so visited in ascending order
                )
        except OSError:  # unreadable mount or a dangling link: not where our files are
            continue
        yield folder
        if depth < max_depth:
            stack.extend((folder / name, depth + 1) for name in children)


def _pick(found: list[Path], what: str) -> Path:
    if len(found) > 1:
        others = ", ".join(str(p) for p in found[1:4])
        log.warning("found %d %s; using %s (also: %s)", len(found), what, found[0], others)
    return found[0]


def find_challenges(env: Env) -> Path:
    """The challenges file: the override, the competition's own path, else the first one under the input root."""
    if env.challenges is not None:
        if not env.challenges.is_file():
            raise TaskFileError(f"TRM_KAGGLE_CHALLENGES={env.challenges} is not a file")
        return env.challenges
    official = env.input_root / COMPETITION_SLUG / CHALLENGES_NAME
    if official.is_file():
        return official
    found = [folder / CHALLENGES_NAME for folder in _walk_dirs(env.input_root) if (folder / CHALLENGES_NAME).is_file()]
    if not found:
        raise TaskFileError(
            f"no {CHALLENGES_NAME} under {env.input_root} (looked at {official} first): "
            f"attach the {COMPETITION_SLUG} competition data, or set TRM_KAGGLE_CHALLENGES"
        )
    return _pick(found, CHALLENGES_NAME)


def find_wheel_dir(env: Env) -> Path:
    """The attached folder holding our wheel, whatever the dataset was called."""
    found = [folder for folder in _walk_dirs(env.input_root) if any(folder.glob(WHEEL_GLOB))]
    if not found:
        raise TrmKaggleError(
            f"no folder with {WHEEL_GLOB} under {env.input_root}: attach the wheels dataset "
            f"(build it with `python build_notebook.py --dataset-dir DIR`)"
        )
    return _pick(found, f"folders with {WHEEL_GLOB}")


def is_checkpoint_dir(folder: Path) -> bool:
    """Our checkpoint format: a folder with manifest.json and the weights as *.safetensors."""
    return (folder / MANIFEST_NAME).is_file() and any(folder.glob("*.safetensors"))


def _checkpoints_under(root: Path) -> list[Path]:
    return [folder for folder in _walk_dirs(root) if is_checkpoint_dir(folder)]


def _kagglehub_download(handle: str) -> Path | None:
    """kagglehub's copy of `handle`, or None. Any failure is one log line: kagglehub is known to fail
    during the hidden rerun, where the attached copy under the input root is what counts."""
    try:
        import kagglehub  # noqa: PLC0415 - optional, and absent outside Kaggle
    except Exception as exc:
        log.info("kagglehub not usable (%s); looking under the input root", type(exc).__name__)
        return None
    # Datasets are owner/slug[/versions/N]; models are owner/model/framework/variation[/version].
    is_dataset = handle.count("/") == 1 or "/versions/" in handle
    try:
        download = kagglehub.dataset_download if is_dataset else kagglehub.model_download
        return Path(download(handle))
    except BaseException as exc:  # noqa: BLE001 - whatever kagglehub raises, the fallback is the same
        if isinstance(exc, KeyboardInterrupt):
            raise
        message = " ".join(str(exc).split())[:200]
        log.warning("kagglehub could not fetch %s (%s: %s); looking under the input root", handle, type(exc).__name__, message)
        return None


def find_checkpoint(env: Env, handle: str | None = None) -> Path:
    """The checkpoint folder: the override, then kagglehub (if a handle is given), then the input root."""
    if env.checkpoint is not None:
        found = _checkpoints_under(env.checkpoint) if env.checkpoint.is_dir() else []
        if not found:
            raise CheckpointError(
                f"TRM_KAGGLE_CHECKPOINT={env.checkpoint} holds no folder with {MANIFEST_NAME} and *.safetensors"
            )
        return _pick(found, "checkpoints")
    looked = []
    if handle:
        downloaded = _kagglehub_download(handle)
        if downloaded is not None:
            found = _checkpoints_under(downloaded) if downloaded.is_dir() else []
            if found:
                return _pick(found, "checkpoints")
            log.warning("kagglehub's copy of %s at %s holds no checkpoint; looking under the input root", handle, downloaded)
        looked.append(f"kagglehub {handle}")
    found = _checkpoints_under(env.input_root)
    if not found:
        looked.append(f"every folder under {env.input_root} (depth {MAX_SEARCH_DEPTH})")
        raise CheckpointError(
            f"no checkpoint (a folder with {MANIFEST_NAME} and *.safetensors) in {' or '.join(looked)}: "
            "attach the checkpoint dataset or model, or set TRM_KAGGLE_CHECKPOINT"
        )
    return _pick(found, "checkpoints")


# ------------------------------------------------------------------------------------------- install


_WHEEL_NAME = re.compile(r"^trm_kaggle-([^-]+)-")


def _wheel_version(wheel_dir: Path) -> str | None:
    versions = [m.group(1) for w in sorted(wheel_dir.glob(WHEEL_GLOB)) if (m := _WHEEL_NAME.match(w.name))]
    return versions[-1] if versions else None


def _importable_version(python: str, cwd: str | os.PathLike | None) -> str | None:
    """trm_kaggle's version as a fresh `python` in `cwd` sees it (what the launched run will import), or None."""
    probe = "import trm_kaggle.cli, trm_kaggle; print(trm_kaggle.__version__)"
    result = subprocess.run([python, "-c", probe], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return result.stdout.strip() or "unknown"


def install_offline(
    wheel_dir: str | os.PathLike,
    python: str = sys.executable,
    cwd: str | os.PathLike | None = None,
) -> list[str]:
    """`pip install --no-index --find-links wheel_dir trm-kaggle`, unless a fresh interpreter can already
    import trm_kaggle (a source checkout or an earlier install). pip itself leaves every dependency that
    is already installed alone (torch, numpy on Kaggle), so only what is missing comes from the folder.

    Returns the distributions pip installed ("name-version"), [] when nothing was needed.
    """
    present = _importable_version(python, cwd)
    if present is not None:
        log.info("trm_kaggle %s already importable; nothing to install", present)
        return []
    return _pip_install(Path(wheel_dir), python, cwd)


def ensure_installed(env: Env) -> list[str]:
    """install_offline from the attached wheel folder, which is looked for only when trm_kaggle is missing
    (a local checkout needs no wheels at all)."""
    present = _importable_version(sys.executable, None)
    if present is not None:
        log.info("trm_kaggle %s already importable; nothing to install", present)
        return []
    return _pip_install(find_wheel_dir(env), sys.executable, None)


def _pip_install(wheel_dir: Path, python: str, cwd: str | os.PathLike | None) -> list[str]:
    wanted = _wheel_version(wheel_dir)
    if wanted is None:
        raise TrmKaggleError(f"no {WHEEL_GLOB} in {wheel_dir}")
    cmd = [python, "-m", "pip", "install", "--no-index", "--find-links", str(wheel_dir),
           "--disable-pip-version-check", "--no-warn-script-location", f"trm-kaggle=={wanted}"]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = " | ".join(line for line in result.stderr.strip().splitlines()[-3:])
        raise TrmKaggleError(f"offline install from {wheel_dir} failed (pip exit {result.returncode}): {tail}")
    installed: list[str] = []
    for line in result.stdout.splitlines():
        if line.startswith("Successfully installed "):
            installed = line.split()[2:]
    log.info("installed from %s: %s", wheel_dir, ", ".join(installed) or "nothing new")
    return installed


# ------------------------------------------------------------------------------------------- run


def launch_command(
    env: Env, checkpoint: str | os.PathLike, challenges: str | os.PathLike, out_dir: str | os.PathLike, budget_s: float
) -> list[str]:
    """The `trm-kaggle run` command line: one process per visible GPU under torchrun, else one process."""
    run_args = ["-m", "trm_kaggle.cli", "run",
                "--checkpoint", str(checkpoint), "--challenges", str(challenges),
                "--budget", format_duration(budget_s), "--out", str(out_dir)]
    if env.n_gpus > 1:
        # torch.distributed.run *is* torchrun; going through this interpreter avoids depending on PATH.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(env.n_gpus), *run_args]
    return [sys.executable, *run_args]


def stream(
    cmd: list[str],
    timeout_s: float | None = None,
    cwd: str | os.PathLike | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Run `cmd`, printing its output line by line as it comes, and return its exit code.

    Never raises for a failing command: a missing program is 127, a run killed at `timeout_s` is 124
    (its whole process group, so torchrun's workers go too).
    """
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    print("$ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1, start_new_session=True,
        )
    except OSError as exc:
        print(f"cannot start {cmd[0]}: {exc}", flush=True)
        return 127

    timed_out = threading.Event()

    def kill_group() -> None:
        timed_out.set()
        print(f"\n--- still running after {timeout_s:.0f} s: stopping it ---", flush=True)
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    timer = threading.Timer(timeout_s, kill_group) if timeout_s is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr] - stdout=PIPE above
            print(line, end="", flush=True)
        code = proc.wait()
    except KeyboardInterrupt:  # the notebook's stop button: take the run down with us
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
    if timed_out.is_set():
        return 124
    print(f"--- exit code {code} ---", flush=True)
    return code


@contextlib.contextmanager
def stage(env: Env, name: str) -> Iterator[None]:
    """Run one notebook stage. Where env.keep_going (always on the hidden rerun) an error is printed
    and swallowed: a notebook that raises there scores nothing, while the last cell still turns whatever
    exists into a valid submission. Elsewhere errors propagate, so a commit run shows them."""
    started = time.monotonic()
    try:
        yield
    except Exception as exc:
        if not env.keep_going:
            raise
        if isinstance(exc, NameError):  # a variable an earlier, failed stage should have set
            print(f"[{name}] skipped: it needs the result of a stage that failed above ({exc})", flush=True)
            return
        print(f"[{name}] FAILED after {time.monotonic() - started:.0f} s: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc(limit=3, file=sys.stdout)
        print(f"[{name}] going on: the last cell writes a valid submission whatever happened", flush=True)
    else:
        print(f"[{name}] done in {time.monotonic() - started:.0f} s", flush=True)


def show_results(out_dir: str | os.PathLike) -> dict | None:
    """Print the run's report.json (headline fields) and show timeline.png; None when there is no report."""
    out_dir = Path(out_dir)
    report = None
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"no readable report.json in {out_dir} ({type(exc).__name__})")
    if isinstance(report, dict):
        for key, value in report.items():
            text = json.dumps(value) if not isinstance(value, str) else value
            print(f"{key:>24}: {text if len(text) <= 100 else text[:97] + '...'}")
    plot = out_dir / "timeline.png"
    if plot.is_file():
        try:
            from IPython.display import Image, display  # noqa: PLC0415 - only inside a notebook

            display(Image(filename=str(plot)))
        except Exception:
            print(f"timeline plot: {plot}")
    return report


# ------------------------------------------------------------------------------------------- submission


def _repair(submission, task_set, fallback: dict) -> tuple[dict, int, int]:
    """Keep every well-formed entry of `submission` where the challenges expect one; fallback the rest.
    Returns (repaired, entries kept, entries filled)."""
    from .submission import ATTEMPT_KEYS, grid_problem  # noqa: PLC0415

    old = submission if isinstance(submission, dict) else {}
    repaired, kept, filled = {}, 0, 0
    for task_id, fallback_entries in fallback.items():
        entries = old.get(task_id)
        entries = entries if isinstance(entries, list) else []
        fixed = []
        for index, default in enumerate(fallback_entries):
            entry = entries[index] if index < len(entries) else None
            if isinstance(entry, dict) and all(key in entry and grid_problem(entry[key]) is None for key in ATTEMPT_KEYS):
                fixed.append({key: entry[key] for key in ATTEMPT_KEYS})
                kept += 1
            else:
                fixed.append(default)
                filled += 1
        repaired[task_id] = fixed
    return repaired, kept, filled


def _last_resort(submission_path: Path, challenges_path: Path, why: str) -> str:
    """The package itself is broken: answer every test input with [[0]] using nothing but json."""
    try:
        challenges = json.loads(Path(challenges_path).read_text())
        blank = {"attempt_1": [[0]], "attempt_2": [[0]]}
        obj = {
            task_id: [blank for _ in (task.get("test") or [None])] if isinstance(task, dict) else [blank]
            for task_id, task in challenges.items()
        }
    except Exception:  # not even the challenges are readable: an empty object is still a file
        obj = {}
    tmp = submission_path.with_name(f".{submission_path.name}.last-resort")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, submission_path)
    return f"LAST RESORT: wrote {len(obj)} blank task(s) to {submission_path} ({why})"


def ensure_valid_submission(submission_path: str | os.PathLike, challenges_path: str | os.PathLike) -> str:
    """The notebook's last word: make `submission_path` a valid submission for `challenges_path`.

    A valid file is left untouched. A missing, unreadable or partly wrong one (the run died, was killed,
    or wrote something odd) is rewritten atomically: every well-formed entry kept, every other test
    input answered with the fallback. Never raises; returns one status line.
    """
    submission_path = Path(submission_path)
    try:
        from .submission import fallback_attempts, validate_submission, write_submission  # noqa: PLC0415
        from .tasks import load_tasks  # noqa: PLC0415

        submission_path.parent.mkdir(parents=True, exist_ok=True)
        task_set = load_tasks(challenges_path)
        if submission_path.is_file():
            problems = validate_submission(submission_path, task_set)
            if not problems:
                return f"valid: {submission_path} answers all {len(task_set.task_ids)} task(s)"
            try:
                existing = json.loads(submission_path.read_text())
            except (OSError, ValueError):
                existing = None
            why = f"{len(problems)} problem(s), first: {problems[0]}"
        else:
            existing, why = None, "missing"
        repaired, kept, filled = _repair(existing, task_set, fallback_attempts(task_set))
        write_submission(repaired, submission_path)
        left = validate_submission(submission_path, task_set)
        status = "REPAIRED" if not left else f"STILL INVALID ({left[0]})"
        return f"{status}: {submission_path} was {why}; kept {kept} entries, filled {filled} from the fallback"
    except Exception as exc:  # noqa: BLE001 - the notebook must end with a file, whatever broke
        try:
            return _last_resort(submission_path, Path(challenges_path), f"{type(exc).__name__}: {exc}")
        except Exception as final:  # noqa: BLE001
            return f"FAILED: could not write {submission_path}: {type(final).__name__}: {final}"
