"""The error every part of training raises when the run cannot go on."""

from __future__ import annotations

from ..errors import UserError


class TrainingError(UserError, RuntimeError):
    """The run cannot go on; the message says why."""
