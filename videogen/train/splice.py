"""The splice test: would a model keep the prompted motion if its first sampling steps placed the object
where the caption says?

A model that treats every frame alike cannot use a direction word at the highest noise levels
(:func:`videogen.train.probe.caption_oracle`). This test measures what that costs in rendered videos.
For the first sampling steps (timesteps ``t >= until``) the model's prediction is replaced by the one
implied by the caption's mean clip, ``x0_hat = m_c = E[z_0 | c]`` per latent frame (estimated from
``draws`` clips of the shapes world redrawn with the prompt's caption and encoded by the model's VAE):

    eps_hat = (z_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t),   v_hat = sqrt(abar_t) eps_hat - sqrt(1 - abar_t) x0_hat.

Below ``until`` the model denoises as usual (DDIM, classifier-free guidance), and the video is scored
against its prompt (:func:`videogen.data.measure.score_video`). ``frame_aware=False`` replaces
``m_c`` by its mean over the frames, the best such start for a frame-blind model: the difference
between the two is what knowing each frame's place in the clip is worth at high noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from videogen.data.measure import parse_caption, score_video
from videogen.data.shapes import WorldSpec, redraw_scene, render_scene
from videogen.decode import decode_chunks, to_uint8
from videogen.eval.prompts import single_object_prompts
from videogen.models.loader import ModelBundle
from videogen.models.text_condition import unet_text_kwargs
from videogen.models.vae_encode import encode_posterior
from videogen.prompts import TextContext, encode_texts
from videogen.sampling import Denoiser, make_scheduler, run_steps
from videogen.train.probe import probe_world
from videogen.train.stages import to_pixels


@dataclass(frozen=True)
class SpliceResult:
    """Counts over ``renders`` videos whose steps at ``t >= until`` took the caption's mean clip."""

    until: int
    frame_aware: bool
    renders: int
    direction: int  # within 22.5 degrees of the prompted direction
    near: int  # within 45 degrees
    colour: int


def caption_mean_latents(vae, caption: str, spec: WorldSpec, rng: np.random.Generator, draws: int) -> torch.Tensor:
    """``E[z_0 | caption]`` per frame, ``(1, C, F, h, w)``: the mean VAE latent (posterior means, scaled) of
    ``draws`` clips of ``spec`` redrawn with ``caption``'s objects and camera pan."""
    template = parse_caption(caption).scene
    total = None
    for _ in range(draws):
        frames = render_scene(redraw_scene(rng, spec, template)).frames
        latent = encode_posterior(vae, to_pixels(frames[None], vae.device)).mean * vae.config.scaling_factor
        total = latent if total is None else total + latent
    mean = total / draws  # (F, C, h, w)
    return mean.permute(1, 0, 2, 3)[None].float()


class CaptionMeanStart:
    """A UNet call (:class:`videogen.sampling.Denoiser`'s ``call``) that answers with the caption mean's
    implied output at timesteps ``>= until`` and asks the UNet below."""

    def __init__(self, unet: torch.nn.Module, mean: torch.Tensor, until: int, alphas_cumprod: torch.Tensor, v: bool):
        self.unet, self.mean, self.until, self.abars, self.v = unet, mean, until, alphas_cumprod, v

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, branches) -> torch.Tensor:
        if int(timestep) < self.until:
            return self.unet(sample, timestep, **unet_text_kwargs(self.unet, context)).sample
        abar = self.abars[int(timestep)].to(sample.device)
        x0 = self.mean.to(sample).expand_as(sample)
        eps = (sample - abar.sqrt() * x0) / (1 - abar).sqrt()
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0 if self.v else eps


@torch.no_grad()
def spliced_directions(
    bundle: ModelBundle,
    until: int,
    *,
    frame_aware: bool = True,
    prompts: int = 20,
    draws: int = 48,
    steps: int = 25,
    guidance: float = 6.0,
    seed: int = 1000,
    frames: int = 16,
    world_seed: int = 5,
) -> SpliceResult:
    """Render ``prompts`` single-object captions (:func:`videogen.eval.prompts.single_object_prompts`) at
    64x64 with the caption's mean clip standing in for the UNet at timesteps ``>= until``; count how many
    move as prompted. ``until`` above the largest sampling timestep leaves every step to the model."""
    spec = probe_world(frames).spec
    rng = np.random.default_rng(world_seed)
    scheduler = make_scheduler("ddim", bundle.scheduler_config)
    v = scheduler.config.prediction_type == "v_prediction"
    unet, vae, device = bundle.unet, bundle.vae, bundle.device
    dtype = next(unet.parameters()).dtype
    h, w = 64 // bundle.vae_scale_factor, 64 // bundle.vae_scale_factor
    counts = {"direction": 0, "near": 0, "colour": 0}
    for caption in single_object_prompts(prompts):
        mean = caption_mean_latents(vae, caption, spec, rng, draws)
        if not frame_aware:
            mean = mean.mean(dim=2, keepdim=True).expand_as(mean)
        text = encode_texts(bundle.tokenizer, bundle.text_encoder, [caption, ""]).to(device=device, dtype=dtype)
        call = CaptionMeanStart(unet, mean, until, scheduler.alphas_cumprod, v)
        denoiser = Denoiser(unet, TextContext(text[:1], text[1:]), guidance, call=call)
        scheduler.set_timesteps(steps, device=device)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, bundle.latent_channels, frames, h, w), generator=generator).to(device)
        latents = run_steps(denoiser, scheduler, noise * scheduler.init_noise_sigma, range(frames))
        video = np.concatenate([to_uint8(chunk) for chunk in decode_chunks(vae, latents, frames)])
        score = score_video(video, caption)
        counts["direction"] += bool(score.direction_ok)
        counts["near"] += bool(score.direction_near)
        counts["colour"] += bool(score.colour_ok)
    return SpliceResult(until, frame_aware, prompts, **counts)
