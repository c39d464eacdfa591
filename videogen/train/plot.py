"""A loss-curve PNG drawn with Pillow: the raw losses in light grey, their running mean in blue,
a log-scaled y axis (diffusion losses fall over decades) with labelled ticks."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from videogen.io.atomic import partial_path


def running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def write_loss_curve(path: Path, losses: list[float], title: str = "loss", size: tuple[int, int] = (640, 360)) -> None:
    """Write ``losses`` (one per step) as a PNG at ``path``, atomically."""
    width, height = size
    left, right, top, bottom = 64, 16, 28, 36
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), f"{title}: {len(losses)} steps" + (f", last {losses[-1]:.4g}" if losses else ""), fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    finite = [v for v in losses if v > 0 and math.isfinite(v)]
    if finite:
        low, high = math.log10(min(finite)), math.log10(max(finite))
        if high - low < 1e-6:
            low, high = low - 0.5, high + 0.5
        plot_w, plot_h = width - left - right, height - top - bottom

        def xy(i: int, v: float) -> tuple[float, float]:
            x = left + plot_w * i / max(len(losses) - 1, 1)
            y = top + plot_h * (high - math.log10(max(v, 10**low))) / (high - low)
            return x, y

        for exponent in range(math.floor(low), math.ceil(high) + 1):
            for mantissa in (1, 2, 5):
                value = mantissa * 10.0**exponent
                if 10**low <= value <= 10**high:
                    _, y = xy(0, value)
                    draw.line([left, y, width - right, y], fill=(225, 225, 225))
                    draw.text((4, y - 6), f"{value:.3g}", fill="black")
        for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
            step = round(fraction * max(len(losses) - 1, 0))
            x, _ = xy(step, 1.0)
            draw.text((x - 10, height - bottom + 6), str(step + 1), fill="black")
        raw = [xy(i, v) for i, v in enumerate(losses) if v > 0 and math.isfinite(v)]
        if len(raw) > 1:
            draw.line(raw, fill=(190, 190, 190))
            smooth = running_mean(losses, max(len(losses) // 50, 1))
            draw.line([xy(i, v) for i, v in enumerate(smooth)], fill=(30, 80, 200), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    image.save(partial, format="PNG")
    partial.replace(path)
