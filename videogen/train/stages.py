"""The three training stages as objectives over global sample indices.

* ``vae``: ``AutoencoderKL`` on single frames, ``L = |x - D(z)|^2 + k KL(q(z|x) || N(0, I))`` with
  ``z ~ q(z|x)``. Its scaling factor is set to ``1 / std(z)`` over a fixed set of frames, so the
  diffusion latents have unit variance (as Stable Diffusion's ``0.18215`` does for its VAE).
* ``image`` and ``unet``: text encoder + ``UNet3DConditionModel`` on single frames, then on clips,
  ``L = |y - f_theta(z_t, t, c)|^2`` with ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` and the
  target ``y = eps``, or ``y = v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0`` for a v-prediction model
  (its scheduler's ``prediction_type``). In the ``unet`` stage a ``warped_fraction`` of the samples draw ``eps``
  as Go-with-the-Flow's warped noise along the clip's own flow, degraded by ``gamma ~ U(range)``
  (Burgert et al., CVPR 2025, Sec. 3.3 "noise degradation"; ``Q <- ((1-g)Q + g Z)/sqrt((1-g)^2+g^2)``);
  captions are dropped to ``""`` at ``caption_dropout`` for classifier-free guidance.
* ``trip``: TRIP's Temporal Noise Fusion module on the frozen UNet (:func:`videogen.train.trip.trip_loss`).
* ``layout``: the text-to-layout prior (:mod:`videogen.models.layout_prior`) on the frozen VAE's latents,
  ``L = |m(c, p_f) - z_0^f|^2`` with ``p_f = f / (F - 1)`` and ``z_0`` the posterior mean, over frames
  drawn from a pool of encoded clips; captions are dropped to ``""`` at ``caption_dropout`` (the empty
  caption's layout is the mean of all clips). The object prior (:mod:`videogen.models.object_layout`)
  instead sums three terms from each clip's true object tracks: the field at the true centres,
  ``|z(c, x_f, r) - z_0^f|^2``; the trajectory, ``|s_xy + o(c, s, p_f) - x_f|^2`` in latent pixels over
  the present objects; and the placement quantiles' pinball loss at ``tau ~ U(0, 1)``.

Each objective is an ``nn.Module`` whose ``forward(indices)`` returns the batch's mean loss, so a
data-parallel wrapper can wrap it whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from videogen.models.layout_prior import AnyLayoutPrior, frame_positions
from videogen.models.object_layout import PLACEMENT_VALUES, ObjectLayoutPrior, pinball_loss
from videogen.models.text_condition import unet_text_kwargs
from videogen.models.trip_fusion import TemporalNoiseFusion
from videogen.noise.flow import resize_flow
from videogen.noise.warp import NoiseWarper
from videogen.train.batches import sample_generator
from videogen.train.config import TrainJob
from videogen.train.trip import trip_loss


def to_pixels(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (..., H, W, 3) to float (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2)
    return x.to(device=device, dtype=torch.float32) / 127.5 - 1.0


class VaeObjective(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL, source, job: TrainJob) -> None:
        super().__init__()
        self.vae, self.source, self.job = vae, source, job

    def forward(self, indices: list[int]) -> torch.Tensor:
        device = next(self.vae.parameters()).device
        x = to_pixels(self.source.frame_batch(indices), device)
        posterior = self.vae.encode(x).latent_dist
        draws = [
            torch.randn(posterior.mean.shape[1:], generator=sample_generator(self.job.seed, "vae", i)) for i in indices
        ]
        z = posterior.mean + posterior.std * torch.stack(draws).to(device)
        recon = self.vae.decode(z).sample
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        return F.mse_loss(recon, x) + self.job.vae.kl_weight * kl


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, frames: np.ndarray) -> float:
    """``1 / std`` of the posterior means of ``frames``."""
    device = next(vae.parameters()).device
    z = vae.encode(to_pixels(frames, device)).latent_dist.mean
    return float(1.0 / z.float().std().clamp_min(1e-6))


@torch.no_grad()
def encode_clips(vae: AutoencoderKL, frames: np.ndarray, generators: list[torch.Generator]) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) to scaled latents (B, C, F, h, w), one posterior sample per clip's generator."""
    b, f = frames.shape[:2]
    device = next(vae.parameters()).device
    posterior = vae.encode(to_pixels(frames, device)).latent_dist
    shape = (f, *posterior.mean.shape[1:])
    draws = torch.stack([torch.randn(shape, generator=g) for g in generators]).reshape(b * f, *shape[1:])
    z = (posterior.mean + posterior.std * draws.to(device)) * vae.config.scaling_factor
    return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def warped_clip_noise(
    forward: np.ndarray,
    backward: np.ndarray,
    shape: tuple[int, int, int, int],
    seed: int,
    upsample: int,
    degradation: float,
) -> torch.Tensor:
    """Warped noise (C, F, h, w) along a clip's pixel flows (F-1, 2, H, W), on a grid ``upsample`` x latent."""
    channels, frames, h, w = shape
    warper = NoiseWarper(channels, h, w, seed=seed, upsample=upsample, degradation=degradation)
    grid = warper.grid_size
    out = [warper.noise()]
    for t in range(frames - 1):
        out.append(
            warper.step(
                resize_flow(torch.from_numpy(forward[t]), grid), resize_flow(torch.from_numpy(backward[t]), grid)
            )
        )
    return torch.stack(out, dim=1)


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def unet_draws(
    job: TrainJob,
    indices: list[int],
    latent_shape: tuple[int, ...],
    flows,
    num_timesteps: int,
    stage_name: str = "unet",
) -> tuple[list[bool], torch.Tensor, torch.Tensor]:
    """Per sample, from its own generator in a fixed order: keep its caption, its timestep, its noise.

    ``flows`` is ``(forward, backward)`` pixel flows (B, F-1, 2, H, W), or None for Gaussian noise only
    (always in the ``image`` stage).
    """
    stage, data = job.unet, job.data
    span = stage.timestep_range if stage_name == "unet" else (0.0, 1.0)
    low_t, high_t = (
        round(span[0] * num_timesteps),
        max(round(span[1] * num_timesteps), round(span[0] * num_timesteps) + 1),
    )
    keep, timesteps, noises = [], [], []
    for j, index in enumerate(indices):
        g = sample_generator(job.seed, stage_name, index)
        keep.append(float(torch.rand(1, generator=g)) >= data.caption_dropout)
        timesteps.append(int(torch.randint(low_t, high_t, (1,), generator=g)))
        warped = float(torch.rand(1, generator=g)) < stage.warped_fraction
        low, high = stage.degradation
        gamma = low + (high - low) * float(torch.rand(1, generator=g))
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        if warped and flows is not None:
            noises.append(warped_clip_noise(flows[0][j], flows[1][j], latent_shape, seed, stage.warp_upsample, gamma))
        else:
            noises.append(torch.randn(latent_shape, generator=g))
    return keep, torch.tensor(timesteps), torch.stack(noises)


class UnetObjective(torch.nn.Module):
    """The ``unet`` stage's loss on clips, or with ``stage_name="image"`` the ``image`` stage's on stills."""

    def __init__(
        self,
        unet: UNet3DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        vae: AutoencoderKL,
        scheduler: DDPMScheduler,
        source,
        job: TrainJob,
        stage_name: str = "unet",
    ) -> None:
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.vae = vae.requires_grad_(False).eval()
        self.tokenizer, self.source, self.job, self.stage_name = tokenizer, source, job, stage_name
        self.v_prediction = scheduler.config.prediction_type == "v_prediction"
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    def forward(self, indices: list[int]) -> torch.Tensor:
        device = next(self.unet.parameters()).device
        if self.stage_name == "image":
            warped, batch = False, self.source.still_batch(indices)
        else:
            warped = self.job.unet.warped_fraction > 0
            batch = self.source.clip_batch(indices, flows=warped)
        generators = [sample_generator(self.job.seed, self.stage_name, i + (1 << 40)) for i in indices]
        latents = encode_clips(self.vae, batch.frames, generators)
        flows = (batch.flow_forward, batch.flow_backward) if warped else None
        keep, timesteps, noise = unet_draws(
            self.job, indices, tuple(latents.shape[1:]), flows, len(self.alphas_cumprod), self.stage_name
        )
        captions = [c if k else "" for c, k in zip(batch.captions, keep, strict=True)]
        text = self.text_encoder(tokenize(self.tokenizer, captions).to(device))[0]
        timesteps, noise = timesteps.to(device), noise.to(device)
        abar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
        z_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        pred = self.unet(z_t, timesteps, **unet_text_kwargs(self.unet, text)).sample
        target = abar.sqrt() * noise - (1 - abar).sqrt() * latents if self.v_prediction else noise
        loss = F.mse_loss(pred, target)
        weight = self.job.unet.motion_weight if self.stage_name == "unet" else 0.0
        if weight > 0 and pred.shape[2] > 1:
            error = pred - target
            loss = loss + weight * (error[:, :, 1:] - error[:, :, :-1]).pow(2).mean()
        return loss


class TripObjective(torch.nn.Module):
    def __init__(self, fusion: TemporalNoiseFusion, unet, text_encoder, tokenizer, vae, scheduler, source, job) -> None:
        super().__init__()
        self.fusion = fusion
        self.unet = unet.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval()
        self.tokenizer, self.scheduler, self.source, self.job = tokenizer, scheduler, source, job

    def forward(self, indices: list[int]) -> torch.Tensor:
        device = next(self.fusion.parameters()).device
        batch = self.source.clip_batch(indices, flows=False)
        generators = [sample_generator(self.job.seed, "trip", i) for i in indices]
        latents = encode_clips(self.vae, batch.frames, generators)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.tensor([int(torch.randint(0, steps, (1,), generator=g)) for g in generators])
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators]).to(device)
        with torch.no_grad():
            text = self.text_encoder(tokenize(self.tokenizer, batch.captions).to(device))[0]
        return trip_loss(self.unet, self.fusion, self.scheduler, latents, text, timesteps.to(device), noise)


class LayoutObjective(torch.nn.Module):
    """The layout stage's loss over a fixed pool of clips, encoded once.

    The pool is the source's clips ``first_clip .. first_clip + clips - 1``: their posterior-mean latents,
    caption states and, for the object prior, true object tracks are computed on the first call. Sample
    ``i`` of a step is one frame of one pool clip, with its caption kept or dropped (and, for the object
    prior, its quantile levels ``tau``), all drawn from the sample's own generator, so a resumed or
    data-parallel run sees the samples an uninterrupted single worker sees. A conditional mean needs many
    (caption, frame) pairs more than it needs new clips: reusing the pool costs one VAE pass per clip.
    """

    def __init__(self, prior: AnyLayoutPrior, text_encoder, tokenizer, vae, source, job: TrainJob, first_clip: int = 0):
        super().__init__()
        self.prior = prior
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval()
        self.tokenizer, self.source, self.job, self.first_clip = tokenizer, source, job, first_clip
        self.pool: LayoutPool | None = None

    @torch.no_grad()
    def encode_pool(self) -> LayoutPool:
        device = next(self.prior.parameters()).device
        latents, texts, tracks = [], [], []
        chunk = 16
        first, last = self.first_clip, self.first_clip + self.job.layout.clips
        for start in range(first, last, chunk):
            indices = list(range(start, min(start + chunk, last)))
            batch = self.source.clip_batch(indices, flows=False)
            b, f = batch.frames.shape[:2]
            z = self.vae.encode(to_pixels(batch.frames, device)).latent_dist.mean * self.vae.config.scaling_factor
            latents.append(z.reshape(b, f, *z.shape[1:]))
            texts.append(self.text_encoder(tokenize(self.tokenizer, batch.captions).to(device))[0])
            if isinstance(self.prior, ObjectLayoutPrior):
                tracks.append(self.source.object_tracks(indices, self.prior.config.slots))
        empty = self.text_encoder(tokenize(self.tokenizer, [""]).to(device))[0]
        centres, radii, present = (
            (torch.from_numpy(np.concatenate(part)).to(device) for part in zip(*tracks, strict=True))
            if tracks
            else (None, None, None)
        )
        return LayoutPool(torch.cat(latents), torch.cat(texts), empty, centres, radii, present)

    def forward(self, indices: list[int]) -> torch.Tensor:
        if self.pool is None:
            self.pool = self.encode_pool()
        pool = self.pool
        clips, frames = pool.latents.shape[:2]
        objects = isinstance(self.prior, ObjectLayoutPrior)
        picks, states, taus = [], [], []
        for i in indices:
            g = sample_generator(self.job.seed, "layout", i)
            clip, frame = (
                int(torch.randint(0, clips, (1,), generator=g)),
                int(torch.randint(0, frames, (1,), generator=g)),
            )
            keep = float(torch.rand(1, generator=g)) >= self.job.data.caption_dropout
            picks.append((clip, frame))
            states.append(pool.texts[clip] if keep else pool.empty[0])
            if objects:
                taus.append(torch.rand(self.prior.config.slots * PLACEMENT_VALUES, generator=g))
        target = torch.stack([pool.latents[c, f] for c, f in picks])
        positions = frame_positions(range(frames), frames)[[f for _, f in picks]].to(target.device)
        text = torch.stack(states)
        if not objects:
            return F.mse_loss(self.prior(text, positions), target)
        clip_rows, frame_rows = [c for c, _ in picks], [f for _, f in picks]
        centres, radii, present = pool.centres[clip_rows, frame_rows], pool.radii[clip_rows], pool.present[clip_rows]
        starts = pool.centres[clip_rows, 0]
        placement = torch.cat([starts, radii[..., None]], -1).flatten(1)  # (B, 3 S): (x, y, r) per slot
        embedding = self.prior.embed(text)
        field = F.mse_loss(self.prior.field(embedding, centres, radii, present), target)
        moved = starts + self.prior.trajectory(embedding, placement, positions)
        cfg = self.prior.config
        pixels = torch.tensor([cfg.latent_width, cfg.latent_height], device=moved.device)  # errors in latent pixels
        path = ((((moved - centres) * pixels) ** 2).sum(-1) * present).mean()
        tau = torch.stack(taus).to(target.device)
        return field + path + pinball_loss(self.prior.placement_quantiles(text, tau), tau, placement)


@dataclass
class LayoutPool:
    """The layout stage's encoded clips: latents ``(N, F, C, h, w)``, caption states ``(N, L, D)``, the empty
    caption's ``(1, L, D)``, and for the object prior the true tracks (:meth:`ShapesSource.object_tracks`:
    centres ``(N, F, S, 2)``, radii and ``present`` ``(N, S)``; None for the mean prior)."""

    latents: torch.Tensor
    texts: torch.Tensor
    empty: torch.Tensor
    centres: torch.Tensor | None
    radii: torch.Tensor | None
    present: torch.Tensor | None
