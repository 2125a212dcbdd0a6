"""Images for people: the alignment heatmap (debug bundles, alerts, trackers), rendered off-screen to PNG."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def alignment_png(alignment: torch.Tensor, title: str = "") -> bytes:
    """PNG bytes of a (decoder steps, text tokens) attention matrix: a good one is a bright diagonal."""
    data = alignment.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    try:
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
    finally:
        plt.close(fig)
