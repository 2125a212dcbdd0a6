"""Fine-tuning: a run that starts from another checkpoint's weights (``train.init_from``, the family's rules in
tts/warm_start.py) and may keep some modules fixed for its first steps (``train.freeze_modules`` for
``train.freeze_steps``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import Config
from ..data.text import SymbolTable
from ..files import write_atomic
from ..tts.base import ModelFamily
from ..tts.warm_start import init_from
from .errors import TrainingError

log = logging.getLogger(__name__)


def load_init_from(model: torch.nn.Module, family: ModelFamily, symbols: SymbolTable, config: Config,
                   report_dir: Path | None) -> None:
    """Model weights from ``train.init_from``, reported in the log and in ``<report_dir>/init_report.json`` (None:
    this rank reports nothing)."""
    report = init_from(model, family, symbols, config)
    if report_dir is None:
        return
    write_atomic(report_dir / "init_report.json", json.dumps(report.to_dict(), indent=1))
    log.info("%s", report.table())
    for warning in report.warnings:
        log.warning("warm start: %s", warning)


class Freezer:
    """The parameters under the ``train.freeze_modules`` prefixes (a prefix names a module, e.g. ``encoder``),
    frozen for the first ``train.freeze_steps`` steps: they get no gradient, so AdamW leaves them (and their weight
    decay) alone."""

    def __init__(self, model: torch.nn.Module, prefixes: list[str], steps: int):
        self.prefixes, self.steps = prefixes, steps
        named = dict(model.named_parameters())
        self.parameters: list[torch.nn.Parameter] = []
        for prefix in prefixes:
            found = [p for n, p in named.items() if n == prefix or n.startswith(prefix + ".")]
            if not found:
                modules = sorted({n.rsplit(".", 1)[0] for n in named})
                raise TrainingError(f"train.freeze_modules: no module named {prefix!r}; modules with parameters: "
                                    f"{', '.join(modules)}")
            self.parameters += found
        if prefixes and len({id(p) for p in self.parameters}) == len(named):
            raise TrainingError(f"train.freeze_modules {prefixes} freezes every parameter of the model: nothing would "
                                "train for train.freeze_steps steps; leave at least one module out of the list")

    def before(self, step: int) -> None:
        """Before training from ``step`` (0-based: the updates done so far)."""
        frozen = step < self.steps
        changed = [p for p in self.parameters if p.requires_grad == frozen]
        for p in changed:
            p.requires_grad_(not frozen)
        if changed and not frozen:
            log.info("step %d: %s trainable again (train.freeze_steps)", step, ", ".join(self.prefixes))
