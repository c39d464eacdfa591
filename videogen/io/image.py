"""Read a still image (PNG, JPEG, ... through imageio's Pillow plugin) as a first frame.

Colour modes: RGB is taken as is; grey (``L``, ``1``), palette (``P``), ``CMYK`` and ``YCbCr`` are
converted to RGB; images with an alpha channel (``RGBA``, ``LA``, ``PA``) are composited over
white, so transparent areas become white rather than whatever colour hides under them. 16-bit and
float images (``I;16``, ``I``, ``F``) and animations (several frames) are refused: converting them
silently would clip or pick a frame the user did not mean.

Resize policy (``resize``):

* ``cover`` (default): scale, keeping the aspect ratio, until the image covers the target size,
  then crop the centre. Nothing is distorted; the overhanging sides are cut off.
* ``stretch``: scale each axis to the target size; the whole image is kept, distorted when the
  aspect ratios differ.

Both resample once with Lanczos (the crop is the source box of that one resample).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from videogen.errors import MediaError

ResizePolicy = Literal["cover", "stretch"]
RESIZE_POLICIES: tuple[str, ...] = ("cover", "stretch")
_REFUSED_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}


def read_rgb(path: str | Path) -> np.ndarray:
    """The image at ``path`` as uint8 RGB ``(H, W, 3)``; alpha is composited over white."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.exists():
        raise MediaError(f"image not found: {path}")
    if not path.is_file():
        raise MediaError(f"not an image file: {path}")
    try:
        with iio.imopen(path, "r", plugin="pillow") as file:
            frames = file.properties(index=...).n_images
            mode = file.metadata(index=0, exclude_applied=False).get("mode")
            if frames is not None and frames > 1:
                raise MediaError(f"{path}: has {frames} frames; give a single still image (PNG or JPEG)")
            if mode in _REFUSED_MODES:
                raise MediaError(f"{path}: colour mode {mode} (16-bit or float) is not supported; save it as 8-bit RGB")
            rgba = file.read(index=0, mode="RGBA")
    except (OSError, SyntaxError, ValueError) as error:  # Pillow raises all three for corrupt files
        raise MediaError(f"cannot read image {path}: {_reason(error)}") from None
    colour = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    return np.round(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def _reason(error: BaseException) -> str:
    if error.__cause__ is not None:  # imageio wraps Pillow's own error ("Truncated File Read", ...)
        error = error.__cause__
    text = str(error).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    unknown = "can not handle" in reason or "can not read" in reason
    return "not an image format Pillow can read" if unknown else reason


def cover_box(src_width: int, src_height: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The centred source box ``(left, top, right, bottom)`` with the target's aspect ratio."""
    scale = max(width / src_width, height / src_height)
    box_w, box_h = width / scale, height / scale
    left, top = (src_width - box_w) / 2, (src_height - box_h) / 2
    return left, top, left + box_w, top + box_h


def fit_image(rgb: np.ndarray, width: int, height: int, resize: ResizePolicy = "cover") -> np.ndarray:
    """Resize uint8 RGB ``(H, W, 3)`` to ``(height, width, 3)`` by the ``resize`` policy."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {resize!r}; use one of {RESIZE_POLICIES}")
    src_h, src_w = rgb.shape[:2]
    if (src_h, src_w) == (height, width):
        return rgb
    box = cover_box(src_w, src_h, width, height) if resize == "cover" else (0.0, 0.0, float(src_w), float(src_h))
    image = Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS, box=box)
    return np.array(image)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` to float32 ``(3, H, W)`` in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0


def load_image(path: str | Path, width: int, height: int, resize: ResizePolicy = "cover") -> torch.Tensor:
    """Read, convert to RGB, fit to ``width`` x ``height``: float32 ``(3, height, width)`` in [-1, 1]."""
    return to_tensor(fit_image(read_rgb(path), width, height, resize))
