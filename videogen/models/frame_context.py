"""Per-frame text conditioning for UNet3D's spatial cross-attention, installed as processors.

UNet3D repeats one text embedding per batch item over its frames
(``encoder_hidden_states.repeat_interleave(F)``) before the spatial cross-attention. To give each
frame its own prompt, the processors of the spatial ``attn2`` modules (never the temporal
blocks, whose ``attn2`` is self-attention over frames) are wrapped: the wrapper swaps the
repeated context for a ``(B*F, L, D)`` tensor held in a shared :class:`FrameContext` and calls
the original processor. Removing the wrappers restores the original processors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet3DConditionModel


@dataclass
class FrameContext:
    """The ``(B*F, L, D)`` embeddings (batch-major, frame-minor) for the next UNet call."""

    embeds: torch.Tensor | None = None


def is_spatial_cross_attention(processor_key: str) -> bool:
    """True for ``...attentions.N.transformer_blocks.M.attn2.processor`` outside temporal blocks."""
    parts = processor_key.split(".")
    return (
        "attn2" in parts and "attentions" in parts and "temp_attentions" not in parts and (parts[0] != "transformer_in")
    )


class FrameContextProcessor:
    def __init__(self, inner, context: FrameContext):
        self.inner = inner
        self.context = context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        embeds = self.context.embeds
        if embeds is not None:
            if embeds.shape[0] != hidden_states.shape[0]:
                raise RuntimeError(
                    f"per-frame context has {embeds.shape[0]} rows for a batch of {hidden_states.shape[0]}"
                )
            encoder_hidden_states = embeds
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def install_frame_context(unet: UNet3DConditionModel, context: FrameContext):
    """Wrap the spatial cross-attention processors; returns a function that removes the wraps."""
    original = unet.attn_processors
    wrapped = {
        key: FrameContextProcessor(proc, context) if is_spatial_cross_attention(key) else proc
        for key, proc in original.items()
    }
    unet.set_attn_processor(wrapped)

    def remove() -> None:
        current = unet.attn_processors
        unet.set_attn_processor({k: p.inner if isinstance(p, FrameContextProcessor) else p for k, p in current.items()})

    return remove
