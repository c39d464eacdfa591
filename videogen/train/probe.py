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

from videogen.data.shapes import DIRECTIONS, PALETTE, ShapesWorld, WorldSpec, caption_for, redraw_scene, render_scene
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


def _altered_scene(scene, attribute: str):
    """``scene`` with its first object's colour (the next palette colour) or direction (the opposite) changed."""
    obj = scene.objects[0]
    if attribute == "colour":
        colours = list(PALETTE)
        obj = replace(obj, colour=colours[(colours.index(obj.colour) + 1) % len(colours)])
    elif attribute == "direction":
        obj = replace(obj, direction=OPPOSITE[obj.direction])
    else:
        raise ValueError(f"unknown attribute {attribute!r}: colour or direction")
    return replace(scene, objects=(obj, *scene.objects[1:]))


def _altered(scene, attribute: str) -> str:
    return caption_for(_altered_scene(scene, attribute))


def probe_world(frames: int = 16, seed: int = 123) -> ShapesWorld:
    """The probe's clips: one moving object, no camera pan, 64x64."""
    spec = WorldSpec(width=64, height=64, frames=frames, two_objects=0.0, still=0.0, pan=0.0, size_range=(0.15, 0.22))
    return ShapesWorld(spec, seed=seed)


@dataclass
class OracleGaps:
    """The caption probe's gaps for the best predictions when a clip's frames are pure noise, in pixels.

    ``frame_aware``: predictions that know each frame's index; ``frame_blind``: the same averaged over
    the clip's frames, the best a predictor can do that treats every frame alike.
    """

    samples: int
    frame_aware: dict[str, float]
    frame_blind: dict[str, float]


def caption_oracle(clips: int = 12, draws: int = 150, seed: int = 123, frames: int = 16) -> OracleGaps:
    """What the caption probe's gaps could be, measured from the world alone (no model).

    At the highest noise ``z_t`` carries nothing of the clip, and the loss-minimising prediction of
    its frames is the conditional mean ``m_c = E[x | c]``: estimated here as the mean of ``draws``
    clips drawn with caption ``c`` (:func:`videogen.data.shapes.redraw_scene`; sizes, starts and
    backgrounds afresh). The gap of an altered caption ``c'`` is ``|x - m_c'|^2 / |x - m_c|^2 - 1``
    over pixels in [0, 1], averaged over the probe's clips. A predictor that treats frames alike
    (a UNet with no temporal position) can reach at best ``mean_f m_c`` in every frame; for a
    direction flipped to its opposite that mean is the same path run backwards, so its gap is zero
    for paths that fit the frame (a path that bounces can differ slightly from its reverse), up to
    the sampling error of ``draws``.
    """
    world = probe_world(frames, seed)
    rng = np.random.default_rng(seed)
    attributes = ("colour", "direction")
    aware: dict[str, list[float]] = {a: [] for a in attributes}
    blind: dict[str, list[float]] = {a: [] for a in attributes}

    def mean_clip(scene) -> np.ndarray:
        total = sum(render_scene(redraw_scene(rng, world.spec, scene)).frames.astype(np.float64) for _ in range(draws))
        return total / (255.0 * draws)

    for index in range(clips):
        scene = world.scene(index)
        x = render_scene(scene).frames.astype(np.float64) / 255.0
        means = {"true": mean_clip(scene)}
        for a in attributes:
            means[a] = mean_clip(_altered_scene(scene, a))
        for table, blur in ((aware, False), (blind, True)):
            m = {k: np.broadcast_to(v.mean(axis=0), v.shape) if blur else v for k, v in means.items()}
            base = float(np.mean((x - m["true"]) ** 2))
            for a in attributes:
                table[a].append(float(np.mean((x - m[a]) ** 2)) / base - 1.0)
    return OracleGaps(
        samples=clips,
        frame_aware={a: float(np.mean(v)) for a, v in aware.items()},
        frame_blind={a: float(np.mean(v)) for a, v in blind.items()},
    )


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
    world = probe_world(frames, seed)
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
