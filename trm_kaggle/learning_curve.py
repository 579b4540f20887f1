"""Learning curves: accuracy (and loss) against training steps, as a PNG beside the submission.

    points = history_points(summary.history)            # from Trainer.train(): running loss and train exact
    plot_learning_curve("learning_curve.png", points)

A point is a dict with "step" and any of: "train_exact" (train-pair exact accuracy, 0..1), "heldout_pass2"
(held-out pass@2, 0..1), "loss". Accuracies share the left axis, loss gets the right one, so one picture shows
whether training fits its pairs and whether that carries over to the test inputs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

log = logging.getLogger("trm_kaggle.learning_curve")

SERIES = {  # key: (legend label, axis, style)
    "train_exact": ("train-pair exact accuracy", "acc", "o-"),
    "heldout_pass2": ("held-out pass@2", "acc", "s-"),
    "loss": ("training loss", "loss", "-"),
}


def history_points(history: Sequence[Mapping[str, Any]], max_points: int = 200) -> list[dict[str, float]]:
    """Thin a Trainer history (StepStats dicts) to at most `max_points` points of running means:
    loss, and exact accuracy of the rows that halted on those steps (training batches, augmented and
    translated as trained), so noisy single steps do not hide the trend."""
    if not history:
        return []
    window = max(1, len(history) // max_points)
    points = []
    for lo in range(0, len(history), window):
        chunk = history[lo:lo + window]
        halted = sum(int(h.get("halted", 0)) for h in chunk)
        point = {"step": float(chunk[-1]["step"]), "loss": sum(float(h["loss"]) for h in chunk) / len(chunk)}
        if halted:
            point["train_exact"] = sum(int(h.get("exact", 0)) for h in chunk) / halted
        points.append(point)
    return points


def plot_learning_curve(path: str | os.PathLike, points: Iterable[Mapping[str, Any]], title: str = "",
                        note: str = "") -> Path | None:
    """Write the PNG; returns its path, or None when matplotlib is missing or there is nothing to draw.

    Draws on a bare Agg canvas (not pyplot), so a notebook's backend and figures are left alone.
    """
    points = sorted((dict(p) for p in points if "step" in p), key=lambda p: p["step"])
    if not points:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed; skipping the learning curve %s", path)
        return None

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    acc = fig.add_subplot(1, 1, 1)
    loss_axis = None
    handles = []
    for key, (label, axis, style) in SERIES.items():
        xs = [p["step"] for p in points if p.get(key) is not None]
        ys = [p[key] for p in points if p.get(key) is not None]
        if not xs:
            continue
        if axis == "loss":
            loss_axis = loss_axis or acc.twinx()
            handles += loss_axis.plot(xs, ys, style, color="0.6", linewidth=1, label=label)
        else:
            handles += acc.plot(xs, ys, style, markersize=4, label=label)
    acc.set_xlabel("training step")
    acc.set_ylabel("accuracy")
    acc.set_ylim(-0.02, 1.02)
    acc.grid(alpha=0.3)
    if loss_axis is not None:
        loss_axis.set_ylabel("loss")
    if handles:
        acc.legend(handles=handles, loc="upper left", fontsize=8)
    if title:
        acc.set_title(title, fontsize=10)
    note_lines = textwrap.wrap(note, 150)
    if note_lines:
        fig.text(0.01, 0.01, "\n".join(note_lines), fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03 * len(note_lines), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".curve.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
