"""TRIP's image noise prior for image-to-video (Zhang et al., CVPR 2024, arXiv 2403.17005, Sec. 3.2).

Forward process (DDPM family): ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``. Assuming every frame's
clean latent is the given image's latent ``z0``, one backward step from the current noisy latent of
frame ``i`` gives the **image noise prior**

    eps_prior_i = (z_t_i - sqrt(abar_t) z0) / sqrt(1 - abar_t),

exact for the image frame (it is the noise that was added) and off by ``sqrt(abar_t / (1 - abar_t))
(z_0_i - z0)`` for the others. Its other forms: v-prediction ``v_prior = sqrt(abar_t) eps_prior -
sqrt(1 - abar_t) z0``; flow matching (``x_s = (1 - s) z_0 + s eps``) ``eps_prior = (x_s - (1 - s) z0) / s``
and velocity ``u_prior = eps_prior - z0 = (x_s - z0) / s``.

All three are ``eps_prior = (x - a z0) / b`` for the model input ``x = a z_0 + b eps`` at the current
noise level (:class:`NoiseLevel`), which is how the hook handles every scheduler.

Training-free image-to-video (TRIP's shortcut path with a fixed linear fusion, its "TRIP^W" ablation)
fuses the model's prediction with the prior per frame (in epsilon space, or equivalently in the
model's output form, which is affine in epsilon):

    eps_i = w_i eps_prior_i + (1 - w_i) eps_model_i,

with ``w_i`` from a :class:`PriorSchedule` (global frame index ``i``, step index). A trained
:class:`~videogen.models.trip_fusion.TemporalNoiseFusion` replaces the linear fusion when given.
The prior of frame ``i`` needs only frame ``i``'s latent and ``z0``, so a clip worker computes its
own frames given ``z0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from videogen.errors import ConfigError
from videogen.models.vae_encode import encode_posterior
from videogen.sampling import StepContext, StepHook

PredictionForm = Literal["epsilon", "v_prediction", "flow"]
ScheduleKind = Literal["linear", "exponential", "constant"]
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "exponential", "constant")
_FLOW_SCHEDULERS = (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)


# -- the prior, as pure functions ---------------------------------------------------------------


def epsilon_prior(z_t: torch.Tensor, z0: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """``(z_t - sqrt(abar) z0) / sqrt(1 - abar)``: the noise that takes ``z0`` to ``z_t`` (TRIP Eq. for eps^{i->1})."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=z_t.dtype, device=z_t.device)
    return (z_t - alpha_bar.sqrt() * z0) / (1 - alpha_bar).sqrt()


def v_prior(z_t: torch.Tensor, z0: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """The prior as a v-prediction: ``sqrt(abar) eps_prior - sqrt(1 - abar) z0``."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=z_t.dtype, device=z_t.device)
    return alpha_bar.sqrt() * epsilon_prior(z_t, z0, alpha_bar) - (1 - alpha_bar).sqrt() * z0


def flow_epsilon_prior(x: torch.Tensor, z0: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow matching ``x = (1 - s) z_0 + s eps``: ``eps_prior = (x - (1 - s) z0) / s``."""
    return (x - (1 - sigma) * z0) / sigma


def flow_velocity_prior(x: torch.Tensor, z0: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow matching velocity prior ``u = eps_prior - z0 = (x - z0) / s``."""
    return (x - z0) / sigma


# -- noise levels and prediction forms of diffusers schedulers ------------------------------------


@dataclass(frozen=True)
class NoiseLevel:
    """The model input at this step is ``x = alpha z_0 + sigma eps``; the model predicts ``form``.

    VP schedulers: ``alpha = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)`` (Euler-type schedulers keep
    ``x / alpha`` as their latents; ``scale_model_input`` maps them back). Flow matching:
    ``alpha = 1 - s``, ``sigma = s``.
    """

    form: PredictionForm
    alpha: float
    sigma: float

    def prior(self, x: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        """``eps_prior = (x - alpha z0) / sigma``."""
        return (x - self.alpha * z0) / self.sigma

    def prior_output(self, x: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        """The prior in the model's own output form: epsilon; v ``(alpha x - z0) / sigma`` (VP, using
        ``alpha^2 + sigma^2 = 1``); flow velocity ``(x - z0) / sigma``. Defined wherever ``sigma > 0``."""
        if self.form == "epsilon":
            return self.prior(x, z0)
        if self.form == "v_prediction":
            return (self.alpha * x - z0) / self.sigma
        return (x - z0) / self.sigma

    def to_epsilon(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model output to epsilon: v -> ``alpha v + sigma x``; flow velocity -> ``x + alpha u``."""
        if self.form == "epsilon":
            return output
        if self.form == "v_prediction":
            return self.alpha * output + self.sigma * x
        return x + self.alpha * output

    def from_epsilon(self, eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_epsilon` (needs ``alpha > 0``)."""
        if self.form == "epsilon":
            return eps
        if self.form == "v_prediction":
            return (eps - self.sigma * x) / self.alpha
        return (eps - x) / self.alpha


def prediction_form(scheduler: SchedulerMixin) -> PredictionForm:
    """``flow`` for flow-matching schedulers, else the scheduler's ``prediction_type``."""
    if isinstance(scheduler, _FLOW_SCHEDULERS):
        return "flow"
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise ConfigError(f"image: the image prior needs an epsilon or v-prediction model, this one predicts {kind!r}")
    return kind


def alpha_bar_at(scheduler: SchedulerMixin, index: int, timestep: torch.Tensor | float) -> float:
    """``abar`` of step ``index``: from the scheduler's sigmas (``1 / (1 + sigma^2)``) when it keeps
    them (Euler, DPM-Solver, UniPC: fractional or Karras timesteps), else ``alphas_cumprod[t]``."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and index < len(sigmas):
        sigma = float(sigmas[index])
        return 1.0 / (1.0 + sigma * sigma)
    return float(scheduler.alphas_cumprod[int(timestep)])


def noise_level(scheduler: SchedulerMixin, index: int, timestep: torch.Tensor | float) -> NoiseLevel:
    """The :class:`NoiseLevel` of step ``index`` (at ``timestep``) of a set-up ``scheduler``."""
    form = prediction_form(scheduler)
    if form == "flow":
        sigma = float(scheduler.sigmas[index])
        return NoiseLevel(form, 1.0 - sigma, sigma)
    abar = alpha_bar_at(scheduler, index, timestep)
    return NoiseLevel(form, math.sqrt(abar), math.sqrt(1.0 - abar))


def model_input(scheduler: SchedulerMixin, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The latents as the model sees them (Euler-type schedulers divide by ``sqrt(1 + sigma^2)``)."""
    if isinstance(scheduler, _FLOW_SCHEDULERS):
        return latents
    return scheduler.scale_model_input(latents, timestep)


# -- frame weights --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriorSchedule:
    """Weight ``w_i`` of the prior for global frame ``i`` at step ``k`` of ``N``.

    Decay with the frame index: ``linear`` ``d(i) = max(0, 1 - i / decay_frames)``, ``exponential``
    ``d(i) = exp(-i / decay_frames)``, ``constant`` ``d(i) = 1``; ``lambda_i = floor + (first - floor) d(i)``.
    The prior is active for the first ``ceil(active_fraction N)`` steps: ``w_i = lambda_i`` there, else 0,
    except frame 0 keeps ``w_0 = first`` at every step when ``pin_first_frame``.
    """

    kind: ScheduleKind = "linear"
    first: float = 1.0
    floor: float = 0.0
    decay_frames: float = 16.0
    active_fraction: float = 0.5
    pin_first_frame: bool = True

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown prior schedule {self.kind!r}; use one of {SCHEDULE_KINDS}")
        if self.decay_frames <= 0:
            raise ValueError(f"decay_frames must be > 0, got {self.decay_frames}")

    def frame_weight(self, frame: int) -> float:
        """``lambda_i``: the weight of global frame ``frame`` while the prior is active."""
        if self.kind == "linear":
            decay = max(0.0, 1.0 - frame / self.decay_frames)
        elif self.kind == "exponential":
            decay = math.exp(-frame / self.decay_frames)
        else:
            decay = 1.0
        return self.floor + (self.first - self.floor) * decay

    def active(self, index: int, num_steps: int) -> bool:
        return index < math.ceil(self.active_fraction * num_steps)

    def pinned(self, frames: range) -> list[float]:
        """Weights with only the pinned first frame (zeros when frame 0 is not here or not pinned)."""
        return [self.first if (f == 0 and self.pin_first_frame) else 0.0 for f in frames]

    def weights(self, frames: range, index: int, num_steps: int) -> list[float]:
        """``w_i`` for each global frame in ``frames`` at step ``index`` of ``num_steps``."""
        if self.active(index, num_steps):
            return [self.frame_weight(f) for f in frames]
        return self.pinned(frames)


# -- image latent and initial latents -------------------------------------------------------------


@torch.no_grad()
def encode_image_latent(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """``z0 = scaling_factor * mean(E(image))``: ``(1, C, 1, h, w)`` float32 on the VAE's device.

    ``image`` is ``(3, H, W)`` or ``(1, 3, H, W)`` in [-1, 1] (:func:`videogen.io.image.load_image`).
    The posterior mean, not a sample, so ``z0`` is deterministic. ``E`` runs in the VAE's dtype, or in
    float32 for a float16 VAE whose config sets ``force_upcast`` (:func:`videogen.models.vae_encode.encode_posterior`).
    """
    if image.dim() == 3:
        image = image[None]
    posterior = encode_posterior(vae, image)
    return (posterior.mode().float() * vae.config.scaling_factor).unsqueeze(2)


def i2v_start_index(num_steps: int, strength: float) -> int:
    """First step run for ``strength`` in (0, 1]: ``num_steps - round(strength * num_steps)``
    (diffusers' image-to-image convention; at least one step is always run)."""
    run = min(num_steps, max(1, round(strength * num_steps)))
    return num_steps - run


def i2v_initial_latents(
    z0: torch.Tensor, fresh_noise: torch.Tensor, scheduler: SchedulerMixin, start_index: int = 0
) -> torch.Tensor:
    """The image latent noised to the first step run: ``add_noise(z0, fresh_noise, timesteps[start_index])``.

    ``fresh_noise`` ``(1, C, F, h, w)`` is unit-variance noise for these frames from the job's noise
    source (per-frame Gaussian or warped); ``z0`` ``(1, C, 1, h, w)`` is broadcast over the frames, or is
    ``(1, C, F, h, w)``, one clean latent per frame (a layout start, :mod:`videogen.models.layout_prior`).
    With this start the prior of every frame at the first step is exactly its ``fresh_noise``, so
    warped noise stays the fresh part of the prior. ``scheduler.set_timesteps`` must have been called.
    """
    t = scheduler.timesteps[start_index : start_index + 1]
    image = z0.to(device=fresh_noise.device, dtype=fresh_noise.dtype).expand_as(fresh_noise).contiguous()
    if isinstance(scheduler, _FLOW_SCHEDULERS):
        return scheduler.scale_noise(image, t, fresh_noise)
    return scheduler.add_noise(image, fresh_noise, t)


# -- the sampling-loop hook -----------------------------------------------------------------------


class ImagePriorHook(StepHook):
    """Fuses the guided model output with the image noise prior, per global frame.

    For the frames ``ctx.frames`` of the latents it is given, returns ``w prior + (1 - w) base`` with
    ``w`` from the schedule. The blend is taken in the model's output form (epsilon, v or velocity):
    those are affine in epsilon for the current latents, so this equals blending in epsilon space, and
    it stays defined at zero SNR (``alpha = 0``, where the v and velocity priors are still ``-z0`` and
    ``x - z0``). ``base`` is the model output, or, while the prior is active, the trained ``fusion``
    module's result, computed in epsilon space (outputs converted through their noise level): the
    module then decides every frame's mix and only the pinned first frame keeps its schedule weight.
    Frames whose weight is 0 keep the model output bit for bit, so a worker holding frames 8..15
    computes exactly what one worker computes for those frames.
    """

    def __init__(self, z0: torch.Tensor, schedule: PriorSchedule, fusion: torch.nn.Module | None = None):
        if z0.dim() != 5 or z0.shape[0] != 1 or z0.shape[2] != 1:
            raise ValueError(f"z0 must be (1, C, 1, h, w), got {tuple(z0.shape)}")
        self.z0 = z0
        self.schedule = schedule
        self.fusion = fusion

    def _z0_like(self, latents: torch.Tensor) -> torch.Tensor:
        if self.z0.device != latents.device or self.z0.dtype != latents.dtype:
            self.z0 = self.z0.to(device=latents.device, dtype=latents.dtype)
        if self.z0.shape[1] != latents.shape[1] or self.z0.shape[3:] != latents.shape[3:]:
            raise ValueError(f"z0 {tuple(self.z0.shape)} does not match latents {tuple(latents.shape)}")
        return self.z0

    def on_model_output(self, ctx: StepContext, latents: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if latents.shape[2] != len(ctx.frames):
            raise ValueError(f"latents hold {latents.shape[2]} frames, the step context names {len(ctx.frames)}")
        level = noise_level(ctx.scheduler, ctx.index, ctx.timestep)
        if level.sigma <= 0.0:
            return output
        active = self.schedule.active(ctx.index, ctx.num_steps)
        use_module = self.fusion is not None and active and level.alpha > 0.0
        weights = (
            self.schedule.pinned(ctx.frames)
            if use_module
            else self.schedule.weights(ctx.frames, ctx.index, ctx.num_steps)
        )
        if not use_module and not any(weights):
            return output
        x = model_input(ctx.scheduler, latents, ctx.timestep)
        z0 = self._z0_like(latents)
        base = output
        if use_module:
            eps = self.fusion(level.to_epsilon(output, x), level.prior(x, z0), ctx.timestep, ctx.frames)
            base = level.from_epsilon(eps, x)
        w = torch.tensor(weights, dtype=output.dtype, device=output.device).view(1, 1, -1, 1, 1)
        fused = w * level.prior_output(x, z0) + (1 - w) * base
        return fused if use_module else torch.where(w > 0, fused, output)
