"""Typed errors a user can cause. Each says what is wrong and, where it can, which task and field."""

from __future__ import annotations


class TrmKaggleError(Exception):
    """Base class: the CLI turns these into a one-line message and exit code 2."""


class TaskFileError(TrmKaggleError):
    """A challenges or solutions file cannot be read at all (missing, not JSON, wrong top-level type)."""


class TaskValidationError(TrmKaggleError):
    """One task is malformed. The run goes on without it; the task still gets fallback attempts."""

    def __init__(self, task_id: str, field: str, reason: str):
        self.task_id = task_id
        self.field = field
        self.reason = reason
        super().__init__(f"task {task_id!r}: {field}: {reason}")


class CheckpointError(TrmKaggleError):
    """A checkpoint is missing, truncated, corrupt, or does not match its manifest."""


class SubmissionError(TrmKaggleError):
    """A submission file is malformed or does not cover the challenges."""


class ConfigError(TrmKaggleError):
    """An option or configuration value is out of range."""
