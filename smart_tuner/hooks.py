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
from typing import Any, ClassVar

# Controls a decision may name besides the steerable loss weights of the model family (``ga_weight`` for
# Tacotron 2, see smart_tuner.tts): "lr" carries a value like a weight does; the others are actions:
# skip_update (do not apply this step's gradients), rollback (restore the last healthy model and optimizer
# state), stop (end the run as stopped).
CONTROLS = ("lr", "skip_update", "rollback", "stop")


@dataclass
class StepStats:
    """One training step, read before the optimizer applies it (so a hook may still skip the update)."""

    step: int  # 1-based index of this update
    epoch: int
    loss: float  # the weighted total that was back-propagated
    losses: dict[str, float]  # the model family's named terms, unweighted (Tacotron 2: mel, postnet, gate, ga)
    grad_norm: float  # total gradient norm before clipping
    lr: float
    loss_weights: dict[str, float]  # the steerable loss weights in force (Tacotron 2: ga_weight)
    finite: bool  # loss and gradient norm are finite
    step_time: float  # seconds of the forward/backward just done
    diagonality: float = float("nan")  # of this training batch's (teacher-forced) attention
    module_grad_norms: dict[str, float] = field(default_factory=dict)  # per top-level module, before clipping
    frames: int = 0  # real (unpadded) mel frames in this batch

    def scalars(self) -> dict[str, float]:
        """Every number of the step, flat: loss, each loss term, grad_norm, lr, each loss weight, diagonality,
        step_time, frames, and ``grad_norm.<module>`` per top-level module."""
        return {"loss": self.loss, **self.losses, "grad_norm": self.grad_norm, "lr": self.lr, **self.loss_weights,
                "diagonality": self.diagonality, "step_time": self.step_time, "frames": self.frames,
                **{f"grad_norm.{k}": v for k, v in self.module_grad_norms.items()}}


@dataclass
class EvalStats:
    """One evaluation on the validation set: teacher-forced losses and alignment, free-running alignment."""

    step: int
    val_loss: float  # the family's reconstruction terms summed (Tacotron 2: mel + postnet + gate), weight-free
    val_losses: dict[str, float]  # every named term, unweighted; flat as ``val_<name>``
    diagonality: float
    focus: float
    monotonicity: float
    coverage: float
    free_running_diagonality: float
    free_running_focus: float
    free_running_monotonicity: float
    free_running_coverage: float
    free_running_stop_rate: float  # share of free-running sentences whose stop gate fired before max steps
    lr: float
    loss_weights: dict[str, float]
    train_loss: float  # mean training loss since the previous evaluation
    elapsed: float  # seconds of training so far (evaluations excluded)
    # Throughput as NVIDIA DeepLearningExamples counts it: real (unpadded) mel frames per second of training wall
    # time (batching, forward, backward, hooks, optimizer) since the previous evaluation.
    frames_per_second: float = float("nan")
    steps_per_second: float = float("nan")  # training steps per second of the same wall time
    # ||w - w_prev|| / ||w_prev|| over every weight, w_prev as of the previous evaluation (or the start or a
    # rollback), divided by the steps in between: how far the rate moves the model per step (the learning-rate
    # adapter's too-large / too-small rules read it).
    weight_change: float = float("nan")
    # The preview payload, never written to metrics.jsonl:
    alignment: Any = field(default=None, repr=False)  # (D, N) CPU tensor of one validation sentence
    # Denormalized log-mels (n_mels, frames), CPU: "target" and "teacher_forced" (the final prediction) of the
    # sentence of ``alignment``; "free_running" of the first free-running sentence, cut at its stop.
    mels: dict[str, Any] | None = field(default=None, repr=False)

    # What a one-line summary of an evaluation shows (study attributes, alerts, progress).
    SUMMARY: ClassVar[tuple[str, ...]] = ("val_loss", "diagonality", "free_running_diagonality", "focus")

    def metrics(self) -> dict[str, float]:
        """Every measured number, flat, named as in metrics.jsonl: val_loss, ``val_<term>``, the teacher-forced
        and free-running alignment metrics, train_loss, elapsed."""
        return {"val_loss": self.val_loss, **{f"val_{k}": v for k, v in self.val_losses.items()},
                "diagonality": self.diagonality, "focus": self.focus, "monotonicity": self.monotonicity,
                "coverage": self.coverage, "free_running_diagonality": self.free_running_diagonality,
                "free_running_focus": self.free_running_focus,
                "free_running_monotonicity": self.free_running_monotonicity,
                "free_running_coverage": self.free_running_coverage,
                "free_running_stop_rate": self.free_running_stop_rate,
                "train_loss": self.train_loss, "elapsed": self.elapsed, "frames_per_second": self.frames_per_second,
                "steps_per_second": self.steps_per_second, "weight_change": self.weight_change}

    def to_dict(self) -> dict[str, Any]:
        """The metrics.jsonl record: the step, the measurements and the controls in force."""
        return {"step": self.step, **self.metrics(), "lr": self.lr, **self.loss_weights}


# Metric names in metrics.jsonl (and MLflow) until 2026-12-03, when free-running got one name everywhere. A reader
# of a run directory passes each record through current_metric_names: a run resumed across the rename has both.
OLD_METRIC_NAMES = {f"infer_{name}": f"free_running_{name}"
                    for name in ("diagonality", "focus", "monotonicity", "coverage", "stop_rate")}


def current_metric_names(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl record with the metric names of today (:data:`OLD_METRIC_NAMES` renamed)."""
    return {OLD_METRIC_NAMES.get(key, key): value for key, value in record.items()}


@dataclass
class Decision:
    control: str  # one of CONTROLS or a steerable loss weight
    value: float | None
    reason: str
    trigger: float | None = None  # the statistic that caused it (a loss, a gradient norm, a diagonality)
    alarm: bool = False  # the run is in trouble (an emergency): debug bundles and alerts react when applied


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
    alarm: bool = False  # as the decision said

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_alarm(self) -> bool:
        """An applied emergency (an emergency that lost to another request changed nothing)."""
        return self.applied and self.alarm


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
    status: str  # "completed" | "stopped" | "interrupted" (a signal) | "failed"
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
