"""Prompt lists for evaluations, written in the shapes world's caption grammar."""

from __future__ import annotations

from videogen.data.measure import CaptionSpec, ObjectPrompt
from videogen.data.shapes import DIRECTIONS, PALETTE, SHAPES


def single_object_prompts(count: int) -> list[str]:
    """``count`` single-object captions cycling colours, shapes and the eight moving directions together.

    Caption ``i`` asks for colour ``i mod 6``, shape ``i mod 3`` and direction ``i mod 8`` of the world's
    lists (``a red circle moving right``, ``a green square moving left``, ...), so every 24 captions
    are distinct and any 6 consecutive ones cover every colour and shape.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    colours, moving = list(PALETTE), [d for d in DIRECTIONS if d != "still"]
    objects = [
        ObjectPrompt(colours[i % len(colours)], SHAPES[i % len(SHAPES)], moving[i % len(moving)]) for i in range(count)
    ]
    return [CaptionSpec((obj,)).caption for obj in objects]
