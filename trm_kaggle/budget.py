"""The clock every stage obeys: one deadline, a planner that splits it, and a timeline of what happened.

A Kaggle run that is still working when its 12 hours end scores nothing, so every stage of trm-kaggle asks
this module how much time it has, rather than keeping its own notion of time. The pieces:

* ``Budget``: one absolute deadline on a wall clock, with sub-deadlines for phases (training gets its own,
  earlier deadline) and a final-write reserve that no phase may eat, so the submission is always written.
* ``parse_duration``: "12h", "90m", "1h30m", "600" -> seconds, for the CLI and notebook options.
* ``Throughput`` and ``measure``: seconds per optimiser step and per inference variant, timed on this machine.
* ``plan`` / ``replan``: how many variants to vote over and how many steps to train, from the time left.
* ``inference_rounds``: variant ranges that grow, so stopping early still leaves votes for every task.
* ``Timeline``: planned vs actual seconds per phase, as JSON and as a Gantt chart PNG.

Typical use (the notebook and CLI do this)::

    budget = Budget.from_duration("11h45m")
    tp = Throughput(train_step_s=measure(step, warmup=3, repeats=10), infer_variant_s=...)
    p = plan(budget.remaining(), tp, n_test_inputs, PlanOptions(reserve_s=budget.final_write_reserve_s))
    with timeline.phase("train", planned_s=p.train_seconds):
        train(..., budget=budget.child("train", p.train_seconds), max_steps=p.train_steps)
    for start, stop in inference_rounds(p.infer_variants):
        ...   # stop at the first round that the inference budget cannot finish
    write_submission(...)   # runs inside the final-write reserve at the latest
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError

logger = logging.getLogger("trm_kaggle.budget")

Clock = Callable[[], float]

# Writing a submission for a few hundred tasks takes well under a second, but the disk, the garbage collector
# or a slow rank can stall; a minute of a 12-hour run is cheap insurance. Short rehearsal budgets keep the same
# share (5 %) instead, so a 60-second smoke test is not all reserve.
FINAL_WRITE_RESERVE_S = 60.0
FINAL_WRITE_RESERVE_FRACTION = 0.05

# Fixed slack on top of the scaled inference estimate: the first inference batches pay for compilation and
# allocator warm-up, and the vote runs after the last batch. Scaled down for short budgets like the reserve.
INFER_SLACK_S = 60.0
INFER_SLACK_FRACTION = 0.05

DEFAULT_SAFETY_FACTOR = 1.5
DEFAULT_PREFERRED_VARIANTS = (512, 256)  # the paper found little difference between the two


def default_final_write_reserve_s(duration_s: float) -> float:
    """Seconds kept free at the end of a budget of ``duration_s`` for writing the submission."""
    return min(FINAL_WRITE_RESERVE_S, FINAL_WRITE_RESERVE_FRACTION * max(0.0, duration_s))


def default_infer_slack_s(duration_s: float) -> float:
    """Fixed seconds added to the inference estimate (compile, warm-up, the vote) for a budget of ``duration_s``."""
    return min(INFER_SLACK_S, INFER_SLACK_FRACTION * max(0.0, duration_s))


def _seconds(value: Any, what: str, *, allow_inf: bool = False) -> float:
    """A non-negative number of seconds, or ConfigError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number of seconds, got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0 or (math.isinf(value) and not allow_inf):
        raise ConfigError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return value


def _time_point(value: Any, what: str) -> float:
    """A finite clock reading (may be negative on a fake clock), or ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite clock time in seconds, got {value!r}")
    return float(value)


def _count(value: Any, what: str, *, minimum: int = 0) -> int:
    """An integer >= ``minimum`` (numpy integers welcome), or ConfigError."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------------------------------------------
# Durations


_DURATION_RE = re.compile(
    r"(?:(?P<h>\d+(?:\.\d*)?|\.\d+)h)?"
    r"(?:(?P<m>\d+(?:\.\d*)?|\.\d+)m)?"
    r"(?:(?P<s>\d+(?:\.\d*)?|\.\d+)s)?"
)
_BARE_NUMBER_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as ``"12h"``, ``"90m"``, ``"45s"``, ``"1h30m"`` or ``"600"`` (bare = seconds).

    Units come in the order h, m, s, each at most once, and may be fractional (``"1.5h"``). Numbers are passed
    through, so a config value may be either. Anything else raises ConfigError with the accepted forms, because
    a mistyped budget (``"12"`` meant as hours) is found at start-up rather than 12 seconds into the run.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _seconds(text, "duration")
    if not isinstance(text, str):
        raise ConfigError(f"duration must be a string like '12h' or '1h30m', got {text!r}")
    s = text.strip().lower().replace(" ", "")
    if _BARE_NUMBER_RE.fullmatch(s):
        return float(s)
    m = _DURATION_RE.fullmatch(s)
    if not s or m is None or not any(m.group(u) for u in "hms"):
        raise ConfigError(
            f"cannot read duration {text!r}: use hours/minutes/seconds like '12h', '90m', '45s', '1h30m' "
            f"or a bare number of seconds like '600'"
        )
    return sum(float(m.group(u) or 0.0) * k for u, k in (("h", 3600.0), ("m", 60.0), ("s", 1.0)))


# --------------------------------------------------------------------------------------------------------------
# Budget


class Budget:
    """One absolute deadline on a clock, shared by every stage and every rank.

    The deadline is a point on a wall clock (``time.time`` by default), not a duration: ranks started a few
    seconds apart still stop together, and rank 0 can broadcast ``to_dict()`` for the others to rebuild with
    ``from_dict``. (``time.monotonic`` would be steadier but is not comparable between processes.) Tests pass
    a fake ``clock`` (any zero-argument callable returning seconds) and drive time by hand.

    The last ``final_write_reserve_s`` seconds belong to writing the submission. Phases run in children
    (``child``, ``until``) that end before that reserve, so no phase can eat it; the writer uses the root
    budget, whose ``remaining()`` includes the reserve.
    """

    def __init__(
        self,
        deadline: float,
        *,
        clock: Clock = time.time,
        reserve_s: float | None = None,
        start: float | None = None,
        name: str = "run",
    ):
        if not callable(clock):
            raise ConfigError(f"clock must be a zero-argument callable returning seconds, got {clock!r}")
        self.clock = clock
        self.name = str(name)
        self._deadline = _time_point(deadline, "deadline")
        self.start = _time_point(clock() if start is None else start, "start")
        span = max(0.0, self._deadline - self.start)
        self._reserve = default_final_write_reserve_s(span) if reserve_s is None else _seconds(reserve_s, "reserve_s")

    @classmethod
    def from_duration(
        cls, seconds: float | str, clock: Clock = time.time, reserve_s: float | None = None, name: str = "run"
    ) -> Budget:
        """A budget ending ``seconds`` from now (a number, or a string for ``parse_duration``)."""
        seconds = parse_duration(seconds)
        now = clock()
        return cls(now + seconds, clock=clock, reserve_s=reserve_s, start=now, name=name)

    # -- reading the clock ------------------------------------------------------------------------------------

    @property
    def deadline(self) -> float:
        """The absolute clock time at which everything, the submission write included, must be done."""
        return self._deadline

    @property
    def final_write_reserve_s(self) -> float:
        """Seconds before ``deadline`` kept free for writing the submission."""
        return self._reserve

    @property
    def work_deadline(self) -> float:
        """The clock time at which work must stop so the final write still fits: ``deadline - reserve``."""
        return self._deadline - self._reserve

    def remaining(self) -> float:
        """Seconds until the deadline, never negative."""
        return max(0.0, self._deadline - self.clock())

    def work_remaining(self) -> float:
        """Seconds until the work deadline (the reserve excluded), never negative."""
        return max(0.0, self.work_deadline - self.clock())

    def elapsed(self) -> float:
        """Seconds since this budget started."""
        return self.clock() - self.start

    def expired(self) -> bool:
        """True once the deadline has been reached."""
        return self.clock() >= self._deadline

    # -- sub-deadlines ----------------------------------------------------------------------------------------

    def child(self, name: str, seconds: float, reserve_s: float = 0.0) -> Budget:
        """A budget for one phase: ``seconds`` from now, but never past this budget's work deadline.

        Clipping at the work deadline (not the deadline itself) is what keeps the final-write reserve free:
        however a phase is sized, it ends before the time kept for the submission. ``seconds`` may be
        ``math.inf`` for "as long as the parent allows". The child shares this budget's clock.
        """
        seconds = _seconds(seconds, f"child {name!r} seconds", allow_inf=True)
        now = self.clock()
        deadline = min(now + seconds, self.work_deadline)
        return Budget(deadline, clock=self.clock, reserve_s=reserve_s, start=now, name=name)

    def until(
        self, fraction: float | None = None, *, at: float | None = None, name: str | None = None, reserve_s: float = 0.0
    ) -> Budget:
        """A child budget ending at ``fraction`` of this budget's working span, or at the clock time ``at``.

        ``fraction`` is measured from this budget's start to its work deadline (0.9 = "stop at 90 % of the
        time before the reserve"), so every rank computes the same point however late it calls. The two are
        separate arguments because a fraction and a clock time cannot be told apart on a fake clock near 0.
        Either way the result never ends past the work deadline.
        """
        if (fraction is None) == (at is None):
            raise ConfigError("until() takes exactly one of a fraction or at=<absolute clock time>")
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
                raise ConfigError(f"until() fraction must be within [0, 1], got {fraction!r}")
            span = max(0.0, self.work_deadline - self.start)
            target = self.start + float(fraction) * span
            label = name or f"{self.name}@{fraction:g}"
        else:
            target = _time_point(at, "until(at=...)")
            label = name or f"{self.name}@{target:.0f}"
        now = self.clock()
        return Budget(min(target, self.work_deadline), clock=self.clock, reserve_s=reserve_s, start=now, name=label)

    # -- sharing between ranks --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain floats and a name, for rank 0 to broadcast (``broadcast_object_list``) or to log."""
        return {
            "name": self.name,
            "start": self.start,
            "deadline": self._deadline,
            "final_write_reserve_s": self._reserve,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], clock: Clock = time.time) -> Budget:
        """Rebuild a budget broadcast by ``to_dict``; the receiver supplies its own clock."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"budget dict must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("start", "deadline", "final_write_reserve_s") if k not in data]
        if missing:
            raise ConfigError(f"budget dict lacks {', '.join(missing)}")
        return cls(
            data["deadline"],
            clock=clock,
            reserve_s=data["final_write_reserve_s"],
            start=data["start"],
            name=data.get("name", "run"),
        )

    def __repr__(self) -> str:
        return (
            f"Budget(name={self.name!r}, remaining={self.remaining():.1f}s, "
            f"reserve={self._reserve:.1f}s, deadline={self._deadline:.3f})"
        )


# --------------------------------------------------------------------------------------------------------------
# Throughput


@dataclass(frozen=True)
class Throughput:
    """Speeds measured on this machine, the only inputs the planner needs besides the time left.

    ``train_step_s``: wall seconds per optimiser step at the global batch (all ranks together).
    ``infer_variant_s``: wall seconds per augmented variant of one test input, i.e. per sequence run for the
    full 16 ACT steps, for the whole machine (a batch's time divided by the sequences all ranks ran in it).
    ``train_samples`` / ``infer_samples``: how many timed repeats each figure is the ``statistic`` of, so a
    log shows whether a figure came from one noisy call or from many.
    """

    train_step_s: float
    infer_variant_s: float
    train_samples: int = 1
    infer_samples: int = 1
    statistic: str = "median"

    def __post_init__(self) -> None:
        for name in ("train_step_s", "infer_variant_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ConfigError(f"Throughput.{name} must be a positive finite number of seconds, got {value!r}")
        _count(self.train_samples, "Throughput.train_samples")
        _count(self.infer_samples, "Throughput.infer_samples")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Throughput:
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigError(f"bad throughput dict {dict(data)!r}: {exc}") from None


def measure(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5, clock: Clock = time.perf_counter) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    Warm-up calls absorb compilation and allocator growth, which would otherwise make the first step look ten
    times slower than the rest; the median ignores the odd stall. ``fn`` must wait for its own work to finish
    (``torch.cuda.synchronize()``), or the time measured is only the launch.
    """
    warmup = _count(warmup, "warmup")
    repeats = _count(repeats, "repeats", minimum=1)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return float(statistics.median(samples))


# --------------------------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class PlanOptions:
    """Knobs of the planner; the defaults are what a Kaggle run uses.

    ``reserve_s``: final-write reserve; None = ``default_final_write_reserve_s(remaining)``. A caller holding
    a Budget passes ``budget.final_write_reserve_s`` so the two agree.
    ``safety_factor``: inference is planned at this multiple of the measured time, because the hidden test set
    has its own grid sizes and a slow variant costs the whole submission, while a spare minute costs a few steps.
    ``slack_s``: fixed seconds added to the inference estimate; None = ``default_infer_slack_s(remaining)``.
    ``preferred_variants``: variant counts tried largest first before falling back to "as many as fit".
    ``min_variants``: the fewest variants worth running (1 = the identity alone).
    ``max_variants``: variants available per task (``task_variants`` may return fewer than asked); None = no cap.
    ``max_steps``: an upper bound on training steps requested by the user; None = as many as fit.
    """

    reserve_s: float | None = None
    safety_factor: float = DEFAULT_SAFETY_FACTOR
    slack_s: float | None = None
    preferred_variants: tuple[int, ...] = DEFAULT_PREFERRED_VARIANTS
    min_variants: int = 1
    max_variants: int | None = None
    max_steps: int | None = None
    # Inference may take at most this share of the usable time (beyond its minimum), so a short run still trains:
    # on Kaggle 512 variants take ~10% of 12 h and the cap never binds; in a 5-minute CPU rehearsal it does.
    max_infer_fraction: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.max_infer_fraction, bool) or not 0.0 < float(self.max_infer_fraction) <= 1.0:
            raise ConfigError(f"max_infer_fraction must be in (0, 1], got {self.max_infer_fraction!r}")
        if self.reserve_s is not None:
            _seconds(self.reserve_s, "reserve_s")
        if self.slack_s is not None:
            _seconds(self.slack_s, "slack_s")
        sf = self.safety_factor
        if isinstance(sf, bool) or not isinstance(sf, (int, float)) or not (1.0 <= sf < math.inf):
            # Below 1 the planner would knowingly schedule inference that cannot finish.
            raise ConfigError(f"safety_factor must be a finite number >= 1, got {sf!r}")
        if not isinstance(self.preferred_variants, (tuple, list)):
            raise ConfigError(f"preferred_variants must be a tuple of counts, got {self.preferred_variants!r}")
        if not self.preferred_variants:
            # Without a preferred count "as many as fit" has no ceiling but max_variants.
            raise ConfigError("preferred_variants must name at least one variant count, e.g. (512, 256)")
        for v in self.preferred_variants:
            _count(v, "preferred_variants entry", minimum=1)
        _count(self.min_variants, "min_variants", minimum=1)
        if self.max_variants is not None:
            _count(self.max_variants, "max_variants", minimum=1)
        if self.max_steps is not None:
            _count(self.max_steps, "max_steps")


@dataclass(frozen=True)
class Plan:
    """How the time left is split, and why.

    ``train_seconds`` is the time allotted to training (its child deadline); ``train_steps`` the steps that
    fit in it at the measured speed (or ``max_steps``). ``infer_seconds_planned`` is the raw estimate for
    ``infer_variants`` variants of every test input; ``infer_seconds_reserved`` = planned x safety + slack is
    what is set aside. When ``fits`` is True:
    ``train_seconds + infer_seconds_reserved + reserve_s <= remaining_s``. When False, not even
    ``min_variants`` fit: training gets 0 and inference gets all the time before the reserve, to be cut short
    by the rounds (``inference_rounds``) so a partial vote is still written.
    """

    remaining_s: float
    reserve_s: float
    train_seconds: float
    train_steps: int
    infer_variants: int
    infer_seconds_planned: float
    infer_seconds_reserved: float
    safety_factor: float
    slack_s: float
    n_test_inputs: int
    fits: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan(
    budget_remaining_s: float, throughput: Throughput, n_test_inputs: int, options: PlanOptions | None = None
) -> Plan:
    """Split ``budget_remaining_s`` between training and inference; inference is sized first.

    Inference is what produces a submission, so it is sized first: the largest of ``preferred_variants``
    (capped at ``max_variants``) whose time x safety + slack fits before the reserve, else as many variants
    as fit, never fewer than ``min_variants``. Training gets whatever is left, in whole steps. If even
    ``min_variants`` does not fit, training gets 0 steps and inference everything (``fits=False``).
    """
    options = options or PlanOptions()
    # A caller that is already late passes a negative figure; that is "no time", not a configuration mistake.
    if isinstance(budget_remaining_s, (int, float)) and not isinstance(budget_remaining_s, bool) \
            and budget_remaining_s < 0:
        budget_remaining_s = 0.0
    remaining = _seconds(budget_remaining_s, "budget_remaining_s")
    n_test_inputs = _count(n_test_inputs, "n_test_inputs")
    if not isinstance(throughput, Throughput):
        raise ConfigError(f"throughput must be a Throughput, got {type(throughput).__name__}")

    reserve = default_final_write_reserve_s(remaining) if options.reserve_s is None else float(options.reserve_s)
    slack = default_infer_slack_s(remaining) if options.slack_s is None else float(options.slack_s)
    safety = float(options.safety_factor)
    usable = max(0.0, remaining - reserve)
    per_variant = n_test_inputs * throughput.infer_variant_s  # raw seconds for one variant of every test input
    cap = options.max_variants if options.max_variants is not None else math.inf
    floor_v = int(min(options.min_variants, cap))

    def reserved(v: int) -> float:
        return safety * per_variant * v + slack

    room = usable * float(options.max_infer_fraction)
    variants: int | None = None
    for v in sorted({int(min(p, cap)) for p in options.preferred_variants}, reverse=True):
        if v >= floor_v and reserved(v) <= room:
            variants, why = v, f"{v} variants fit"
            break
    if variants is None and room >= slack:
        fit = math.floor((room - slack) / (safety * per_variant)) if per_variant > 0 else max(floor_v, 1)
        fit = int(min(fit, cap))
        while fit > 0 and reserved(fit) > room:  # guard against rounding in the division above
            fit -= 1
        if fit >= floor_v:
            variants, why = fit, f"only {fit} variants fit"
    if variants is None and reserved(floor_v) <= usable:
        # The minimum inference exceeds inference's share but fits: keep it, training gets what is left.
        variants, why = floor_v, f"only the minimum {floor_v} variant(s) fit beside training"

    if variants is None:
        return Plan(
            remaining_s=remaining,
            reserve_s=reserve,
            train_seconds=0.0,
            train_steps=0,
            infer_variants=floor_v,
            infer_seconds_planned=per_variant * floor_v,
            infer_seconds_reserved=usable,
            safety_factor=safety,
            slack_s=slack,
            n_test_inputs=n_test_inputs,
            fits=False,
            reason=(
                f"even {floor_v} variant(s) x {n_test_inputs} inputs ({reserved(floor_v):.0f}s with safety) "
                f"do not fit in {usable:.0f}s: no training, inference gets all the time before the reserve"
            ),
        )

    infer_reserved = reserved(variants)
    train_seconds = max(0.0, usable - infer_reserved)
    steps = int(math.floor(train_seconds / throughput.train_step_s))
    # floor() of a quotient can round up by one ulp; never plan a step that does not fit.
    while steps > 0 and steps * throughput.train_step_s > train_seconds:
        steps -= 1
    steps_why = f"{steps} steps of {throughput.train_step_s:.3g}s fit in {train_seconds:.0f}s"
    if options.max_steps is not None and steps > options.max_steps:
        steps = int(options.max_steps)
        steps_why = f"{steps} steps (capped by max_steps; {train_seconds:.0f}s allotted)"
    return Plan(
        remaining_s=remaining,
        reserve_s=reserve,
        train_seconds=train_seconds,
        train_steps=steps,
        infer_variants=variants,
        infer_seconds_planned=per_variant * variants,
        infer_seconds_reserved=infer_reserved,
        safety_factor=safety,
        slack_s=slack,
        n_test_inputs=n_test_inputs,
        fits=True,
        reason=(
            f"{why} x {n_test_inputs} inputs in {infer_reserved:.0f}s ({safety:g}x safety + {slack:.0f}s slack); "
            f"{steps_why}; {reserve:.0f}s kept for the final write"
        ),
    )


def replan(
    previous: Plan,
    budget_remaining_s: float,
    throughput: Throughput,
    n_test_inputs: int | None = None,
    options: PlanOptions | None = None,
    *,
    steps_done: int = 0,
) -> Plan:
    """A new plan from the time actually left, when the measured speeds turned out wrong.

    Call it from the training loop when steps run slower than planned (or inference, measured on its first
    round, is slower), with a ``throughput`` holding the speeds actually seen. The new plan never asks for
    more than the old one (at most ``previous.train_steps - steps_done`` further steps and at most
    ``previous.infer_variants`` variants) and gives up training first, then variants, because the submission
    must be written before the deadline while extra steps are only a bonus. The final-write reserve and slack
    stay those of the first plan: time passing does not make writing the submission any quicker.
    """
    if not isinstance(previous, Plan):
        raise ConfigError(f"previous must be a Plan, got {type(previous).__name__}")
    steps_done = _count(steps_done, "steps_done")
    base = options or PlanOptions(safety_factor=previous.safety_factor)
    max_variants = previous.infer_variants
    if base.max_variants is not None:
        max_variants = min(base.max_variants, max_variants)
    steps_left = max(0, previous.train_steps - steps_done)
    max_steps = steps_left if base.max_steps is None else min(base.max_steps, steps_left)
    opts = dataclasses.replace(
        base,
        reserve_s=previous.reserve_s if base.reserve_s is None else base.reserve_s,
        slack_s=previous.slack_s if base.slack_s is None else base.slack_s,
        max_variants=max_variants,
        min_variants=min(base.min_variants, max_variants),
        max_steps=max_steps,
        max_infer_fraction=1.0,  # a replan protects inference: training gives way first, whatever its share
    )
    n = previous.n_test_inputs if n_test_inputs is None else n_test_inputs
    new = plan(budget_remaining_s, throughput, n, opts)
    return dataclasses.replace(
        new, reason=f"replan after {steps_done} steps (was {previous.train_steps} steps, "
        f"{previous.infer_variants} variants): {new.reason}"
    )


def projected_steps(train_step_s: float, hours: float = 12.0, *, infer_s: float, reserve_s: float | None = None) -> int:
    """Training steps the same plan would give in ``hours`` on this machine, with ``infer_s`` set aside.

    ``rehearse`` prints this after a short run so a user sees, before spending a Kaggle submission, roughly
    how many steps a full run will train (the paper's figure is about 15k at batch 384 on 4xL4). ``infer_s``
    is the inference time to set aside (``Plan.infer_seconds_reserved`` scaled to the full test set); for the
    variant choice as well, call ``plan(hours * 3600, throughput, n_test_inputs)``.
    """
    if isinstance(train_step_s, bool) or not isinstance(train_step_s, (int, float)) or not 0 < train_step_s < math.inf:
        raise ConfigError(f"train_step_s must be a positive finite number, got {train_step_s!r}")
    total = _seconds(hours, "hours") * 3600.0
    infer_s = _seconds(infer_s, "infer_s")
    reserve = default_final_write_reserve_s(total) if reserve_s is None else _seconds(reserve_s, "reserve_s")
    return max(0, int(math.floor((total - reserve - infer_s) / train_step_s)))


def inference_rounds(n_variants: int, first_round: int = 8, growth: float = 2) -> list[tuple[int, int]]:
    """Variant ranges ``[(start, stop), ...]`` covering ``[0, n_variants)`` in rounds that grow by ``growth``.

    Inference runs one round over all tasks before the next, so if time runs out mid-way every task already
    has votes from the earlier rounds, instead of half the tasks having 512 votes and the rest none. Small
    first rounds make the first complete vote cheap; growing rounds keep batches large later. The last round
    is cut to end exactly at ``n_variants``. E.g. 512 -> (0,8), (8,24), (24,56), ..., (248,504), (504,512).
    """
    n_variants = _count(n_variants, "n_variants")
    first_round = _count(first_round, "first_round", minimum=1)
    if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not 1.0 <= growth < math.inf:
        raise ConfigError(f"growth must be a finite number >= 1, got {growth!r}")
    rounds = []
    start, size = 0, first_round
    while start < n_variants:
        stop = min(n_variants, start + size)
        rounds.append((start, stop))
        start = stop
        size = max(size, int(size * growth))
    return rounds


# --------------------------------------------------------------------------------------------------------------
# Timeline


@dataclass
class Phase:
    """One named stretch of the run: when it started and ended (seconds from the timeline's origin)."""

    name: str
    start_s: float
    planned_s: float | None = None
    end_s: float | None = None
    ok: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def actual_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.start_s


@dataclass
class Event:
    """An instant worth seeing on the chart (a NaN rollback, a replan), seconds from the origin."""

    name: str
    t_s: float
    data: dict[str, Any] = field(default_factory=dict)


class Timeline:
    """What the run planned and what it did, phase by phase, on the budget's clock.

    Kept so that after a run (or a failed one) the log shows where the time went: ``to_json`` for the record,
    ``plot`` for a Gantt chart with planned and actual bars, the deadline, and events. Times are stored in
    seconds from an origin (the budget's start), so a chart reads "2.3 h into the run", not a Unix time.
    """

    def __init__(self, budget: Budget | None = None, *, clock: Clock | None = None):
        self.clock: Clock = clock or (budget.clock if budget is not None else time.time)
        self.origin = budget.start if budget is not None else self.clock()
        self.deadline_s = None if budget is None else budget.deadline - self.origin
        self.reserve_s = None if budget is None else budget.final_write_reserve_s
        self.phases: list[Phase] = []
        self.events: list[Event] = []

    def now_s(self) -> float:
        """Seconds since the origin on the timeline's clock."""
        return self.clock() - self.origin

    @contextlib.contextmanager
    def phase(self, name: str, planned_s: float | None = None, **info: Any) -> Iterator[Phase]:
        """Record the ``with`` block as phase ``name``; an exception marks it failed and is re-raised.

        The yielded Phase may be annotated (``ph.info["steps"] = 1234``) while it runs.
        """
        if planned_s is not None:
            planned_s = _seconds(planned_s, f"phase {name!r} planned_s", allow_inf=False)
        ph = Phase(name=str(name), start_s=self.now_s(), planned_s=planned_s, info=dict(info))
        self.phases.append(ph)
        try:
            yield ph
        except BaseException:
            ph.ok = False
            raise
        finally:
            ph.end_s = self.now_s()

    def event(self, name: str, **data: Any) -> Event:
        """Record an instant event (e.g. ``event("nan_rollback", step=1200)``)."""
        ev = Event(name=str(name), t_s=self.now_s(), data=dict(data))
        self.events.append(ev)
        return ev

    # -- persistence ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "origin": self.origin,
                "deadline_s": self.deadline_s,
                "reserve_s": self.reserve_s,
                "phases": [dataclasses.asdict(p) | {"actual_s": p.actual_s} for p in self.phases],
                "events": [dataclasses.asdict(e) for e in self.events],
            }
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], clock: Clock | None = None) -> Timeline:
        try:
            tl = cls(clock=clock or (lambda: float(data["origin"])))
            tl.origin = float(data["origin"])
            tl.deadline_s = data.get("deadline_s")
            tl.reserve_s = data.get("reserve_s")
            tl.phases = [
                Phase(
                    name=p["name"], start_s=p["start_s"], planned_s=p.get("planned_s"), end_s=p.get("end_s"),
                    ok=p.get("ok", True), info=dict(p.get("info", {})),
                )
                for p in data["phases"]
            ]
            tl.events = [Event(name=e["name"], t_s=e["t_s"], data=dict(e.get("data", {}))) for e in data["events"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad timeline dict: {exc!r}") from None
        return tl

    def to_json(self, path: str | Path) -> Path:
        """Write the timeline as JSON atomically, so a reader (or a killed run) never sees half a file."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        _atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
        return path

    @classmethod
    def from_json(cls, path: str | Path, clock: Clock | None = None) -> Timeline:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read timeline {path}: {exc}") from None
        return cls.from_dict(data, clock=clock)

    def plot(self, path: str | Path) -> Path | None:
        """Write a Gantt chart PNG: planned (hatched) and actual (solid) bars per phase, the deadline, events.

        matplotlib is optional at run time (Kaggle has it, a slim install may not): without it this logs one
        line and returns None, because a missing chart must never cost the submission. It draws on a bare Agg
        canvas rather than through pyplot, so a notebook's own backend and figures are left alone.
        """
        path = Path(path)
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            logger.warning("matplotlib is not installed; skipping the timeline plot %s", path)
            return None

        now = self.now_s()
        span = max(
            [1.0, now if not self.phases else 0.0, self.deadline_s or 0.0]
            + [p.start_s + (p.planned_s or 0.0) for p in self.phases]
            + [p.end_s if p.end_s is not None else now for p in self.phases]
            + [e.t_s for e in self.events]
        )
        unit, scale = ("h", 3600.0) if span > 3 * 3600 else ("min", 60.0) if span > 180 else ("s", 1.0)

        rows = len(self.phases) + (1 if self.events else 0)
        fig = Figure(figsize=(10, 1.2 + 0.45 * max(rows, 1)), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for i, p in enumerate(self.phases):
            if p.planned_s is not None:
                ax.barh(i, p.planned_s / scale, left=p.start_s / scale, height=0.8, color="none",
                        edgecolor="0.4", hatch="//", label="planned" if i == 0 else None)
            end = p.end_s if p.end_s is not None else now
            over = p.planned_s is not None and end - p.start_s > p.planned_s
            colour = "tab:red" if not p.ok else "tab:orange" if over else "tab:blue"
            ax.barh(i, (end - p.start_s) / scale, left=p.start_s / scale, height=0.45, color=colour,
                    label="actual" if i == 0 else None)
        if self.events:
            y = len(self.phases)
            ax.plot([e.t_s / scale for e in self.events], [y] * len(self.events), "kv", label="events")
            for e in self.events:
                ax.annotate(e.name, (e.t_s / scale, y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7, rotation=30)
        if self.deadline_s is not None:
            ax.axvline(self.deadline_s / scale, color="tab:red", linewidth=1.5, label="deadline")
            if self.reserve_s:
                ax.axvline((self.deadline_s - self.reserve_s) / scale, color="tab:red", linestyle="--",
                           linewidth=1, label="final-write reserve")
        labels = [p.name for p in self.phases] + (["events"] if self.events else [])
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel(f"time since start ({unit})")
        ax.set_xlim(0, span * 1.03 / scale)
        if labels:
            ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
        return path


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars via ``.item()``, non-finite floats as strings ('nan'), others via str()."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write via a temp file in the same folder and ``os.replace``: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the output is meant to be read by others
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
