"""Warm start: a new run's model gets the weights of a trained one (ours or a foreign layout its family knows,
such as NVIDIA's), name by name, before step 0; the optimizer and the step stay fresh.

Rules, in order, for each tensor of the new model:

- a name matching one of ``train.init_ignore`` (regular expressions, matched from the start) is **skipped**;
- a name the source lacks keeps its fresh value (**skipped**, "not in the source");
- a tensor of the family's ``symbol_rows`` (Tacotron 2: the embedding) is **remapped**: the row of each symbol
  that both tables know is copied (special symbols correspond by role: NVIDIA's pad ``_`` is our ``<pad>``),
  new symbols keep their fresh rows;
- a tensor of the same shape is **loaded**; any other shape is **skipped** ("shape mismatch"), never fatal.

A warm start that would bring no learned value, or less than ``train.init_min_share`` of the model's parameters
with learned values (counters and all-zero tensors do not count), is an error naming what matched and what did not.
The report (:class:`InitReport`) lists every tensor and how many parameters came across; it goes to the log and to
``<run dir>/init_report.json``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, ConfigError, from_dict
from ..data.dataset import MelStats
from ..data.text import SymbolTable
from . import checkpoint as ckpt
from .base import ModelFamily

LOADED, REMAPPED, SKIPPED = "loaded", "remapped", "skipped"


class WarmStartError(ckpt.CheckpointError):
    """A warm start cannot happen (unreadable source, another family's checkpoint, nothing loads)."""


@dataclass
class WeightSource:
    path: Path
    kind: str  # "smart_tuner" or a foreign layout ("nvidia")
    state_dict: dict[str, torch.Tensor]
    symbols: SymbolTable
    config: Config
    mel_standardized: bool


@dataclass
class TensorRecord:
    name: str
    status: str  # loaded | remapped | skipped
    shape: list[int]
    detail: str = ""


@dataclass
class InitReport:
    source: str
    kind: str
    tensors: list[TensorRecord] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # source tensors the model has no place for
    warnings: list[str] = field(default_factory=list)
    parameters: int = 0  # the model's learnable values
    transferred: int = 0  # of them, the ones that came across with a learned (not all-zero) value

    @property
    def share(self) -> float:
        return self.transferred / max(self.parameters, 1)

    def count(self, status: str) -> int:
        return sum(1 for t in self.tensors if t.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind,
                "counts": {s: self.count(s) for s in (LOADED, REMAPPED, SKIPPED)},
                "parameters": {"transferred": self.transferred, "total": self.parameters},
                "tensors": [asdict(t) for t in self.tensors], "unused": self.unused, "warnings": self.warnings}

    def table(self) -> str:
        """A plain-text table for the log: one line per tensor, then the counts."""
        width = max((len(t.name) for t in self.tensors), default=10)
        lines = [f"warm start from {self.source} ({self.kind})",
                 f"{'tensor':<{width}}  {'status':<8}  {'shape':<18}  detail"]
        for t in self.tensors:
            lines.append(f"{t.name:<{width}}  {t.status:<8}  {'x'.join(map(str, t.shape)) or 'scalar':<18}  "
                         f"{t.detail}")
        lines.append(f"{self.count(LOADED)} loaded, {self.count(REMAPPED)} remapped, {self.count(SKIPPED)} skipped"
                     + (f"; {len(self.unused)} source tensors unused: {', '.join(self.unused)}" if self.unused else ""))
        lines.append(f"{self.transferred:,} of {self.parameters:,} parameters came across ({self.share:.1%})")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def read_source(path: str | Path, family: ModelFamily) -> WeightSource:
    """The weights, symbols and conventions of a smart_tuner checkpoint or of a layout the family knows."""
    path = Path(path)
    data = ckpt.load_any(path)
    if ckpt.is_ours(data):
        config = from_dict(data["config"])
        if config.model.family != family.name:
            raise WarmStartError(f"{path}: a {config.model.family} checkpoint; this run trains {family.name}")
        stats = MelStats.from_dict(data["mel_stats"])
        return WeightSource(path, "smart_tuner", data["model"], SymbolTable.from_dict(data["symbols"]), config,
                            not stats.is_identity)
    try:
        foreign = family.foreign_checkpoint(data)
    except (ValueError, KeyError) as exc:  # a known layout with tensors missing or misnamed
        raise WarmStartError(f"{path}: cannot read its weights: {type(exc).__name__}: {exc}") from None
    if foreign is None:
        raise WarmStartError(f"{path}: neither a smart_tuner checkpoint nor a {family.name} checkpoint in a layout "
                             f"smart_tuner knows")
    return WeightSource(path, foreign.kind, foreign.state_dict, foreign.symbols, foreign.config,
                        foreign.config.data.mel_standardize)


def _compile(patterns: list[str]) -> list[re.Pattern]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"train.init_ignore: {pattern!r} is not a regular expression ({exc})") from None
    return compiled


def remap_rows(source: torch.Tensor, source_symbols: SymbolTable, target: torch.Tensor,
               target_symbols: SymbolTable) -> tuple[torch.Tensor, int]:
    """``target`` with the rows of the symbols both tables share copied from ``source``; and how many."""
    pairs = [(i, j) for i, s in enumerate(target_symbols.symbols)
             if (j := source_symbols.id_of_role(target_symbols.role(s))) is not None]
    out = target.clone()
    if pairs:
        rows, source_rows = (torch.tensor(p, dtype=torch.long) for p in zip(*pairs))
        out[rows] = source[source_rows].to(out)
    return out, len(pairs)


def transfer_weights(model: nn.Module, family: ModelFamily, symbols: SymbolTable, source: WeightSource,
                     ignore: list[str] = (), min_share: float = 0.0) -> InitReport:
    """Load ``source`` into ``model`` (whose symbol table is ``symbols``) by the rules above; returns the report."""
    patterns = _compile(list(ignore))
    report = InitReport(str(source.path), source.kind)
    state = model.state_dict()
    learnable = {n: p.numel() for n, p in model.named_parameters()}
    report.parameters = sum(learnable.values())
    learned = []  # the parameters that bring learned values
    new_state = {}
    for name, tensor in state.items():
        record = TensorRecord(name, SKIPPED, list(tensor.shape))
        report.tensors.append(record)
        hit = next((p.pattern for p in patterns if p.match(name)), None)
        theirs = source.state_dict.get(name)
        if hit is not None:
            record.detail = f"ignored (train.init_ignore {hit!r})"
        elif theirs is None:
            record.detail = "not in the source: fresh value kept"
        elif name in family.symbol_rows and theirs.shape[1:] == tensor.shape[1:]:
            new_state[name], shared = remap_rows(theirs, source.symbols, tensor, symbols)
            record.status = REMAPPED if shared else SKIPPED
            record.detail = (f"{shared} of {len(symbols)} symbol rows copied by symbol, "
                             f"{len(symbols) - shared} fresh")
            if name in learnable and bool(theirs.any()):
                report.transferred += shared * tensor[0].numel()
                learned.append(name)
        elif theirs.shape == tensor.shape:
            new_state[name] = theirs.to(tensor)
            record.status = LOADED
            if name in learnable and bool(theirs.any()):  # counters are buffers; an all-zero tensor teaches nothing
                report.transferred += tensor.numel()
                learned.append(name)
        else:
            record.detail = f"shape mismatch: source {'x'.join(map(str, theirs.shape))}"
    report.unused = sorted(set(source.state_dict) - set(state))
    if report.transferred == 0 or report.share < min_share:
        raise WarmStartError(_too_little(report, source, min_share, learned))
    model.load_state_dict({**state, **new_state})
    return report


def _too_little(report: InitReport, source: WeightSource, min_share: float, came: list[str]) -> str:
    """Why a warm start that would bring too few learned values (``came``: the parameters that would) is refused,
    in one line."""
    mismatched = sum(1 for t in report.tensors if t.detail.startswith("shape mismatch"))
    absent = sum(1 for t in report.tensors if t.detail.startswith("not in the source"))
    ignored = sum(1 for t in report.tensors if t.detail.startswith("ignored"))
    shown = ", ".join(came[:4]) + (f" and {len(came) - 4} more" if len(came) > 4 else "") if came else "nothing"
    amount = (f"no learned value of the checkpoint fits this model (0 of {report.parameters:,} parameters)"
              if not report.transferred else
              f"only {report.transferred:,} of {report.parameters:,} parameters ({report.share:.1%}) would come "
              f"across, below train.init_min_share={min_share:g}")
    return (f"{source.path}: {amount} (matched: {shown}; not: {mismatched} shape mismatches, {absent} not in the "
            f"source, {ignored} ignored); check train.init_ignore, or the model sizes differ from the source's (an "
            "NVIDIA checkpoint has the tacotron2 preset's: --set preset=tacotron2)"
            + ("; or set train.init_min_share=0 to start from what matches" if report.transferred else ""))


def convention_warnings(source: WeightSource, config: Config) -> list[str]:
    """Differences in data conventions that make warm-started weights predict the wrong thing."""
    warnings = []
    if source.mel_standardized != config.data.mel_standardize:
        warnings.append(f"the source model predicts {'standardized' if source.mel_standardized else 'unstandardized'} "
                        f"mels; set data.mel_standardize={str(source.mel_standardized).lower()} to keep its "
                        f"output layers useful")
    theirs, ours = asdict(source.config.audio), asdict(config.audio)
    differing = [k for k in ours if k != "trim_db" and ours[k] != theirs.get(k)]
    if differing:
        warnings.append("audio settings differ from the source's: " +
                        ", ".join(f"audio.{k} {theirs.get(k)} (source) vs {ours[k]}" for k in differing))
    if source.symbols.cleaner != config.data.cleaner:
        warnings.append(f"the source cleaned text with {source.symbols.cleaner!r}, this run with "
                        f"{config.data.cleaner!r} (data.cleaner)")
    return warnings


def init_from(model: nn.Module, family: ModelFamily, symbols: SymbolTable, config: Config) -> InitReport:
    """The warm start ``train.init_from`` asks for, with its convention warnings."""
    source = read_source(config.train.init_from, family)
    report = transfer_weights(model, family, symbols, source, config.train.init_ignore, config.train.init_min_share)
    report.warnings = convention_warnings(source, config)
    return report
