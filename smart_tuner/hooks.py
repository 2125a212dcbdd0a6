"""What the trainer tells its hooks, and what hooks may ask of it.

The trainer calls every hook after each step (:class:`StepStats`) and after each evaluation
(:class:`EvalStats`). A hook returns :class:`Decision` objects; it never touches the model, the optimizer or
the trainer. The trainer is the only writer of each control: it resolves two requests for one control in the
same round by the hooks' ``priority`` (higher wins: an emergency beats a plateau), applies the winner, and
records every request, the losers too, as an :class:`Event` that it hands to every hook's ``on_event``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Controls a decision may name. "lr" and "ga_weight" carry a value; the others are actions:
# skip_update (do not apply this step's gradients), rollback (restore the last healthy model and optimizer
# state), stop (end the run as stopped).
CONTROLS = ("lr", "ga_weight", "skip_update", "rollback", "stop")


@dataclass
class StepStats:
    """One training step, read before the optimizer applies it (so a hook may still skip the update)."""

    step: int  # 1-based index of this update
    epoch: int
    loss: float
    mel: float
    postnet: float
    gate: float
    ga: float  # unweighted guided-attention term
    grad_norm: float  # total gradient norm before clipping
    lr: float
    ga_weight: float
    finite: bool  # loss and gradient norm are finite
    step_time: float  # seconds of the forward/backward just done
    diagonality: float = float("nan")  # of this training batch's (teacher-forced) attention
    module_grad_norms: dict[str, float] = field(default_factory=dict)  # per top-level module, before clipping


@dataclass
class EvalStats:
    """One evaluation on the validation set: teacher-forced losses and alignment, free-running alignment."""

    step: int
    val_loss: float  # mel + postnet + gate: the reconstruction objective, independent of ga_weight
    val_mel: float
    val_postnet: float
    val_gate: float
    val_ga: float
    diagonality: float
    focus: float
    monotonicity: float
    coverage: float
    infer_diagonality: float
    infer_focus: float
    infer_monotonicity: float
    infer_coverage: float
    infer_stop_rate: float  # share of free-running sentences whose stop gate fired before max steps
    lr: float
    ga_weight: float
    train_loss: float  # mean training loss since the previous evaluation
    elapsed: float  # seconds of training so far (evaluations excluded)
    alignment: Any = field(default=None, repr=False)  # (D, N) CPU tensor of one validation sentence
    # Denormalized log-mels (n_mels, frames), CPU: "target" and "teacher_forced" (postnet output) of the sentence
    # of ``alignment``; "free_running" of the first free-running sentence, cut at its stop. For previews.
    mels: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("alignment")
        data.pop("mels")
        return data


@dataclass
class Decision:
    control: str  # one of CONTROLS
    value: float | None
    reason: str
    trigger: float | None = None  # the statistic that caused it (a loss, a gradient norm, a diagonality)


@dataclass
class Event:
    step: int
    source: str  # the hook (or "trainer") that asked
    control: str
    old: float | None
    new: float | None
    reason: str
    trigger: float | None
    applied: bool  # False when a higher-priority request for the same control won

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_alarm(self) -> bool:
        return is_alarm(self.control, self.reason, self.applied)


def is_alarm(control: str, reason: str, applied: bool) -> bool:
    """An applied emergency, skipped update or rollback: what debug bundles and alerts react to.
    By convention an emergency decision's reason starts with "emergency"."""
    return applied and (control in ("skip_update", "rollback") or reason.startswith("emergency"))


@dataclass
class RunInfo:
    run_dir: Path
    config: dict[str, Any]
    device: str
    parameters: int
    train_size: int
    val_size: int
    start_step: int  # > 0 when resumed


@dataclass
class TrainResult:
    status: str  # "completed" | "stopped" | "failed"
    step: int
    reason: str
    run_dir: Path
    last_eval: EvalStats | None
    best_val_loss: float | None


class Hook:
    """Base class: every method is optional. ``name`` keys the hook's state in checkpoints."""

    name = "hook"
    priority = 0

    def on_train_start(self, info: RunInfo) -> None:
        pass

    def on_step(self, stats: StepStats) -> list[Decision]:
        return []

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        return []

    def on_event(self, event: Event) -> None:
        pass

    def on_train_end(self, result: TrainResult) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
