"""Contact sheets: frames of one or more videos side by side in one image, to look at a render at a glance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from videogen.io.atomic import partial_path


def contact_sheet(videos: list[np.ndarray], every: int = 4, scale: int = 2, gap: int = 2) -> np.ndarray:
    """One row per video of every ``every``-th frame (uint8 (F, H, W, 3) each), upscaled ``scale`` x
    by pixel repetition, with ``gap`` white pixels between frames and rows."""
    if not videos:
        raise ValueError("a contact sheet needs at least one video")
    rows = []
    for frames in videos:
        picked = [np.kron(f, np.ones((scale, scale, 1), dtype=np.uint8)) for f in frames[::every]]
        height = picked[0].shape[0]
        spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([x for f in picked for x in (f, spacer)][:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded, axis=0)[:-gap]


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` (uint8 (H, W, 3)) as a PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    Image.fromarray(image).save(partial, format="PNG")
    partial.replace(path)
    return path
