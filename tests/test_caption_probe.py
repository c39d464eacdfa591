"""The caption probe: the denoising loss with a clip's true caption against one with a word changed."""

from __future__ import annotations

import pytest

from videogen.config import ModelConfig
from videogen.data.shapes import ShapesWorld, WorldSpec
from videogen.models.loader import load_bundle
from videogen.train.probe import OPPOSITE, _altered, caption_oracle, caption_sensitivity


def test_opposites_are_opposite_and_altered_captions_change_one_word():
    assert OPPOSITE["right"] == "left" and OPPOSITE["up-right"] == "down-left" and len(OPPOSITE) == 8
    scene = ShapesWorld(WorldSpec(two_objects=0.0, still=0.0, pan=0.0), seed=5).scene(0)
    true = scene.caption.split()
    for attribute in ("colour", "direction"):
        changed = _altered(scene, attribute).split()
        assert len(changed) == len(true) and sum(a != b for a, b in zip(changed, true, strict=True)) == 1
    with pytest.raises(ValueError, match="colour or direction"):
        _altered(scene, "size")


@pytest.mark.slow
def test_the_bundled_model_predicts_worse_with_the_wrong_colour():
    """The positive control: the bundled model draws the prompted colour, so another colour costs it."""
    found = caption_sensitivity(load_bundle(ModelConfig(path="shapes")), clips=3, timesteps=(300, 600))
    assert found.samples == 6
    assert found.gap("colour") > 0.1 and found.altered_worse["colour"] >= 5 / 6
    assert set(found.loss_altered) == {"colour", "direction"}


def test_the_world_ties_direction_to_each_frame_but_not_to_the_frames_average():
    """From pure noise, only a predictor that knows each frame's index can use a direction word; colour
    shows in the frames' average too."""
    found = caption_oracle(clips=3, draws=40)
    assert found.samples == 3
    assert found.frame_aware["direction"] > 0.15
    assert abs(found.frame_blind["direction"]) < 0.25 * found.frame_aware["direction"]
    assert found.frame_blind["colour"] > 0.0
