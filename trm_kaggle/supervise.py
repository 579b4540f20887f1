"""Run `trm-kaggle run` as N local ranks under a parent that outlives them, so a dying rank costs time, not the file.

    trm-kaggle run --nproc 2 --device cpu --checkpoint ckpt/ --challenges tasks.json --budget 2h --out out/
    trm-kaggle run --nproc 4 ...                      # 4 GPUs on one machine: one rank per GPU (LOCAL_RANK)

The parent trains nothing and imports no torch. It:
 1. fixes one absolute deadline: the budget's end less a small margin of its own (for steps 3 to 5);
 2. starts N copies of the same command line with RANK, LOCAL_RANK, WORLD_SIZE and MASTER_ADDR=127.0.0.1 with
    a free loopback MASTER_PORT, plus `--deadline`, so every rank stops at the same instant whenever it started;
 3. watches them. All exit 0: done. One dies (non-zero exit, or killed by a signal): the others are stopped,
    SIGTERM and then SIGKILL after a grace period, because a collective whose peer is gone may never return.
    Ranks still running at the deadline get the same treatment (SIGTERM makes a rank write its best
    submission and save its training state);
 4. after a failure, runs the same command once more as one process (`--nproc 1`) until the same deadline,
    if enough time is left. That run resumes from OUT/state when a state was saved, keeps the submission
    already in OUT (the last round written, else the fallback) until its own first round, and votes;
 5. whatever happened, ends with kaggle_env.ensure_valid_submission: a valid submission.json is left alone,
    a missing or damaged one is rebuilt from the fallback, keeping every well-formed entry.

OUT/supervisor.json records the rank pids (while running), exit codes, the failure and the recovery. Only
loopback addresses are used. SIGTERM or SIGINT to the parent is passed on to the ranks, which then finish as
above. The ranks stay in the parent's process group, so a launcher that kills the group (kaggle_env.stream)
reaches them too. Exit code: 0 when the ranks, or the recovery run after a failure, completed; else the first
failing code (128 + signal for a signal).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

log = logging.getLogger("trm_kaggle.supervise")

# The parent's own share of the budget, for stopping ranks, the recovery's end and the final check.
MARGIN_FRACTION = 0.1
MARGIN_MIN_S, MARGIN_MAX_S = 3.0, 120.0
# A recovery run pays for a Python and torch start-up, a checkpoint load and a measurement before it votes:
# with less time than this left, the submission already written is the best that can be had.
MIN_RECOVERY_S = 15.0
POLL_S = 0.2


def margin_s(budget_s: float) -> float:
    """Seconds of a budget the parent keeps for itself."""
    return min(MARGIN_MAX_S, max(MARGIN_MIN_S, MARGIN_FRACTION * budget_s))


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_code(code: int) -> int:
    """Popen's -N (killed by signal N) as the shell's 128 + N."""
    return 128 - code if code < 0 else code


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _stop(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every live process, wait up to grace_s in all, then SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            log.warning("pid %d did not stop within %.0f s of SIGTERM: killing it", p.pid, grace_s)
            p.kill()
            p.wait()


class _Signals:
    """SIGTERM/SIGINT to the parent: remembered, and acted on by the watch loop (never raised mid-wait)."""

    def __init__(self) -> None:
        self.signum = 0

    def install(self) -> Callable[[], None]:
        try:
            previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
            for s in previous:
                signal.signal(s, self._handler)
        except ValueError:  # not the main thread: nothing to forward
            return lambda: None
        return lambda: [signal.signal(s, h) for s, h in previous.items()]

    def _handler(self, signum, _frame) -> None:
        self.signum = signum


def supervise(run_argv: Sequence[str], nproc: int, deadline: float, out_dir: str | os.PathLike,
              challenges: str | os.PathLike, *, python: str = sys.executable,
              extra_env: Mapping[str, str] | None = None, grace_s: float = 10.0,
              min_recovery_s: float = MIN_RECOVERY_S) -> int:
    """Run `python -m trm_kaggle.cli <run_argv>` as `nproc` ranks until `deadline` (Unix time); see the module doc.

    `run_argv` is the `run` command line as given (it may contain `--nproc N`: ranks ignore it). The ranks and
    the recovery get `--deadline`. A process still running `grace_s` after the deadline gets SIGTERM, and SIGKILL
    `grace_s` later: the caller's own end should be at least 2 x grace_s + a second or two after `deadline`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    submission = out / "submission.json"
    record: dict = {"nproc": nproc, "deadline": deadline, "ranks": [], "failed": None, "recovery": None}

    def save_record() -> None:
        try:
            tmp = out / ".supervisor.json.tmp"
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, out / "supervisor.json")
        except OSError:
            log.warning("could not write %s", out / "supervisor.json")

    base_cmd = [python, "-m", "trm_kaggle.cli", *run_argv, "--deadline", f"{deadline:.3f}"]
    port = free_loopback_port()
    env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    # As torchrun does: N ranks each spinning as many OpenMP threads as there are cores slow gloo on CPU to a
    # crawl (a first step that took 0.3 s alone did not finish in 30 s with 2 ranks on 2 cores).
    recovery_env = dict(env)  # one process: all the cores again
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    signals = _Signals()
    restore = signals.install()
    procs: list[subprocess.Popen] = []
    exit_code = 0
    try:
        for rank in range(nproc):
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                        "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            procs.append(subprocess.Popen(base_cmd, env=rank_env))
            record["ranks"].append({"rank": rank, "pid": procs[-1].pid, "exit_code": None})
        save_record()
        log.warning("supervising %d ranks (pids %s) until %s", nproc, [p.pid for p in procs],
                    time.strftime("%H:%M:%S", time.localtime(deadline)))

        failed: tuple[int, int] | None = None
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                break
            if signals.signum:
                log.warning("%s received: stopping the ranks (they write their best submission)",
                            signal.Signals(signals.signum).name)
                break
            if time.time() >= deadline + grace_s:  # a rank's deadline includes its final write: it is late
                log.warning("ranks still running at the deadline: stopping them")
                record["failed"] = {"reason": "still running at the deadline"}
                break
            time.sleep(POLL_S)

        if failed is not None:
            rank, code = failed
            log.error("rank %d (pid %d) %s: stopping the other ranks", rank, procs[rank].pid, _describe(code))
            record["failed"] = {"rank": rank, "exit_code": _exit_code(code), "reason": _describe(code)}
        _stop(procs, grace_s)
        for entry, p in zip(record["ranks"], procs):
            entry["exit_code"] = _exit_code(p.returncode)
        save_record()

        if signals.signum:
            exit_code = 128 + signals.signum
        elif record["failed"] is not None:
            exit_code = record["failed"].get("exit_code", 124)  # 124: still running at the deadline, as timeout(1)
            left = deadline - time.time()
            if failed is not None and left >= min_recovery_s:
                log.warning("recovery: one process, resuming from %s if a state was saved, %.0f s left",
                            out / "state", left)
                recovery = _run_recovery(base_cmd, recovery_env, deadline, grace_s, signals)
                record["recovery"] = {"exit_code": recovery, "seconds_left_at_start": round(left, 1)}
                if recovery == 0:
                    exit_code = 0
            elif failed is not None:
                log.warning("%.0f s left: too little for a recovery run; keeping the submission written so far", left)
                record["recovery"] = {"skipped": f"{left:.0f} s left"}
    finally:
        _stop(procs, grace_s)  # an exception above must not leave ranks running
        restore()
        status = _ensure_valid(submission, challenges)
        record["final_check"] = status
        save_record()
        log.warning("%s", status)
    return exit_code


def _run_recovery(base_cmd: list[str], env: Mapping[str, str], deadline: float, grace_s: float,
                  signals: _Signals) -> int:
    """The same run as one process (the later --nproc wins), stopped like a rank if it outlives the deadline."""
    proc = subprocess.Popen([*base_cmd, "--nproc", "1"], env=dict(env))
    while proc.poll() is None:
        if signals.signum or time.time() >= deadline + grace_s:
            _stop([proc], grace_s)
            break
        time.sleep(POLL_S)
    return _exit_code(proc.returncode)


def _ensure_valid(submission: Path, challenges: str | os.PathLike) -> str:
    from .kaggle_env import ensure_valid_submission  # never raises: repairs, or at worst writes blanks

    return ensure_valid_submission(submission, challenges)
