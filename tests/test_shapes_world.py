"""The synthetic shapes world: deterministic clips whose ground truth matches their frames."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from videogen.data.shapes import (
    DIRECTIONS,
    PALETTE,
    ObjectSpec,
    Scene,
    ShapesWorld,
    WorldSpec,
    caption_for,
    redraw_scene,
    render_scene,
)


def test_a_clip_is_a_function_of_seed_and_index_alone():
    world = ShapesWorld(WorldSpec(frames=6), seed=3)
    a, b = world.clip(17), ShapesWorld(WorldSpec(frames=6), seed=3).clip(17)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    assert np.array_equal(a.flow_forward, b.flow_forward)
    assert not np.array_equal(world.clip(18).frames, a.frames)
    assert not np.array_equal(ShapesWorld(WorldSpec(frames=6), seed=4).clip(17).frames, a.frames)


def test_masks_hold_the_object_colour_and_their_centroid_is_the_true_centre():
    world = ShapesWorld(WorldSpec(frames=5, two_objects=0.0, pan=0.0), seed=0)
    for index in range(20):
        clip = world.clip(index)
        obj = clip.scene.objects[0]
        for t in range(5):
            mask = clip.masks[t, 0]
            interior = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
            assert np.all(clip.frames[t][interior] == PALETTE[obj.colour])
            ys, xs = np.nonzero(mask)
            centroid = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
            if obj.shape != "triangle":  # a triangle's area centroid is not its circumcentre
                assert np.abs(centroid - clip.centres[t, 0]).max() < 0.5


def test_the_forward_flow_carries_object_pixels_onto_the_object_next_frame():
    world = ShapesWorld(WorldSpec(frames=8, two_objects=0.0, pan=0.0), seed=1)
    hits = []
    for index in range(10):
        clip = world.clip(index)
        for t in range(7):
            ys, xs = np.nonzero(clip.masks[t, 0])
            dx, dy = clip.flow_forward[t][:, ys, xs]
            x2 = np.clip(np.rint(xs + dx).astype(int), 0, 63)
            y2 = np.clip(np.rint(ys + dy).astype(int), 0, 63)
            hits.append(clip.masks[t + 1, 0][y2, x2].mean())
            ys, xs = np.nonzero(clip.masks[t + 1, 0])
            bx, by = clip.flow_backward[t][:, ys, xs]
            back = clip.masks[t, 0][
                np.clip(np.rint(ys + by).astype(int), 0, 63), np.clip(np.rint(xs + bx).astype(int), 0, 63)
            ]
            hits.append(back.mean())
    assert np.mean(hits) > 0.97


def test_a_camera_pan_moves_the_background_texture_by_the_pan():
    world = ShapesWorld(WorldSpec(frames=4, pan=1.0, two_objects=0.0), seed=2)
    clip = world.clip(0)
    scene = clip.scene
    assert scene.pan_direction and scene.texture and "camera panning" in clip.caption
    dx, dy = (int(round(v)) for v in scene.pan)
    near = clip.masks[:, 0].copy()
    for shift in range(1, 3):  # anti-aliased edges are partly object: keep 2 px away from it
        for axis in (1, 2):
            near |= np.roll(clip.masks[:, 0], shift, axis) | np.roll(clip.masks[:, 0], -shift, axis)
    background = ~near
    shifted = np.roll(clip.frames[0].astype(int), (dy, dx), axis=(0, 1))
    keep = background[0] & background[1]
    keep &= np.roll(keep, (dy, dx), axis=(0, 1))
    keep[:2] = keep[-2:] = False
    keep[:, :2] = keep[:, -2:] = False
    assert np.abs(shifted - clip.frames[1].astype(int))[keep].max() <= 1
    assert np.allclose(clip.flow_forward[0][:, keep], np.array(scene.pan, dtype=np.float32)[:, None])


def test_captions_name_what_moves_and_how():
    world = ShapesWorld(WorldSpec(frames=4, two_objects=0.5, pan=0.0), seed=5)
    for index in range(50):
        scene = world.scene(index)
        text = scene.caption
        for obj in scene.objects:
            assert f"{obj.colour} {obj.shape}" in text
            ux, uy = DIRECTIONS[obj.direction]
            assert np.sign(obj.velocity[0]) == np.sign(ux) and np.sign(obj.velocity[1]) == np.sign(uy)
    obj = ObjectSpec("circle", "orange", 5.0, (10.0, 10.0), (2.0, 0.0), "right")
    assert caption_for(Scene((obj,), "black")) == "an orange circle moving right"
    two = (obj, replace(obj, colour="blue", shape="square"))
    assert caption_for(Scene(two, "black")) == "an orange circle and a blue square moving right"


def test_objects_bounce_and_stay_inside_the_frame():
    obj = ObjectSpec("square", "red", 6.0, (50.0, 32.0), (3.0, 0.0), "right")
    clip = render_scene(Scene((obj,), "gray", width=64, height=64, frames=20))
    xs = clip.centres[:, 0, 0]
    assert xs.max() <= 64 - 6.0 + 1e-6 and xs.min() >= 6.0 - 1e-6
    assert xs[5] < xs[4]  # it turned around at the right edge
    assert clip.masks.any(axis=(2, 3)).all()


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_sizes_and_speeds_scale_with_the_frame(size):
    width, height = size
    clip = ShapesWorld(WorldSpec(width=width, height=height, frames=3), seed=0).clip(0)
    assert clip.frames.shape == (3, height, width, 3)
    assert clip.flow_forward.shape == (2, 2, height, width)


def test_a_redrawn_scene_keeps_the_caption_and_redraws_what_it_leaves_open():
    spec = WorldSpec(two_objects=1.0, pan=1.0)
    scene = ShapesWorld(spec, seed=4).scene(2)
    rng = np.random.default_rng(0)
    redrawn = [redraw_scene(rng, spec, scene) for _ in range(6)]
    assert all(r.caption == scene.caption and r.pan == scene.pan and r.texture for r in redrawn)
    for k, obj in enumerate(scene.objects):
        assert all(r.objects[k].velocity == pytest.approx(obj.velocity) for r in redrawn)
        assert len({r.objects[k].start for r in redrawn}) == 6 and len({r.objects[k].radius for r in redrawn}) == 6
    clip = render_scene(redrawn[0])
    assert clip.frames.shape == (spec.frames, spec.height, spec.width, 3)
