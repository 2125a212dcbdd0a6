"""What the steps since the last evaluation add up to: the figures an evaluation reports about training
(``EvalStats.train_loss``, ``frames_per_second``, ``steps_per_second``), and the throughput the progress bar
shows. The trainer counts every step here and starts a new count at each evaluation."""

from __future__ import annotations

from ..hooks import StepStats


class SinceEval:
    """The mean finite training loss and the throughput of the steps counted so far (NaN where there is nothing
    to average: no step yet, or no finite loss among them)."""

    def __init__(self) -> None:
        self.steps, self.frames, self.wall = 0, 0, 0.0
        self.losses: list[float] = []

    def add(self, stats: StepStats, wall: float) -> None:
        """One step: its statistics and its wall time in seconds (batch, forward, backward, hooks and update)."""
        self.steps += 1
        self.frames += stats.frames
        self.wall += wall
        if stats.finite:
            self.losses.append(stats.loss)

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")

    def frames_per_second(self) -> float:
        return self.frames / self.wall if self.wall > 0 else float("nan")

    def steps_per_second(self) -> float:
        return self.steps / self.wall if self.wall > 0 else float("nan")
