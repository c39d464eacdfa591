"""Per-frame text conditioning for a video UNet's spatial cross-attention, installed as processors.

Video UNets repeat one text embedding per batch item over its frames
(``encoder_hidden_states.repeat_interleave(F)``) before the spatial cross-attention. To give each
frame its own prompt, the processors of the cross-attentions (the model family names them; never
the temporal blocks, whose attentions are self-attention over frames) are wrapped: the wrapper swaps
the repeated context for a ``(B*F, L, D)`` tensor held in a shared :class:`FrameContext` and calls
the original processor. Removing the wrappers restores the original processors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FrameContext:
    """The ``(B*F, L, D)`` embeddings (batch-major, frame-minor) for the next UNet call."""

    embeds: torch.Tensor | None = None


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


def install_frame_context(unet: torch.nn.Module, context: FrameContext, keys: set[str]):
    """Wrap the processors of the cross-attentions ``keys``; returns a function that removes the wraps."""
    original = unet.attn_processors
    wrapped = {key: FrameContextProcessor(proc, context) if key in keys else proc for key, proc in original.items()}
    unet.set_attn_processor(wrapped)

    def remove() -> None:
        current = unet.attn_processors
        unet.set_attn_processor({k: p.inner if isinstance(p, FrameContextProcessor) else p for k, p in current.items()})

    return remove
