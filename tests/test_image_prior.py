"""TRIP's image noise prior: the formulas, the frame schedules, the hook, and I2V renders on the tiny model."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from omegaconf import OmegaConf

from videogen.config import ModelConfig, PromptsConfig
from videogen.errors import ConfigError
from videogen.io.image import load_image
from videogen.models.loader import load_bundle
from videogen.models.tiny import tiny_scheduler, tiny_vae
from videogen.noise.gaussian import video_noise
from videogen.noise.i2v_spec import ImageToVideoSpec, prior_schedule, validate_i2v_spec
from videogen.noise.image_prior import (
    ImagePriorHook,
    PriorSchedule,
    encode_image_latent,
    epsilon_prior,
    flow_epsilon_prior,
    flow_velocity_prior,
    i2v_initial_latents,
    i2v_start_index,
    noise_level,
    v_prior,
)
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, WarpedNoiseSpec
from videogen.noise.warped_latents import iter_warped_noise
from videogen.prompts import build_text_context
from videogen.sampling import Denoiser, StepContext, make_scheduler, run_steps

SHAPE = (1, 4, 5, 6, 6)


def _ddim(**overrides) -> DDIMScheduler:
    return DDIMScheduler.from_config(tiny_scheduler().config, **overrides)


# -- formulas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 1, 250, 500, 999])
def test_prior_inverts_the_forward_process_for_the_image_frame(t):
    scheduler = _ddim()
    z0 = torch.randn(1, 4, 1, 6, 6, dtype=torch.float64)
    eps = torch.randn(1, 4, 1, 6, 6, dtype=torch.float64)
    z_t = scheduler.add_noise(z0, eps, torch.tensor([t]))
    abar = scheduler.alphas_cumprod[t].double()
    torch.testing.assert_close(epsilon_prior(z_t, z0, abar), eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(v_prior(z_t, z0, abar), scheduler.get_velocity(z0, eps, torch.tensor([t])))


def test_prior_error_of_other_frames_is_the_scaled_latent_difference():
    abar = 0.3
    z0, zi, eps = torch.randn(3, 1, 4, 1, 6, 6, dtype=torch.float64)
    z_t = math.sqrt(abar) * zi + math.sqrt(1 - abar) * eps
    error = epsilon_prior(z_t, z0, abar) - eps
    torch.testing.assert_close(error, math.sqrt(abar / (1 - abar)) * (zi - z0))


def test_flow_matching_prior_inverts_scale_noise():
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    z0, eps = torch.randn(2, 1, 4, 1, 6, 6, dtype=torch.float64)
    for index in (0, 4, 9):
        sigma = float(scheduler.sigmas[index])
        x = scheduler.scale_noise(z0, scheduler.timesteps[index : index + 1], eps)
        torch.testing.assert_close(flow_epsilon_prior(x, z0, sigma), eps)
        torch.testing.assert_close(flow_velocity_prior(x, z0, sigma), eps - z0)


@pytest.mark.parametrize(
    "make",
    [
        lambda kind: _ddim(prediction_type=kind),
        lambda kind: EulerDiscreteScheduler.from_config(tiny_scheduler().config, prediction_type=kind),
    ],
)
def test_v_prediction_steps_like_its_epsilon_in_the_epsilon_scheduler(make):
    """Converting a v output to epsilon (through the noise level) gives the scheduler the same update."""
    v_sched, e_sched = make("v_prediction"), make("epsilon")
    for s in (v_sched, e_sched):
        s.set_timesteps(6)
    latents = torch.randn(SHAPE) * float(v_sched.init_noise_sigma)
    for index, t in enumerate(v_sched.timesteps):
        x = v_sched.scale_model_input(latents, t)
        e_sched.scale_model_input(latents, t)
        v = torch.randn(SHAPE)
        eps = noise_level(v_sched, index, t).to_epsilon(v, x)
        torch.testing.assert_close(noise_level(v_sched, index, t).from_epsilon(eps, x), v, atol=1e-5, rtol=1e-5)
        stepped_v = v_sched.step(v, t, latents).prev_sample
        stepped_e = e_sched.step(eps, t, latents).prev_sample
        torch.testing.assert_close(stepped_v, stepped_e, atol=1e-4, rtol=1e-4)
        latents = stepped_v


# -- frame schedules -----------------------------------------------------------------------------


def test_schedules_decay_with_the_frame_index():
    linear = PriorSchedule("linear", first=1.0, floor=0.2, decay_frames=4)
    assert [round(linear.frame_weight(f), 6) for f in range(6)] == [1.0, 0.8, 0.6, 0.4, 0.2, 0.2]
    expo = PriorSchedule("exponential", first=0.9, floor=0.0, decay_frames=2)
    assert expo.frame_weight(0) == 0.9 and expo.frame_weight(2) == pytest.approx(0.9 / math.e)
    assert PriorSchedule("constant", first=0.7).frame_weight(100) == 0.7


def test_prior_is_active_for_the_first_steps_and_frame_zero_stays_pinned():
    schedule = PriorSchedule("linear", first=1.0, decay_frames=2, active_fraction=0.4)
    assert [schedule.active(k, 10) for k in range(10)] == [True] * 4 + [False] * 6
    assert schedule.weights(range(3), 3, 10) == [1.0, 0.5, 0.0]
    assert schedule.weights(range(3), 4, 10) == [1.0, 0.0, 0.0]
    unpinned = PriorSchedule("linear", decay_frames=2, active_fraction=0.4, pin_first_frame=False)
    assert unpinned.weights(range(3), 4, 10) == [0.0, 0.0, 0.0]
    assert schedule.weights(range(4, 8), 0, 10) == schedule.weights(range(8), 0, 10)[4:]


# -- the hook -------------------------------------------------------------------------------------


def _context(scheduler, index: int, frames: range) -> StepContext:
    return StepContext(index, len(scheduler.timesteps), scheduler.timesteps[index], scheduler, frames)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_a_clip_worker_gets_exactly_its_slice_of_the_single_worker_result(prediction):
    scheduler = _ddim(prediction_type=prediction)
    scheduler.set_timesteps(10)
    z0 = torch.randn(1, 4, 1, 6, 6)
    hook = ImagePriorHook(z0, PriorSchedule("exponential", floor=0.1, decay_frames=3, active_fraction=0.5))
    latents, output = torch.randn(2, 1, 4, 8, 6, 6)
    for index in (0, 7):
        full = hook.on_model_output(_context(scheduler, index, range(8)), latents, output)
        for lo, hi in ((0, 3), (3, 8), (5, 6)):
            ctx = _context(scheduler, index, range(lo, hi))
            part = hook.on_model_output(ctx, latents[:, :, lo:hi], output[:, :, lo:hi])
            assert torch.equal(part, full[:, :, lo:hi])


def test_hook_fuses_with_the_frame_weights_and_passes_inactive_steps_through():
    scheduler = _ddim()
    scheduler.set_timesteps(4)
    z0 = torch.randn(1, 4, 1, 6, 6)
    schedule = PriorSchedule("linear", decay_frames=2, active_fraction=0.5)
    hook = ImagePriorHook(z0, schedule)
    latents, output = torch.randn(2, 1, 4, 3, 6, 6)
    t = scheduler.timesteps[0]
    prior = epsilon_prior(latents, z0, scheduler.alphas_cumprod[t])
    fused = hook.on_model_output(_context(scheduler, 0, range(3)), latents, output)
    torch.testing.assert_close(fused[:, :, 0], prior[:, :, 0])
    torch.testing.assert_close(fused[:, :, 1], 0.5 * prior[:, :, 1] + 0.5 * output[:, :, 1])
    assert torch.equal(fused[:, :, 2], output[:, :, 2])
    late = hook.on_model_output(_context(scheduler, 3, range(1, 3)), latents[:, :, 1:], output[:, :, 1:])
    assert late is not None and torch.equal(late, output[:, :, 1:])


def test_initial_latents_make_the_first_prior_equal_the_fresh_noise():
    """Whatever the noise source gave (here Go-with-the-Flow noise of a panning camera) is the prior at step 0."""
    spec = WarpedNoiseSpec(source="camera", upsample=2, camera=CameraSpec(moves=[CameraMoveSpec(pan=0.05)]))
    warped = torch.stack([f.noise for f in iter_warped_noise(spec, 5, 6, 4, 8, 8)], dim=1)[None]
    scheduler = _ddim()
    scheduler.set_timesteps(10)
    z0 = torch.randn(1, 4, 1, 8, 8)
    for start in (0, 3):
        latents = i2v_initial_latents(z0, warped, scheduler, start_index=start)
        t = scheduler.timesteps[start]
        torch.testing.assert_close(epsilon_prior(latents, z0, scheduler.alphas_cumprod[t]), warped, atol=1e-5, rtol=0)


def test_flow_matching_loop_ends_on_the_image_latent_in_frame_zero():
    """Velocity outputs go through epsilon space: frame 0 follows the prior and lands on z0 (last sigma 0)."""
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(6)
    z0 = torch.randn(1, 4, 1, 6, 6)
    fresh = torch.randn(SHAPE)
    latents = i2v_initial_latents(z0, fresh, scheduler)
    hook = ImagePriorHook(z0, PriorSchedule(decay_frames=2, active_fraction=0.5))
    velocities = torch.randn(len(scheduler.timesteps), *SHAPE)  # an arbitrary model's predictions
    for index, t in enumerate(scheduler.timesteps):
        prior = flow_velocity_prior(latents, z0, float(scheduler.sigmas[index]))
        fused = hook.on_model_output(_context(scheduler, index, range(5)), latents, velocities[index])
        torch.testing.assert_close(fused[:, :, 0], prior[:, :, 0], atol=1e-5, rtol=1e-5)
        latents = scheduler.step(fused, t, latents).prev_sample
    torch.testing.assert_close(latents[:, :, :1], z0, atol=1e-5, rtol=0)
    assert (latents[:, :, 1:] - z0).abs().mean() > 0.1


def test_v_prior_in_output_form_and_at_zero_terminal_snr():
    """The v blend needs no division by alpha: at abar = 0 frame 0's v is -z0, the image itself."""
    scheduler = _ddim(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    scheduler.set_timesteps(5)
    z0 = torch.randn(1, 4, 1, 6, 6)
    latents, output = torch.randn(2, *SHAPE)
    for index in (0, 2):
        t = scheduler.timesteps[index]
        abar = scheduler.alphas_cumprod[t]
        level = noise_level(scheduler, index, t)
        if index:
            torch.testing.assert_close(level.prior_output(latents, z0), v_prior(latents, z0, abar))
        else:
            assert abar == 0 and level.alpha == 0
        hook = ImagePriorHook(z0, PriorSchedule(decay_frames=2))
        fused = hook.on_model_output(_context(scheduler, index, range(5)), latents, output)
        torch.testing.assert_close(fused[:, :, :1], level.prior_output(latents[:, :, :1], z0))
    torch.testing.assert_close(fused[:, :, 4], output[:, :, 4])


def test_strength_picks_the_first_step():
    assert [i2v_start_index(10, s) for s in (1.0, 0.75, 0.5, 0.01)] == [0, 2, 5, 9]


# -- renders on the tiny model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    bundle = load_bundle(ModelConfig(path=str(tiny_model_dir)))
    image = torch.linspace(-1, 1, 64 * 64 * 3).reshape(3, 64, 64)
    return bundle, encode_image_latent(bundle.vae, image)


def _render(bundle, z0, sampler="ddim", prediction="auto", prior=True, steps=4, strength=1.0, frames=range(5)):
    text = build_text_context(bundle.tokenizer, bundle.text_encoder, PromptsConfig(text="a cat"), len(frames), frames)
    scheduler = make_scheduler(sampler, bundle.scheduler_config, prediction)
    scheduler.set_timesteps(steps)
    fresh = video_noise(7, frames, 4, 16, 16)
    start = i2v_start_index(steps, strength)
    latents = i2v_initial_latents(z0, fresh, scheduler, start)
    hooks = [ImagePriorHook(z0, PriorSchedule(decay_frames=3, active_fraction=0.5))] if prior else []
    out = run_steps(Denoiser(bundle.unet, text, 7.5), scheduler, latents, frames, hooks, start_index=start)
    return out, fresh, scheduler


def test_ddim_render_ends_on_the_image_latent_in_frame_zero(tiny):
    bundle, z0 = tiny
    out, fresh, scheduler = _render(bundle, z0)
    # the last DDIM step lands on abar = alphas_cumprod[0] (set_alpha_to_one=False), not exactly 1
    abar = scheduler.final_alpha_cumprod
    torch.testing.assert_close(out[:, :, :1], abar.sqrt() * z0 + (1 - abar).sqrt() * fresh[:, :, :1], atol=1e-5, rtol=0)
    assert (out[:, :, :1] - z0).abs().mean() < 0.03
    free, _, _ = _render(bundle, z0, prior=False)
    assert (free[:, :, :1] - z0).abs().mean() > 10 * (out[:, :, :1] - z0).abs().mean()


@pytest.mark.parametrize(
    ("sampler", "prediction", "strength"),
    [("ddim", "v_prediction", 1.0), ("euler", "auto", 1.0), ("dpmpp", "auto", 1.0), ("unipc", "auto", 0.5)],
)
def test_every_sampler_ends_on_the_image_latent_in_frame_zero(tiny, sampler, prediction, strength):
    bundle, z0 = tiny
    out, fresh, scheduler = _render(bundle, z0, sampler, prediction, strength=strength)
    if sampler == "ddim":
        abar = scheduler.final_alpha_cumprod
        z0 = abar.sqrt() * z0 + (1 - abar).sqrt() * fresh[:, :, :1]
    torch.testing.assert_close(out[:, :, :1], z0, atol=1e-5, rtol=0)


def test_encode_image_latent_is_deterministic_and_per_frame(tiny):
    bundle, z0 = tiny
    image = torch.linspace(-1, 1, 64 * 64 * 3).reshape(3, 64, 64)
    assert z0.shape == (1, 4, 1, 16, 16)
    assert torch.equal(encode_image_latent(bundle.vae, image[None]), z0)


# -- the precision of the image encoding ------------------------------------------------------------

IMAGE = torch.linspace(-1, 1, 3 * 32 * 32).reshape(3, 32, 32)


def _encoded_in(vae, dtype: torch.dtype, image: torch.Tensor) -> torch.Tensor:
    """``z0`` from a copy of ``vae`` cast whole to ``dtype``, encoded in that dtype."""
    model = copy.deepcopy(vae).to(dtype)
    return (model.encode(image[None].to(dtype)).latent_dist.mode().float() * vae.config.scaling_factor).unsqueeze(2)


@pytest.mark.parametrize(
    ("dtype", "force_upcast", "encoded_in"),
    [
        (torch.float16, True, torch.float32),
        (torch.float16, False, torch.float16),
        (torch.bfloat16, True, torch.bfloat16),
        (torch.float32, True, torch.float32),
    ],
)
def test_the_image_latent_is_encoded_in_float32_when_a_float16_vae_forces_upcast(dtype, force_upcast, encoded_in):
    """diffusers' rule: float32 for a float16 VAE whose config sets ``force_upcast`` (AutoencoderKL's default,
    kept by Stable Diffusion's VAEs), the VAE's dtype otherwise; the VAE is float16 again after the encoding."""
    vae = tiny_vae().to(dtype)
    assert vae.config.force_upcast
    vae.register_to_config(force_upcast=force_upcast)
    reference = _encoded_in(vae, encoded_in, IMAGE)  # the same weights, cast from the VAE's own
    other = _encoded_in(vae, torch.float16 if encoded_in == torch.float32 else torch.float32, IMAGE)
    seen = []
    vae.encoder.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].dtype, module.conv_in.weight.dtype))
    )

    z0 = encode_image_latent(vae, IMAGE)

    assert seen == [(encoded_in, encoded_in)]
    assert {p.dtype for p in vae.parameters()} == {dtype}
    assert z0.dtype == torch.float32 and z0.shape == (1, 4, 1, 8, 8)
    assert torch.equal(z0, reference)
    if dtype == torch.float16:  # float16 against float32 encodes of the same weights: measured 2.8e-4
        assert (z0 - other).abs().max().item() > 1e-4


def test_the_upcast_encoding_survives_activations_that_overflow_float16():
    """Why diffusers upcasts: an encoder activation past float16's largest value (65504) is inf in float16
    and NaN after the group norm that follows it; in float32 it is an ordinary number."""
    vae = tiny_vae()
    with torch.no_grad():
        vae.encoder.conv_in.weight.fill_(3000.0)  # on a white image 27 * 3000 = 81000 at interior pixels
    vae = vae.half()
    white = torch.ones(3, 32, 32)
    assert not _encoded_in(vae, torch.float16, white).isfinite().all()

    z0 = encode_image_latent(vae, white)

    assert z0.isfinite().all()
    assert torch.equal(z0, _encoded_in(vae, torch.float32, white))
    assert {p.dtype for p in vae.parameters()} == {torch.float16}


# -- the image: job section -----------------------------------------------------------------------


def test_example_job_section_is_a_valid_spec_with_a_readable_image():
    root = Path(__file__).resolve().parent.parent
    section = OmegaConf.load(root / "configs" / "i2v.yaml").image
    spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ImageToVideoSpec), section))
    validate_i2v_spec(spec)
    assert prior_schedule(spec) == PriorSchedule("linear", 1.0, 0.0, 16.0, 0.5, True)
    assert load_image(root / spec.path, 64, 64, spec.resize).shape == (3, 64, 64)
    validate_i2v_spec(ImageToVideoSpec())  # text-to-video default


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("path", " ", "image.path: is empty"),
        ("resize", "fill", "image.resize: must be cover or stretch"),
        ("schedule", "cosine", "image.schedule: must be linear, exponential or constant"),
        ("strength", 0.0, r"image.strength: must be in \(0, 1\], got 0.0"),
        ("weight_first", 1.5, r"image.weight_first: must be in \[0, 1\]"),
        ("weight_floor", 0.5, "image.weight_floor: 0.5 is above weight_first"),
        ("active_fraction", float("nan"), "image.active_fraction: must be a finite number"),
        ("decay_frames", 0.0, "image.decay_frames: must be > 0"),
        ("fusion", "", "image.fusion: is empty"),
    ],
)
def test_bad_spec_values_name_their_key(field, value, message):
    spec = ImageToVideoSpec(path="a.png", weight_first=0.4 if field == "weight_floor" else 1.0)
    setattr(spec, field, value)
    with pytest.raises(ConfigError, match=f"^{message}"):
        validate_i2v_spec(spec)
