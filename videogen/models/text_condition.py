"""The text inputs of a UNet call: cross-attention states, plus a pooled caption where the UNet takes one.

A ``UNet3DConditionModel`` built with ``time_cond_proj_dim`` adds ``W c`` to its timestep embedding
(diffusers' ``TimestepEmbedding.cond_proj``), where ``c`` is its ``timestep_cond``. This project feeds
it the caption pooled over tokens, ``c = (1/L) sum_l h_l`` of the text encoder's last hidden states
``h`` (``L`` tokens, padding included), so every ResNet block sees the caption through the time
embedding as well as through cross-attention (as class labels condition ADM; Dhariwal & Nichol,
2021, Sec. 3).

Every UNet call (rendering, every training stage) goes through :func:`unet_text_kwargs`, so a model
with the pooled input renders in every parallel mode unchanged. With a per-frame prompt schedule
the pooled caption is the first frame's (the schedule still reaches every frame through
cross-attention).
"""

from __future__ import annotations

from typing import Any

import torch


def pooled_text_dim(unet: torch.nn.Module) -> int | None:
    """The width of the pooled caption the UNet's time embedding takes, or None."""
    config = getattr(unet, "config", None)
    return getattr(config, "time_cond_proj_dim", None) if config is not None else None


def unet_text_kwargs(unet: torch.nn.Module, context: torch.Tensor) -> dict[str, Any]:
    """``encoder_hidden_states`` (B, L, D), and ``timestep_cond`` (B, D) when the UNet takes a pooled caption."""
    kwargs: dict[str, Any] = {"encoder_hidden_states": context}
    width = pooled_text_dim(unet)
    if width is not None:
        if context.shape[-1] != width:
            raise ValueError(
                f"the UNet's time embedding takes a pooled caption of width {width} (time_cond_proj_dim), "
                f"but the text encoder gives {context.shape[-1]}"
            )
        kwargs["timestep_cond"] = context.mean(dim=1)
    return kwargs
