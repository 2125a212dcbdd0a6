"""Images for people: the alignment heatmap and mel spectrograms (previews, debug bundles, alerts, synthesis),
rendered off-screen to PNG. They live with the models (below ``watch``) so that synthesis can draw its alignments;
a tensor converts through ``__array__``, so this module itself needs only matplotlib and numpy.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: pyplot keeps a global list of open
figures, and alerts render on a worker thread while the debug reporter renders on the training thread.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _array(values: Any) -> np.ndarray:
    """A float array of a CPU tensor or an array (torch tensors convert through ``__array__``)."""
    if hasattr(values, "detach"):
        values = values.detach().float()
    return np.asarray(values, dtype=np.float32)


def alignment_png(alignment: Any, title: str = "") -> bytes:
    """PNG bytes of a (decoder steps, text tokens) attention matrix: a good one is a bright diagonal."""
    data = _array(alignment)
    fig = Figure(figsize=(6, 4), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(data.T, aspect="auto", origin="lower", interpolation="none", vmin=0.0)
    fig.colorbar(image, ax=ax)
    ax.set_xlabel("decoder step")
    ax.set_ylabel("text token")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


MEL_PANELS = {"target": "target", "teacher_forced": "predicted (teacher-forced)",
              "free_running": "predicted (free-running)"}


def mel_png(mels: dict[str, Any], title: str = "") -> bytes:
    """PNG bytes of log-mels (n_mels, frames) stacked top to bottom: target, then predictions, on one colour
    scale so that they compare."""
    panels = [(MEL_PANELS.get(k, k), _array(v)) for k, v in mels.items()]
    low = min(float(p.min()) for _, p in panels)
    high = max(float(p.max()) for _, p in panels)
    fig = Figure(figsize=(7, 1.9 * len(panels) + 0.4), dpi=80)
    FigureCanvasAgg(fig)
    # One frame axis for all panels: a free-running mel that runs long or stops early shows as such.
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True, gridspec_kw={"hspace": 0.35})[:, 0]
    for ax, (label, data) in zip(axes, panels):
        image = ax.imshow(data, aspect="auto", origin="lower", interpolation="none", vmin=low, vmax=high)
        ax.set_ylabel("mel bin")
        ax.set_title(label, fontsize=9)
    axes[-1].set_xlabel("frame")
    fig.colorbar(image, ax=list(axes))
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
