"""The run directory's files, named once, and their one reader; no torch (the debug command, viewers and the
benchmarks' summaries read run directories without it).

::

    <run dir>/.lock                 one writer at a time (rank 0's flock), from set-up to the end of fit()
    <run dir>/config.yaml           the config the run trains with
    <run dir>/metrics.jsonl         one line per evaluation (EvalStats.to_dict())
    <run dir>/events.jsonl          one line per hook request (Event.to_dict())
    <run dir>/checkpoints/last.pt   the latest state, from which --resume goes on (best.pt: the best val_loss)

:class:`smart_tuner.train.run_dir.RunDir` writes them under these names (what else a run leaves there, previews,
debug bundles, the data report: docs/run-directory.md); whatever reads them back (the debug reporter, the
benchmarks, the tests) reads them here. The logs are read as :func:`smart_tuner.files.read_jsonl`
reads a log: a torn last line (a run killed while writing it) is left out, a broken line elsewhere is a
:class:`~smart_tuner.files.BrokenRecord` naming the file and line, and a missing log has no records. Evaluations
come with today's metric names (:func:`smart_tuner.hooks.current_metric_names`), so a run from before the rename,
or resumed across it, reads like a new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .files import JsonLog, read_jsonl
from .hooks import current_metric_names
from .yaml_reader import yaml_load

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
LOGS = (METRICS, EVENTS)  # the logs that grow line by line, cut back to the checkpoint's step on resume
CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # under CHECKPOINTS
BEST = "best.pt"  # under CHECKPOINTS


def read_metrics(run_dir: str | os.PathLike) -> JsonLog:
    """The run's evaluations (metrics.jsonl), oldest first, under today's metric names."""
    log = read_jsonl(Path(run_dir) / METRICS)
    return JsonLog(map(current_metric_names, log), log.torn)


def read_events(run_dir: str | os.PathLike) -> JsonLog:
    """The run's control events (events.jsonl), in the order the trainer recorded them."""
    return read_jsonl(Path(run_dir) / EVENTS)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's config.yaml as plain data (empty when it holds no mapping); FileNotFoundError when it is missing,
    the YAML reader's error when it cannot be read."""
    loaded = yaml_load((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}
