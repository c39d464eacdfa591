"""Decoding a video split by clips with a temporal decoder (Stable Video Diffusion's VAE).

A temporal decoder mixes the frames it decodes together, so a clip decoded alone differs from the
same frames of a whole-video decode. Each clip worker therefore decodes its frames with ``halo``
latent frames of its neighbouring clips beside them (:func:`decode_context`, one halo exchange on the
clip axis) and keeps its own frames (:func:`segment_window`). The difference from one whole-video
decode is left near the clip boundaries, shrinking with the halo; docs/svd.md measures it.
A per-frame VAE (halo ``None`` from its family) needs none of this and exchanges nothing.
"""

from __future__ import annotations

import torch

from parallel.comm import AxisComm

__all__ = ["context_bytes", "decode_context", "segment_window"]


def decode_context(comm: AxisComm, latents: torch.Tensor, halo: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """This clip's latents ``(1, C, F, h, w)`` with ``halo`` frames of each neighbouring clip beside them
    (one halo exchange on the clip axis, ``kind="decode_halo"``), and how many came from each side."""
    if halo == 0 or comm.size == 1:
        return latents, (0, 0)
    left, right = comm.halo_exchange(latents.contiguous(), 2, halo, "decode_halo")
    joined = torch.cat([p for p in (left, latents, right) if p is not None], dim=2)
    return joined, (0 if left is None else halo, 0 if right is None else halo)


def context_bytes(clips: list[range], rank: int, halo: int, frame_bytes: float) -> float:
    """Bytes clip worker ``rank`` receives in :func:`decode_context`: ``halo`` latent frames of ``frame_bytes``
    each from every neighbouring clip."""
    if halo == 0 or len(clips) == 1:
        return 0.0
    return sum(1 for peer in (rank - 1, rank + 1) if 0 <= peer < len(clips)) * halo * frame_bytes


def segment_window(clip: range, context: tuple[int, int], share: range, halo: int) -> tuple[slice, tuple[int, int]]:
    """Which frames of a clip's latents with ``context`` (from :func:`decode_context`) decode ``share``: a slice
    of them holding ``share`` with up to ``halo`` frames each side, and the ``(left, right)`` context within it."""
    first, last = clip.start - context[0], clip.stop + context[1]
    lo, hi = max(first, share.start - halo), min(last, share.stop + halo)
    return slice(lo - first, hi - first), (share.start - lo, hi - share.stop)
