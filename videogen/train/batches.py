"""Training samples by global index: sample ``i`` is the same clip, caption and noise on any worker.

A step of ``W`` workers with ``B`` samples each uses global indices ``step * W * B + rank * B + j``,
so data-parallel training on ``W`` workers sees exactly the samples one worker sees with batch
``W * B`` (the DDP oracle), and a resumed run sees the samples an uninterrupted one would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import torch

from videogen.data.shapes import ShapesWorld, WorldSpec, trajectory
from videogen.noise.gaussian import frame_seed
from videogen.train.config import DataSection


@dataclass
class ClipBatch:
    """``frames`` (B, F, H, W, 3) uint8, their captions, and the true flows (B, F-1, 2, H, W) in pixels."""

    frames: np.ndarray
    captions: list[str]
    flow_forward: np.ndarray | None = None
    flow_backward: np.ndarray | None = None


def sample_generator(seed: int, stage: str, index: int) -> torch.Generator:
    """The torch generator of one sample's randomness (timestep, noise, dropout) in one stage."""
    salt = {"vae": 0, "unet": 1, "trip": 2, "image": 3, "layout": 4}[stage]
    return torch.Generator().manual_seed(frame_seed(seed, index, "step", step=salt))


def step_indices(step: int, rank: int, world_size: int, batch_size: int) -> list[int]:
    first = (step * world_size + rank) * batch_size
    return list(range(first, first + batch_size))


class ShapesSource:
    """Clips of the synthetic shapes world (:mod:`videogen.data.shapes`), with ground-truth flow."""

    def __init__(self, data: DataSection) -> None:
        w = data.world
        spec = WorldSpec(
            width=data.width,
            height=data.height,
            frames=data.frames,
            size_range=(float(w.size_range[0]), float(w.size_range[1])),
            two_objects=w.two_objects,
            still=w.still,
            textured=w.textured,
            pan=w.pan,
            fit_path=w.fit_path,
        )
        self.clips = ShapesWorld(spec, seed=data.seed)
        self.stills = ShapesWorld(replace(spec, frames=1), seed=data.seed + 1)

    def words(self) -> list[str]:
        """Every word the world's captions use (the tokenizer keeps them whole)."""
        found = {word for caption in self.clips.captions() for word in re.findall(r"[a-z]+", caption)}
        return sorted(found | {"and", "camera", "panning"})

    def object_tracks(self, indices: list[int], slots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each clip's first ``slots`` objects in caption order, as fractions of the frame (float32): centres
        ``(B, F, slots, 2)`` per frame (x of the width, y of the height), radii ``(B, slots)`` (of the shorter
        side) and ``present`` ``(B, slots)`` (1 for an object, 0 for an empty slot, whose values are 0)."""
        frames = self.clips.spec.frames
        centres = np.zeros((len(indices), frames, slots, 2), np.float32)
        radii, present = np.zeros((len(indices), slots), np.float32), np.zeros((len(indices), slots), np.float32)
        for row, index in enumerate(indices):
            scene = self.clips.scene(index)
            size = np.array([scene.width, scene.height], np.float64)
            for slot, obj in enumerate(scene.objects[:slots]):
                centres[row, :, slot] = trajectory(obj, scene.pan, scene) / size
                radii[row, slot] = obj.radius / min(scene.width, scene.height)
                present[row, slot] = 1.0
        return centres, radii, present

    def clip_batch(self, indices: list[int], flows: bool = True) -> ClipBatch:
        clips = [self.clips.clip(i) for i in indices]
        return ClipBatch(
            np.stack([c.frames for c in clips]),
            [c.caption for c in clips],
            np.stack([c.flow_forward for c in clips]) if flows else None,
            np.stack([c.flow_backward for c in clips]) if flows else None,
        )

    def frame_batch(self, indices: list[int]) -> np.ndarray:
        """(B, H, W, 3) single frames for the VAE."""
        return np.stack([self.stills.clip(i).frames[0] for i in indices])

    def still_batch(self, indices: list[int]) -> ClipBatch:
        """Captioned clips of one frame (B, 1, H, W, 3) for the image stage."""
        stills = [self.stills.clip(i) for i in indices]
        return ClipBatch(np.stack([c.frames[:1] for c in stills]), [c.caption for c in stills])
