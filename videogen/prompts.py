"""Prompt schedules: which text conditions each global frame, and its CLIP embeddings.

UNet3D folds frames into the batch before its spatial layers, so every frame can attend to its
own text embedding. With one prompt, all frames share one embedding (the model's ordinary
path). With a schedule, frame ``f`` gets the embedding of the segment that covers it (a boundary
given as a share of the video stands for its frame, :func:`videogen.config.schedule_spans`); with
``blend_frames = b > 0``, the ``b`` frames centred on a boundary between segments A and B (the last
``b // 2`` of A and the first ``b - b // 2`` of B) get ``(1 - w) * E_A + w * E_B`` with ``w`` rising
linearly from ``1/(2b)`` to ``1 - 1/(2b)``. Every frame's weights therefore come from its own segment
and at most one neighbour, and sum to 1; a segment too short to give its boundaries those frames is
refused when the job is validated (``prompts.blend_frames``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videogen.config import PromptsConfig, blend_split, schedule_spans
from videogen.errors import ConfigError


@dataclass(frozen=True)
class FrameWeights:
    """Frame ``f`` is ``sum(w * E[segment])`` over its (segment index, weight) pairs."""

    pairs: tuple[tuple[int, float], ...]


def segment_texts(cfg: PromptsConfig) -> list[str]:
    return [seg.text for seg in cfg.schedule] if cfg.schedule else [cfg.text]


def frame_weights(cfg: PromptsConfig, num_frames: int) -> list[FrameWeights]:
    """For every global frame, which segments' embeddings it mixes, and how."""
    if not cfg.schedule:
        return [FrameWeights(((0, 1.0),))] * num_frames
    owner = [0] * num_frames
    for index, (start, end) in enumerate(schedule_spans(cfg.schedule, num_frames)):
        for f in range(start, end):
            owner[f] = index
    weights = [FrameWeights(((owner[f], 1.0),)) for f in range(num_frames)]
    b = cfg.blend_frames
    if b <= 0:
        return weights
    blended = [False] * num_frames
    for boundary in range(1, num_frames):
        before, after = owner[boundary - 1], owner[boundary]
        if before == after:
            continue
        first = boundary - blend_split(b)[0]
        for k in range(b):
            f = first + k
            if not 0 <= f < num_frames or blended[f] or owner[f] not in (before, after):
                raise ConfigError(
                    f"prompts.blend_frames: {b} blended frames around frame {boundary} reach beyond the two "
                    "segments that meet there; use fewer blended frames or longer segments"
                )
            blended[f] = True
            w = (k + 0.5) / b
            weights[f] = FrameWeights(((before, 1.0 - w), (after, w)))
    return weights


@torch.no_grad()
def encode_texts(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """CLIP last hidden states ``(len(texts), L, D)``, tokenised as diffusers' T2V pipeline does."""
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    mask = tokens.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


@dataclass
class TextContext:
    """Conditional and unconditional embeddings for the frames one worker renders.

    ``cond`` is ``(1, L, D)`` when every frame shares a prompt, else ``(F_local, L, D)``;
    ``uncond`` is always ``(1, L, D)``.
    """

    cond: torch.Tensor
    uncond: torch.Tensor

    @property
    def per_frame(self) -> bool:
        return self.cond.shape[0] > 1


def build_text_context(tokenizer, text_encoder, cfg: PromptsConfig, num_frames: int, frames: range) -> TextContext:
    """Encode each distinct prompt once and mix per frame for the frames in ``frames``."""
    segment_embeds = encode_texts(tokenizer, text_encoder, segment_texts(cfg))
    uncond = encode_texts(tokenizer, text_encoder, [cfg.negative])
    if not cfg.schedule:
        return TextContext(segment_embeds, uncond)
    weights = frame_weights(cfg, num_frames)
    per_frame = [sum(w * segment_embeds[i] for i, w in weights[f].pairs) for f in frames]
    return TextContext(torch.stack(per_frame), uncond)
