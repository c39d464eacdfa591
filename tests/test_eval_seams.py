"""Clip-boundary seams and prompt-schedule switches, measured on the shapes world's own videos."""

from __future__ import annotations

import math

import numpy as np
import pytest

from videogen.data.shapes import ObjectSpec, Scene, render_scene
from videogen.eval.seams import boundary_jumps, boundary_pairs, switch_frame


def _scene(colour: str = "red", frames: int = 16, velocity=(1.5, 0.0)) -> np.ndarray:
    obj = ObjectSpec("circle", colour, 7.0, (16.0, 32.0), velocity, "right")
    return render_scene(Scene((obj,), "gray", frames=frames)).frames


CLIPS = [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]


def test_boundary_pairs_are_the_last_frame_of_every_clip_but_the_last():
    assert boundary_pairs(CLIPS) == [3, 7, 11]


def test_a_smoothly_moving_object_has_no_seam():
    jumps = boundary_jumps(_scene(), CLIPS)
    assert 0.8 <= jumps.pixel_ratio <= 1.25 and jumps.boundaries == 3


def test_a_clip_shifted_against_its_neighbours_shows_as_a_seam():
    frames = _scene()
    shifted = frames.copy()
    shifted[8:12] = np.roll(frames[8:12], 6, axis=2)  # the third worker's clip drawn 6 px further right
    smooth, seam = boundary_jumps(frames, CLIPS), boundary_jumps(shifted, CLIPS)
    assert seam.pixel_ratio > 2 * smooth.pixel_ratio
    centres = np.array([[16 + 1.5 * t + (6 if 8 <= t < 12 else 0), 32.0] for t in range(16)])
    assert boundary_jumps(shifted, CLIPS, centres).track_ratio > 2.5


def test_clips_that_do_not_tile_the_video_are_refused():
    with pytest.raises(ValueError, match="do not tile"):
        boundary_jumps(_scene(), [range(0, 8), range(9, 16)])


def test_a_still_video_has_no_ratio():
    still = np.repeat(_scene(frames=1), 8, axis=0)
    assert boundary_jumps(still, [range(0, 4), range(4, 8)]).pixel_ratio == 1.0
    assert math.isnan(boundary_jumps(still, [range(0, 8)]).pixel_ratio)


@pytest.mark.parametrize("at", [0, 5, 11, 16])
def test_the_switch_is_the_frame_the_colour_changes(at):
    frames = np.concatenate([_scene("red")[:at], _scene("blue")[at:]])
    assert switch_frame(frames, "red", "blue") == at
