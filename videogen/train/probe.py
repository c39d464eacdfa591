"""Does a model use a word of its captions? The denoising loss with the true caption against an altered one.

For clips ``x`` of the shapes world, timesteps ``t`` and noise ``e`` (the same for every caption), the
training objective ``L(c) = || f(z_t, t, c) - y ||^2`` (``y`` the scheduler's target, ``v`` or ``e``)
is measured with the clip's own caption ``c`` and with the caption that changes one attribute of its
object: its colour (another palette colour) or its direction (the opposite one). A model that uses the
attribute predicts better with the true caption, so the relative gap ``(L(c') - L(c)) / L(c)`` is
above zero and ``L(c') > L(c)`` holds for most samples; a model that ignores it has a gap of about
zero and wins half the samples. Unlike rendering and scoring, this needs no sampling and isolates the
text path: how strongly each word reaches the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from videogen.data.shapes import DIRECTIONS, PALETTE, ShapesWorld, WorldSpec, caption_for
from videogen.models.loader import ModelBundle
from videogen.models.text_condition import unet_text_kwargs
from videogen.prompts import encode_texts
from videogen.train.stages import encode_clips

OPPOSITE = {
    name: next(other for other, (ox, oy) in DIRECTIONS.items() if (ox, oy) == (-dx, -dy) and other != "still")
    for name, (dx, dy) in DIRECTIONS.items()
    if name != "still"
}
"""Each direction's opposite (``right`` -> ``left``, ``up-right`` -> ``down-left``, ...)."""


@dataclass
class CaptionSensitivity:
    """Mean losses with the true and each altered caption, over every (clip, timestep) sample."""

    samples: int
    loss_true: float
    loss_altered: dict[str, float]
    altered_worse: dict[str, float]  # share of samples where the altered caption's loss is higher

    def gap(self, attribute: str) -> float:
        """``(L(altered) - L(true)) / L(true)``."""
        return (self.loss_altered[attribute] - self.loss_true) / self.loss_true


def _altered(scene, attribute: str) -> str:
    obj = scene.objects[0]
    if attribute == "colour":
        colours = list(PALETTE)
        obj = replace(obj, colour=colours[(colours.index(obj.colour) + 1) % len(colours)])
    elif attribute == "direction":
        obj = replace(obj, direction=OPPOSITE[obj.direction])
    else:
        raise ValueError(f"unknown attribute {attribute!r}: colour or direction")
    return caption_for(replace(scene, objects=(obj, *scene.objects[1:])))


@torch.no_grad()
def caption_sensitivity(
    bundle: ModelBundle,
    clips: int = 12,
    timesteps: tuple[int, ...] = (300, 600, 900),
    seed: int = 123,
    frames: int = 16,
) -> CaptionSensitivity:
    """The loss with the true caption and with its colour or direction changed, on ``clips`` moving single
    objects of a 64x64 shapes world (no camera pan), at each of ``timesteps``."""
    spec = WorldSpec(width=64, height=64, frames=frames, two_objects=0.0, still=0.0, pan=0.0, size_range=(0.15, 0.22))
    world = ShapesWorld(spec, seed=seed)
    v_prediction = bundle.scheduler_config.get("prediction_type", "epsilon") == "v_prediction"
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(bundle.scheduler_config)
    abars = scheduler.alphas_cumprod.float()
    device, dtype = bundle.device, next(bundle.unet.parameters()).dtype
    attributes = ("colour", "direction")
    true, altered = [], {a: [] for a in attributes}
    for index in range(clips):
        clip = world.clip(index)
        generator = torch.Generator().manual_seed(seed * 1000 + index)
        latents = encode_clips(bundle.vae, clip.frames[None], [generator]).to(device)
        captions = [clip.caption, *(_altered(clip.scene, a) for a in attributes)]
        context = encode_texts(bundle.tokenizer, bundle.text_encoder, captions).to(device=device, dtype=dtype)
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=generator).to(device)
            abar = abars[t].to(device)
            z_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
            target = abar.sqrt() * noise - (1 - abar).sqrt() * latents if v_prediction else noise
            losses = []
            for k in range(len(captions)):
                step = torch.tensor([t], device=device)
                text = unet_text_kwargs(bundle.unet, context[k : k + 1])
                pred = bundle.unet(z_t.to(dtype), step, **text).sample.float()
                losses.append(torch.mean((pred - target) ** 2).item())
            true.append(losses[0])
            for a, loss in zip(attributes, losses[1:], strict=True):
                altered[a].append(loss)
    base = np.array(true)
    return CaptionSensitivity(
        samples=len(true),
        loss_true=float(base.mean()),
        loss_altered={a: float(np.mean(v)) for a, v in altered.items()},
        altered_worse={a: float(np.mean(np.array(v) > base)) for a, v in altered.items()},
    )
