"""What a person watching a run sees: the progress bar. It only displays; what it shows is counted elsewhere (the
throughput since the last evaluation in since_eval.py)."""

from __future__ import annotations

from tqdm import tqdm

from ..hooks import EvalStats, StepStats
from .since_eval import SinceEval


class Progress:
    """The bar (hidden when ``enabled`` is false: ``--no-progress``, ranks other than 0) with the loss, the last
    evaluation's diagonality, the rate, the throughput and the last applied event."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train")

    def update(self) -> None:
        """One step done."""
        self.bar.update(1)

    def show(self, stats: StepStats, last_eval: EvalStats | None, lr: float, event: str, since: SinceEval,
             refresh: bool = True) -> None:
        """The figures: ``stats``'s loss, and the throughput of the steps ``since`` the last evaluation (just after
        one, that evaluation's own)."""
        throughput = since.frames_per_second() if since.steps else last_eval.frames_per_second
        postfix = {"loss": f"{stats.loss:.3f}", "diag": f"{last_eval.diagonality:.2f}" if last_eval else "-",
                   "lr": f"{lr:.2e}", "mel/s": f"{throughput:.0f}"}
        if event:
            postfix["event"] = event
        self.bar.set_postfix(postfix, refresh=refresh)

    def close(self) -> None:
        self.bar.close()
