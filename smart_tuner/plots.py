"""Images for people: the alignment heatmap (debug bundles, alerts, trackers), rendered off-screen to PNG.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: pyplot keeps a global list of open
figures, and alerts render on a worker thread while the debug reporter renders on the training thread.
"""

from __future__ import annotations

import io

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def alignment_png(alignment: torch.Tensor, title: str = "") -> bytes:
    """PNG bytes of a (decoder steps, text tokens) attention matrix: a good one is a bright diagonal."""
    data = alignment.detach().float().cpu().numpy()
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
