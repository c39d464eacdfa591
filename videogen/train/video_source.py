"""Training samples from a user's videos (:class:`videogen.data.video_clips.VideoClipDataset`).

Sample ``i`` is ``dataset.sample(i, seed)``: the same clip on every worker and after a resume. The
flow warped-noise training follows is OpenCV's optical flow between consecutive clip frames.
"""

from __future__ import annotations

import re

import numpy as np

from videogen.data.video_clips import VideoClipDataset, clip_flows
from videogen.train.batches import ClipBatch
from videogen.train.config import DataSection


class VideoSource:
    """Clips, single frames and flows of the videos named by ``data.videos`` / ``data.manifest``."""

    def __init__(self, data: DataSection) -> None:
        sources = list(data.videos) + ([data.manifest] if data.manifest else [])
        self.seed = data.seed
        self.clips = VideoClipDataset(
            sources, data.frames, data.frame_stride, data.width, data.height, backend=data.backend
        )

    def words(self) -> list[str]:
        """Every word of the captions (the tokenizer keeps them whole)."""
        captions = (self.clips.caption(i) for i in range(len(self.clips)))
        return sorted({word for caption in captions for word in re.findall(r"[a-z]+", caption.lower())})

    def clip_batch(self, indices: list[int], flows: bool = True) -> ClipBatch:
        samples = [self.clips.sample(i, self.seed) for i in indices]
        frames = np.stack([clip for clip, _ in samples])
        batch = ClipBatch(frames, [caption for _, caption in samples])
        if flows:
            size = frames.shape[2:4]
            pairs = [clip_flows(clip, size) for clip in frames]
            batch.flow_forward = np.stack([np.stack([f.numpy() for f, _ in p]) for p in pairs])
            batch.flow_backward = np.stack([np.stack([b.numpy() for _, b in p]) for p in pairs])
        return batch

    def still_batch(self, indices: list[int]) -> ClipBatch:
        """One frame of each sample's clip (frame ``i mod F``) as a clip of one frame, with its caption."""
        samples = [self.clips.sample(i, self.seed) for i in indices]
        frames = [clip[i % self.clips.frames][None] for i, (clip, _) in zip(indices, samples, strict=True)]
        return ClipBatch(np.stack(frames), [caption for _, caption in samples])

    def frame_batch(self, indices: list[int]) -> np.ndarray:
        """One frame of each sample's clip (frame ``i mod F``), for the VAE."""
        return np.stack([self.clips.sample(i, self.seed)[0][i % self.clips.frames] for i in indices])
