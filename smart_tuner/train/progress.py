"""What a person watching a run sees: the progress bar, and what the steps since the last evaluation add up to
(the mean training loss and the throughput an evaluation reports)."""

from __future__ import annotations

from tqdm import tqdm

from ..hooks import EvalStats, StepStats


class SinceEval:
    """What the steps since the last evaluation add up to: the mean finite training loss and the throughput."""

    def __init__(self) -> None:
        self.steps, self.frames, self.wall = 0, 0, 0.0
        self.losses: list[float] = []

    def add(self, stats: StepStats, wall: float) -> None:
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


class Progress:
    """The bar (hidden when ``enabled`` is false: ``--no-progress``, ranks other than 0) with the loss, the last
    evaluation's diagonality, the rate, the throughput and the last applied event."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train")
        self.since_eval = SinceEval()

    def add(self, stats: StepStats, wall: float) -> None:
        self.since_eval.add(stats, wall)
        self.bar.update(1)

    def take(self) -> SinceEval:
        """The steps since the last evaluation; counting starts anew."""
        since, self.since_eval = self.since_eval, SinceEval()
        return since

    def show(self, stats: StepStats, last_eval: EvalStats | None, lr: float, event: str, refresh: bool = True) -> None:
        since = self.since_eval
        throughput = since.frames_per_second() if since.steps else last_eval.frames_per_second
        postfix = {"loss": f"{stats.loss:.3f}", "diag": f"{last_eval.diagonality:.2f}" if last_eval else "-",
                   "lr": f"{lr:.2e}", "mel/s": f"{throughput:.0f}"}
        if event:
            postfix["event"] = event
        self.bar.set_postfix(postfix, refresh=refresh)

    def close(self) -> None:
        self.bar.close()
