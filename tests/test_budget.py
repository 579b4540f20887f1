"""Tests for trm_kaggle.budget: every one drives a fake clock, so nothing sleeps and nothing depends on real time."""

from __future__ import annotations

import gzip
import json
import logging
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trm_kaggle.budget import (
    Budget,
    Plan,
    PlanOptions,
    Throughput,
    Timeline,
    default_final_write_reserve_s,
    inference_rounds,
    measure,
    parse_duration,
    plan,
    projected_steps,
    replan,
)
from trm_kaggle.errors import ConfigError

HOUR = 3600.0
# The paper's Kaggle figures (TRM_FACTS §8.6): about 15k steps at batch 384 fit in 12 h on 4xL4 once roughly an
# hour of inference (512 variants) is set aside. These speeds reproduce that.
L4_STEP_S = 2.5
EVAL2_TEST_INPUTS = 172  # test inputs of arc-agi_evaluation2, counted in test_real_eval2_test_inputs_...
L4_VARIANT_S = HOUR / (EVAL2_TEST_INPUTS * 512)

FAST = settings(max_examples=150, deadline=None)  # deadline=None: the test machine's 2 cores are shared


class FakeClock:
    """A clock the test moves by hand. Starts at a Unix-like time so absolute deadlines look real."""

    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _arc_data_file(name: str) -> Path | None:
    for folder in (Path(__file__).resolve().parents[1] / "sample_data", Path("/work/shared/arc-data")):
        if (folder / name).exists():
            return folder / name
    return None


# -- Budget ------------------------------------------------------------------------------------------------------


def test_budget_from_duration_counts_down_as_the_clock_moves():
    clock = FakeClock()
    b = Budget.from_duration(100.0, clock=clock, reserve_s=0)
    assert b.deadline == clock.t + 100
    assert (b.remaining(), b.elapsed(), b.expired()) == (100, 0, False)
    clock.advance(30)
    assert (b.remaining(), b.elapsed(), b.expired()) == (70, 30, False)
    clock.advance(70)
    assert b.remaining() == 0 and b.expired()


def test_remaining_never_goes_negative_after_the_deadline():
    clock = FakeClock()
    b = Budget.from_duration("1m", clock=clock)
    clock.advance(1000)
    assert b.remaining() == 0 and b.work_remaining() == 0 and b.expired()


def test_budget_from_an_absolute_deadline_expires_exactly_at_it():
    clock = FakeClock(t=50.0)
    b = Budget(80.0, clock=clock, reserve_s=5)
    assert b.remaining() == 30 and b.work_remaining() == 25 and b.work_deadline == 75
    clock.advance(29.999)
    assert not b.expired()
    clock.advance(0.001)
    assert b.expired()


def test_final_write_reserve_is_60s_for_long_runs_and_shrinks_for_short_ones():
    assert Budget.from_duration("12h", clock=FakeClock()).final_write_reserve_s == 60
    short = Budget.from_duration(100, clock=FakeClock()).final_write_reserve_s
    assert 0 < short < 10
    assert default_final_write_reserve_s(0) == 0
    assert Budget.from_duration(100, clock=FakeClock(), reserve_s=7).final_write_reserve_s == 7


@FAST
@given(
    total=st.floats(0, 50 * HOUR),
    reserve=st.floats(0, 600),
    wait=st.floats(0, 60 * HOUR),
    own=st.one_of(st.floats(0, 100 * HOUR), st.just(math.inf)),
    fraction=st.floats(0, 1),
)
def test_child_deadlines_never_exceed_the_parents_work_deadline(total, reserve, wait, own, fraction):
    clock = FakeClock()
    root = Budget.from_duration(total, clock=clock, reserve_s=reserve)
    clock.advance(wait)
    kid = root.child("train", own)
    grandkid = kid.child("epoch", own / 2)
    upto = root.until(fraction)
    for b in (kid, grandkid, upto):
        assert b.deadline <= root.deadline and b.deadline <= root.work_deadline
    assert grandkid.deadline <= kid.deadline


def test_child_ends_at_its_own_seconds_when_the_parent_has_more_time():
    clock = FakeClock()
    root = Budget.from_duration("12h", clock=clock)
    clock.advance(HOUR)
    train = root.child("train", 2 * HOUR)
    assert train.deadline == clock.t + 2 * HOUR and train.remaining() == 2 * HOUR
    assert train.name == "train" and train.clock is clock


def test_child_cannot_eat_the_final_write_reserve():
    clock = FakeClock()
    root = Budget.from_duration(1000, clock=clock, reserve_s=60)
    infer = root.child("infer", math.inf)
    assert infer.deadline == root.deadline - 60
    clock.advance(940)
    assert infer.expired() and not root.expired() and root.remaining() == 60


def test_until_takes_a_fraction_of_the_working_span_or_an_absolute_time():
    clock = FakeClock(t=0.0)
    root = Budget(1100.0, clock=clock, reserve_s=100)
    clock.advance(200)  # a fraction counts from the start, so a late rank gets the same point
    assert root.until(0.5).deadline == 500
    assert root.until(1.0).deadline == root.work_deadline
    assert root.until(at=0.5).deadline == 0.5  # on a fake clock near 0 a clock time can look like a fraction
    assert root.until(at=5000.0).deadline == root.work_deadline
    for bad in ({}, {"fraction": 0.5, "at": 3.0}, {"fraction": 1.5}, {"fraction": -0.1}, {"at": math.nan}):
        with pytest.raises(ConfigError):
            root.until(**bad)


def test_budget_dict_gives_another_rank_the_same_deadline():
    clock = FakeClock()
    root = Budget.from_duration("11h45m", clock=clock, name="kaggle")
    message = json.loads(json.dumps(root.to_dict()))  # what a broadcast would carry
    clock.advance(7)  # the other rank reads it a little later, on the same wall clock
    other = Budget.from_dict(message, clock=clock)
    assert other.deadline == root.deadline
    assert other.final_write_reserve_s == root.final_write_reserve_s
    assert other.remaining() == root.remaining() and other.name == "kaggle"


@pytest.mark.parametrize(
    "bad",
    [None, [], {"deadline": 1.0}, {"start": 0, "deadline": "soon", "final_write_reserve_s": 1}],
)
def test_budget_from_dict_rejects_a_malformed_message(bad):
    with pytest.raises(ConfigError):
        Budget.from_dict(bad, clock=FakeClock())


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "12 hours", True])
def test_budget_rejects_negative_or_unreadable_durations(bad):
    with pytest.raises(ConfigError):
        Budget.from_duration(bad, clock=FakeClock())


# -- parse_duration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("12h", 12 * HOUR), ("90m", 5400), ("45s", 45), ("1h30m", 5400), ("600", 600), ("1h30m15s", 5415),
        ("1.5h", 5400), ("0.5m", 30), (" 2H ", 7200), ("2m30s", 150), ("0", 0), (600, 600), (1.5, 1.5),
    ],
)
def test_parse_duration_reads_hours_minutes_seconds_and_bare_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "h", "12x", "-5", "1m1h", "1h1h", "12 hours", "1h30", "abc", "1e3", None, [], True, -3, math.nan]
)
def test_parse_duration_rejects_anything_else_with_a_config_error(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_parse_duration_error_names_the_accepted_forms():
    with pytest.raises(ConfigError, match=r"'12x'.*1h30m"):
        parse_duration("12x")


# -- Throughput and measure --------------------------------------------------------------------------------------


def test_measure_returns_the_median_and_does_not_time_the_warmup():
    clock = FakeClock()
    costs = iter([100.0, 100.0, 3.0, 1.0, 2.0, 50.0, 2.0])  # two slow warm-up calls, then one stall

    def step():
        clock.advance(next(costs))

    assert measure(step, warmup=2, repeats=5, clock=clock) == 2.0


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"repeats": 2.5}])
def test_measure_rejects_impossible_repeat_counts(kwargs):
    with pytest.raises(ConfigError):
        measure(lambda: None, clock=FakeClock(), **kwargs)


@pytest.mark.parametrize("field", ["train_step_s", "infer_variant_s"])
@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_throughput_rejects_non_positive_speeds(field, bad):
    good = {"train_step_s": 1.0, "infer_variant_s": 0.1}
    with pytest.raises(ConfigError):
        Throughput(**(good | {field: bad}))


def test_throughput_dict_round_trips():
    tp = Throughput(2.5, 0.04, train_samples=10, infer_samples=4)
    assert Throughput.from_dict(json.loads(json.dumps(tp.to_dict()))) == tp


# -- plan --------------------------------------------------------------------------------------------------------


def test_real_eval2_test_inputs_and_l4_speeds_give_the_papers_12_hour_plan():
    path = _arc_data_file("arc-agi_evaluation2_challenges.json.gz")
    if path is None:
        pytest.skip("ARC data not available")
    with gzip.open(path, "rt") as f:
        n_inputs = sum(len(task["test"]) for task in json.load(f).values())
    assert n_inputs == EVAL2_TEST_INPUTS
    p = plan(12 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), n_inputs)
    assert p.fits and p.infer_variants == 512
    assert 14_000 <= p.train_steps <= 16_000  # the paper: "about 15k optimiser steps"


def test_planner_picks_512_variants_when_they_fit():
    p = plan(12 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), EVAL2_TEST_INPUTS)
    assert p.infer_variants == 512 and p.fits and "512 variants fit" in p.reason
    assert p.infer_seconds_reserved == pytest.approx(1.5 * HOUR + p.slack_s)
    assert p.train_seconds == pytest.approx(12 * HOUR - p.reserve_s - p.infer_seconds_reserved)
    assert p.train_steps == math.floor(p.train_seconds / L4_STEP_S)


def test_planner_falls_back_to_256_when_512_does_not_fit():
    # 512 variants take 1 h raw, 1.5 h with safety; 256 take 0.75 h with safety.
    p = plan(1.2 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), EVAL2_TEST_INPUTS, PlanOptions(max_infer_fraction=1.0))
    assert p.infer_variants == 256 and p.fits and p.train_steps > 0


def test_planner_runs_as_many_variants_as_fit_below_256():
    p = plan(0.5 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), EVAL2_TEST_INPUTS, PlanOptions(max_infer_fraction=1.0))
    assert 1 <= p.infer_variants < 256 and p.fits
    assert p.infer_seconds_planned * p.safety_factor + p.slack_s <= p.remaining_s - p.reserve_s
    # one more variant would not have fitted
    per_variant = EVAL2_TEST_INPUTS * L4_VARIANT_S
    assert (p.infer_variants + 1) * per_variant * 1.5 + p.slack_s > p.remaining_s - p.reserve_s


def test_planner_keeps_inference_to_its_share_so_a_short_run_still_trains():
    p = plan(0.5 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), EVAL2_TEST_INPUTS)  # default share: half
    usable = p.remaining_s - p.reserve_s
    assert p.fits and p.infer_seconds_reserved <= 0.5 * usable and p.train_steps > 0
    per_variant = EVAL2_TEST_INPUTS * L4_VARIANT_S
    assert (p.infer_variants + 1) * per_variant * 1.5 + p.slack_s > 0.5 * usable


def test_planner_keeps_the_minimum_inference_even_beyond_its_share():
    tp = Throughput(L4_STEP_S, infer_variant_s=2.0)  # one variant: 172 x 2 s x 1.5 = 516 s of 900 s usable
    p = plan(900 + 45, tp, EVAL2_TEST_INPUTS, PlanOptions(reserve_s=45, slack_s=0))
    assert p.fits and p.infer_variants == 1 and "minimum" in p.reason
    assert p.train_seconds == pytest.approx(900 - 516)


def test_planner_gives_training_nothing_when_even_one_variant_does_not_fit():
    tp = Throughput(L4_STEP_S, infer_variant_s=10.0)
    p = plan(600, tp, EVAL2_TEST_INPUTS)
    assert not p.fits and p.train_steps == 0 and p.train_seconds == 0 and p.infer_variants == 1
    assert p.infer_seconds_reserved == p.remaining_s - p.reserve_s
    assert "no training" in p.reason


def test_planner_never_runs_more_variants_than_a_task_has():
    p = plan(12 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), EVAL2_TEST_INPUTS, PlanOptions(max_variants=300))
    assert p.infer_variants == 300
    p = plan(12 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), EVAL2_TEST_INPUTS, PlanOptions(max_variants=40))
    assert p.infer_variants == 40


def test_planner_caps_training_at_the_requested_max_steps():
    p = plan(12 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), EVAL2_TEST_INPUTS, PlanOptions(max_steps=500))
    assert p.train_steps == 500 and "max_steps" in p.reason


def test_planner_treats_a_late_caller_as_having_no_time():
    p = plan(-5.0, Throughput(1.0, 0.01), 10)
    assert p.remaining_s == 0 and p.train_steps == 0 and not p.fits


@pytest.mark.parametrize(
    "kwargs",
    [{"safety_factor": 0.9}, {"safety_factor": math.nan}, {"slack_s": -1}, {"reserve_s": -1},
     {"preferred_variants": ()}, {"preferred_variants": (512, 0)}, {"min_variants": 0}, {"max_variants": 0},
     {"max_steps": -1}],
)
def test_plan_options_reject_values_that_would_plan_past_the_deadline(kwargs):
    with pytest.raises(ConfigError):
        PlanOptions(**kwargs)


def test_plan_rejects_a_missing_or_unreadable_time():
    with pytest.raises(ConfigError):
        plan(math.nan, Throughput(1.0, 0.01), 10)
    with pytest.raises(ConfigError):
        plan(100.0, Throughput(1.0, 0.01), -1)


def test_plan_dict_is_plain_json():
    p = plan(HOUR, Throughput(1.0, 0.01), 10)
    assert json.loads(json.dumps(p.to_dict())) == p.to_dict()
    assert Plan(**p.to_dict()) == p


@FAST
@given(
    remaining=st.floats(0, 13 * HOUR),
    step_s=st.floats(1e-3, 100.0),
    variant_s=st.floats(1e-5, 10.0),
    n_inputs=st.integers(0, 500),
    safety=st.floats(1.0, 4.0),
    max_variants=st.one_of(st.none(), st.integers(1, 1000)),
    max_steps=st.one_of(st.none(), st.integers(0, 100_000)),
)
def test_planner_never_plans_past_the_deadline(remaining, step_s, variant_s, n_inputs, safety, max_variants, max_steps):
    opts = PlanOptions(safety_factor=safety, max_variants=max_variants, max_steps=max_steps)
    p = plan(remaining, Throughput(step_s, variant_s), n_inputs, opts)
    assert p.infer_variants >= 1
    assert max_variants is None or p.infer_variants <= max_variants
    assert max_steps is None or p.train_steps <= max_steps
    assert p.train_steps >= 0 and p.train_steps * step_s <= p.train_seconds + 1e-9
    if p.fits:
        assert p.train_seconds + p.infer_seconds_planned * safety + p.slack_s + p.reserve_s <= remaining + 1e-6
    else:
        assert p.train_steps == 0 and p.infer_variants == 1
        assert p.train_seconds + p.infer_seconds_reserved + p.reserve_s <= max(remaining, p.reserve_s) + 1e-6


# -- replan ------------------------------------------------------------------------------------------------------


def test_replan_after_a_10x_slower_step_still_leaves_inference_time():
    clock = FakeClock()
    budget = Budget.from_duration("12h", clock=clock)
    measured = Throughput(L4_STEP_S, L4_VARIANT_S)
    first = plan(budget.remaining(), measured, EVAL2_TEST_INPUTS, PlanOptions(reserve_s=budget.final_write_reserve_s))
    clock.advance(200 * 10 * L4_STEP_S)  # 200 steps, each ten times slower than measured
    actual = Throughput(10 * L4_STEP_S, L4_VARIANT_S)
    second = replan(first, budget.remaining(), actual, steps_done=200)
    assert second.fits and second.infer_variants == first.infer_variants
    assert second.train_steps < first.train_steps - 200
    assert second.reserve_s == first.reserve_s
    # what is left of training, at the slow speed, still ends before inference's share of the time
    slow_training_s = second.train_steps * actual.train_step_s
    assert slow_training_s + second.infer_seconds_reserved + second.reserve_s <= budget.remaining()
    assert "replan after 200 steps" in second.reason


def test_replan_gives_up_training_before_inference_variants():
    measured = Throughput(L4_STEP_S, L4_VARIANT_S)
    first = plan(3 * HOUR, measured, EVAL2_TEST_INPUTS, PlanOptions(max_infer_fraction=1.0))
    assert first.infer_variants == 512 and first.train_steps > 0
    slower = Throughput(L4_STEP_S, 1.8 * L4_VARIANT_S)  # 512 variants now need 2.7 h with safety
    second = replan(first, 2.9 * HOUR, slower)
    assert second.infer_variants == 512 and second.train_steps < first.train_steps
    much_slower = Throughput(L4_STEP_S, 3 * L4_VARIANT_S)  # now only 256 fit, and no time for training
    third = replan(second, 2.9 * HOUR, much_slower)
    assert third.infer_variants == 256 and third.fits


def test_replan_never_asks_for_more_than_the_first_plan():
    first = plan(HOUR, Throughput(1.0, 0.01), 10, PlanOptions(max_variants=100))
    faster = Throughput(0.1, 0.001)
    second = replan(first, HOUR, faster, steps_done=10)
    assert second.infer_variants <= first.infer_variants
    assert second.train_steps <= first.train_steps - 10


# -- inference_rounds --------------------------------------------------------------------------------------------


def test_inference_rounds_for_512_variants_double_and_end_exactly_at_512():
    assert inference_rounds(512) == [(0, 8), (8, 24), (24, 56), (56, 120), (120, 248), (248, 504), (504, 512)]


@FAST
@given(n=st.integers(0, 5000), first=st.integers(1, 64), growth=st.sampled_from([1, 1.5, 2, 3]))
def test_inference_rounds_cover_every_variant_once_in_increasing_order(n, first, growth):
    rounds = inference_rounds(n, first_round=first, growth=growth)
    covered = [v for start, stop in rounds for v in range(start, stop)]
    assert covered == list(range(n))
    assert all(stop > start for start, stop in rounds)
    sizes = [stop - start for start, stop in rounds[:-1]]
    assert sizes == sorted(sizes)  # rounds only grow, apart from the cut last one


@pytest.mark.parametrize("kwargs", [{"n_variants": -1}, {"n_variants": 8, "first_round": 0},
                                    {"n_variants": 8, "growth": 0.5}])
def test_inference_rounds_reject_sizes_that_would_never_finish(kwargs):
    with pytest.raises(ConfigError):
        inference_rounds(**kwargs)


# -- projected_steps ---------------------------------------------------------------------------------------------


def test_projected_steps_match_the_planner_for_a_12_hour_run():
    p = plan(12 * HOUR, Throughput(L4_STEP_S, L4_VARIANT_S), EVAL2_TEST_INPUTS)
    assert projected_steps(L4_STEP_S, infer_s=p.infer_seconds_reserved) == p.train_steps
    assert projected_steps(L4_STEP_S, hours=1, infer_s=2 * HOUR) == 0
    with pytest.raises(ConfigError):
        projected_steps(0.0, infer_s=0)


# -- Timeline ----------------------------------------------------------------------------------------------------


def _sample_timeline(clock: FakeClock) -> Timeline:
    budget = Budget.from_duration("2h", clock=clock)
    tl = Timeline(budget)
    with tl.phase("load", planned_s=60):
        clock.advance(45)
    with tl.phase("train", planned_s=3600) as ph:
        clock.advance(1200)
        tl.event("nan_rollback", step=1234, loss=math.nan)
        clock.advance(2600)
        ph.info["steps"] = 4000
    with tl.phase("infer", planned_s=1800, variants=512):
        clock.advance(1500)
    return tl


def test_timeline_records_planned_and_actual_seconds_on_the_budget_clock():
    clock = FakeClock()
    tl = _sample_timeline(clock)
    load, train, infer = tl.phases
    assert (load.start_s, load.actual_s, load.planned_s) == (0, 45, 60)
    assert (train.start_s, train.actual_s, train.info) == (45, 3800, {"steps": 4000})
    assert infer.info == {"variants": 512} and all(p.ok for p in tl.phases)
    assert [(e.name, e.t_s, e.data["step"]) for e in tl.events] == [("nan_rollback", 1245, 1234)]
    assert tl.deadline_s == 2 * HOUR and tl.reserve_s == 60


def test_timeline_marks_a_failed_phase_and_lets_the_error_through():
    clock = FakeClock()
    tl = Timeline(clock=clock)
    with pytest.raises(RuntimeError):
        with tl.phase("train"):
            clock.advance(5)
            raise RuntimeError("CUDA out of memory")
    assert not tl.phases[0].ok and tl.phases[0].actual_s == 5


def test_timeline_json_round_trips_and_leaves_no_temp_file(tmp_path):
    tl = _sample_timeline(FakeClock())
    path = tl.to_json(tmp_path / "runs" / "timeline.json")
    assert [p.name for p in tmp_path.joinpath("runs").iterdir()] == ["timeline.json"]
    data = json.loads(path.read_text())  # strict JSON: the NaN loss became a string
    assert data["events"][0]["data"]["loss"] == "nan"
    again = Timeline.from_json(path)
    assert again.to_dict() == tl.to_dict()


def test_timeline_json_replaces_an_old_file_whole(tmp_path):
    path = tmp_path / "timeline.json"
    path.write_text("old")
    _sample_timeline(FakeClock()).to_json(path)
    assert json.loads(path.read_text())["phases"][0]["name"] == "load"


def test_timeline_from_a_bad_file_raises_a_config_error(tmp_path):
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(ConfigError):
        Timeline.from_json(tmp_path / "t.json")
    with pytest.raises(ConfigError):
        Timeline.from_dict({"origin": 0.0})


def test_timeline_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    tl = _sample_timeline(FakeClock())
    with tl.phase("write"):  # a phase still running when plotted is drawn up to now
        out = tl.plot(tmp_path / "timeline.png")
    assert out == tmp_path / "timeline.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["timeline.png"]


def test_timeline_plot_skips_with_one_log_line_without_matplotlib(tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    with caplog.at_level(logging.INFO, logger="trm_kaggle.budget"):
        assert _sample_timeline(FakeClock()).plot(tmp_path / "timeline.png") is None
    assert len(caplog.records) == 1 and "matplotlib" in caplog.records[0].getMessage()
    assert not (tmp_path / "timeline.png").exists()
