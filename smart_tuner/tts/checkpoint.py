"""The checkpoint format: atomic files and safe loading (training writes them, inference reads them).

A checkpoint is written through the one atomic writer (smart_tuner.files), so a crash never leaves a half-written
``last.pt``. Loading uses ``weights_only=True``: a checkpoint holds tensors and
plain data only (config, symbol table, mel statistics, RNG states, hook states), never pickled objects.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..files import write_atomic

FORMAT = 1


class CheckpointError(UserError, RuntimeError):
    pass


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    # Serialized in memory first: torch's zip writer hides the errno of a failed write (a full disk reads as
    # "enforce fail at inline_container.cc"), while a plain write of the bytes raises it as it is.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer())


def load_any(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Whatever a torch file holds, loaded safely (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc):  # no object refused: not a pickle torch reads (random bytes, a cut file)
            raise CheckpointError(f"{path}: not a readable checkpoint (not a torch file, or a truncated one)") from None
        # torch's own text spans several lines and ends by suggesting weights_only=False: advice not to take.
        raise CheckpointError(f"{path}: holds Python objects besides tensors and plain data; smart_tuner loads "
                              "checkpoints safely (weights only) and does not run the code such objects bring: load "
                              "it where you trust it and save its state_dict") from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first[:200]})") from None


def load_weights(model: torch.nn.Module, weights: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(weights)`` (strict), a mismatch told in one line: how many tensors are missing,
    unexpected or of another shape, the first of each."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in weights]
    unexpected = [k for k in weights if k not in mine]
    reshaped = [f"{k} {tuple(weights[k].shape)} vs {tuple(mine[k].shape)}" for k in mine
                if k in weights and hasattr(weights[k], "shape") and tuple(weights[k].shape) != tuple(mine[k].shape)]
    parts = [f"{len(found)} {what} (first: {found[0]})" for what, found in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if found]
    if parts:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes: {'; '.join(parts)}")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: its weights do not load ({(str(exc).splitlines() or [''])[0][:200]})") from None


def is_ours(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    data = load_any(path, map_location)
    if not is_ours(data):
        raise CheckpointError(f"{path}: not a smart_tuner checkpoint of format {FORMAT}")
    return data


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])
