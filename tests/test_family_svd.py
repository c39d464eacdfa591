"""Stable Video Diffusion as a model family: loading, job keys, the diffusers oracle and every axis.

Oracles: our single-worker render equals diffusers' ``StableVideoDiffusionPipeline`` on the same initial
latents, image and augmentation noise; cfg, ParaStep with a warm-up over every step, exact clips (2 and 3
workers, uneven) and synchronous patches each equal the single worker; dual-scope clips (2 and 3 workers,
uneven, exact and clip-local GroupNorm, with and without patches) equal the single-process dual-scope
reference. Decoding split by clips differs from one whole-video decode near the clip boundaries only, within
the tolerance docs/svd.md states.
"""

from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from parallel.dual_scope import DualScopeConfig
from parallel.job_plan import clip_config, job_clips
from parallel.launch import run_local
from parallel.runner import render_parallel
from parallel.svd import apply_svd_dual_scope_reference, scope_bytes_per_call
from parallel.svd_decode import segment_window
from parallel.testing import clip_latents_worker
from videogen.config import load_job
from videogen.decode import decode_chunks
from videogen.errors import ConfigError
from videogen.io.image import load_image
from videogen.models.families.svd import LATENT_WINDOW, guidance_scales
from videogen.models.loader import load_bundle, model_family
from videogen.noise.gaussian import frame_seed, video_noise
from videogen.noise.image_prior import encode_image_latent
from videogen.pipeline import WorkerSlot, check_model_limits, decode_video, denoise, render_frames

SEAM_TOLERANCE = 0.05
"""Largest pixel difference (in [0, 1]) of a clip-split decode with the default 4-frame halo from one
whole-video decode of the tiny model, a frame of margin over the measured 0.016 (docs/svd.md)."""


@pytest.fixture
def svd_job(tmp_path, svd_dir, first_frame):
    """A 32x32, 8-frame, 3-step SVD job with section overrides."""

    def make(**sections):
        job = {
            "model": {"path": str(svd_dir), "family": "svd"},
            "video": {"width": 32, "height": 32, "num_frames": 8},
            "sampler": {"steps": 3},
            "noise": {"seed": 3},
            "image": {"path": str(first_frame)},
            "output": {"path": str(tmp_path / "out.mp4"), "decode_chunk_frames": 8},
        }
        for section, values in sections.items():
            if values is None:
                job.pop(section)
            else:
                job.setdefault(section, {}).update(values)
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        return load_job(str(path)).config

    return make


def _single(job):
    latents, evaluations, _ = denoise(job, load_bundle(job.model), job.noise.seed, WorkerSlot(), progress=False)
    return latents, evaluations


def _joined(parts):
    by_clip = {p["frames"].start: p["latents"] for p in parts}
    return torch.cat([by_clip[k] for k in sorted(by_clip)], dim=2)


# -- the family ------------------------------------------------------------------------------------


def test_auto_picks_the_svd_family_and_loads_its_image_encoder(svd_job):
    job = svd_job(model={"family": "auto"}, prompts={"text": "unread"})
    assert model_family(job.model).name == "svd"
    bundle = load_bundle(job.model)
    assert bundle.text_encoder is None and bundle.tokenizer is None
    assert set(bundle.extras) == {"image_encoder", "feature_extractor"}
    assert bundle.latent_channels == 4 and bundle.unet.config.in_channels == 8
    assert bundle.size_multiple == 4  # x2 VAE, 2 UNet levels


def test_svd_job_without_an_image_is_refused_naming_image_path(svd_job):
    job = svd_job(image={"path": None})
    with pytest.raises(ConfigError, match=r"^image\.path: Stable Video Diffusion animates an image"):
        check_model_limits(job)
    with pytest.raises(ConfigError, match=r"^image\.path"):
        render_frames(job)


def test_svd_jobs_need_no_prompt_and_refuse_a_schedule(svd_job):
    assert svd_job().prompts.text == ""
    job = svd_job(prompts={"schedule": [{"text": "a cat"}]})
    with pytest.raises(ConfigError, match=r"^prompts\.schedule: Stable Video Diffusion reads no text"):
        check_model_limits(job)


def test_svd_section_values_are_checked(svd_job):
    with pytest.raises(ConfigError, match=r"svd\.noise_aug_strength: -0\.1: must be >= 0"):
        svd_job(svd={"noise_aug_strength": -0.1})
    job = svd_job(video={"num_frames": 9}, svd={"decode_halo": 5}, parallel={"clip": 2})
    with pytest.raises(ConfigError, match=r"^svd\.decode_halo: 5 frames .* shortest clip \(4 frames\)"):
        check_model_limits(job)


def test_guidance_rises_over_the_global_frames():
    job = load_job(None, ["model.path=x", "model.family=svd", "video.num_frames=5"]).config
    whole = guidance_scales(job, range(5)).flatten()
    assert torch.allclose(whole, torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]))
    assert torch.equal(guidance_scales(job, range(2, 4)).flatten(), whole[2:4])


def test_job_keys_reach_the_unet(svd_job):
    base, _ = _single(svd_job())
    for section in ({"fps": 12}, {"motion_bucket_id": 30}, {"noise_aug_strength": 0.2}, {"max_guidance_scale": 1.0}):
        changed, _ = _single(svd_job(svd=section))
        assert (changed - base).abs().max().item() > 1e-3, section


def test_unguided_svd_makes_one_unet_call_per_step(svd_job):
    _, evaluations = _single(svd_job(svd={"min_guidance_scale": 1.0, "max_guidance_scale": 1.0}))
    assert evaluations == 3


# -- the diffusers oracle --------------------------------------------------------------------------


def test_render_equals_diffusers_stable_video_diffusion_pipeline(svd_job, svd_dir, first_frame):
    from diffusers import StableVideoDiffusionPipeline

    job = svd_job(sampler={"steps": 4})
    bundle = load_bundle(job.model)
    latents, evaluations, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(), progress=False)
    ours = torch.cat(list(decode_video(job, bundle, latents)))

    pipe = StableVideoDiffusionPipeline.from_pretrained(str(svd_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        Image.open(first_frame).convert("RGB"),
        height=32,
        width=32,
        num_frames=8,
        num_inference_steps=4,
        latents=video_noise(job.noise.seed, range(8), 4, 16, 16).transpose(1, 2),
        generator=torch.Generator().manual_seed(frame_seed(job.noise.seed, 0, "image")),
        decode_chunk_size=8,
        output_type="pt",
    ).frames[0]

    assert evaluations == 4  # one UNet call per step, both guidance branches in one batch
    assert ours.shape == (8, 32, 32, 3) and ours.std().item() > 0.05
    assert (ours - reference.permute(0, 2, 3, 1)).abs().max().item() <= 1e-4


# -- float16 conditioning --------------------------------------------------------------------------


def _fp16_bundle(job):
    """The tiny model in float16 on the CPU, as the family loads it (``model.dtype: fp16`` is for GPUs)."""
    from videogen.models.loader import placed

    return placed(model_family(job.model).load(job.model, torch.device("cpu"), torch.float16))


class _FirstCall(Exception):
    pass


def _first_unet_call(unet, run) -> dict:
    """The inputs of the first call of ``unet`` in ``run()``, which stops there."""
    seen = {}

    def stop(module, args, kwargs):
        seen.update(sample=args[0], context=kwargs["encoder_hidden_states"], time_ids=kwargs["added_time_ids"])
        raise _FirstCall

    handle = unet.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        run()
    except _FirstCall:
        pass
    finally:
        handle.remove()
    return seen


def _conditional_image(sample: torch.Tensor) -> torch.Tensor:
    """The image-latent channels of the conditional branch of a UNet input ``[2, F, 2C, h, w]`` (the other
    branch's are zeros)."""
    images = sample[:, :, sample.shape[2] // 2 :]
    zero = [not images[b].any() for b in range(2)]
    assert sorted(zero) == [False, True]
    return images[zero.index(False)]


@pytest.mark.parametrize(
    ("dtype", "force_upcast", "encoded_in"),
    [
        (torch.float16, True, torch.float32),
        (torch.float16, False, torch.float16),
        (torch.bfloat16, True, torch.bfloat16),
    ],
)
def test_the_image_is_encoded_in_float32_when_a_float16_vae_forces_upcast(
    svd_dir, first_frame, dtype, force_upcast, encoded_in
):
    """diffusers' rule: float32 for a float16 VAE whose config sets ``force_upcast`` (the tiny model's, as
    SVD's, does), the VAE's dtype otherwise; the VAE is float16 again after the encoding."""
    import copy

    from diffusers import AutoencoderKLTemporalDecoder

    from videogen.models.families.svd import augmentation_noise, image_latent
    from videogen.models.vae_encode import encodes_upcast

    vae = AutoencoderKLTemporalDecoder.from_pretrained(str(svd_dir / "vae"), torch_dtype=dtype).eval()
    assert vae.config.force_upcast
    vae.register_to_config(force_upcast=force_upcast)
    image = load_image(first_frame, 32, 32)
    noise = augmentation_noise(3, image, 0.02)
    reference = copy.deepcopy(vae).float().encode(image[None] + noise).latent_dist.mode()
    seen = []
    vae.encoder.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].dtype, module.conv_in.weight.dtype))
    )

    latent = image_latent(vae, image, noise)

    assert encodes_upcast(vae) == (encoded_in == torch.float32)
    assert seen == [(encoded_in, encoded_in)]
    assert latent.dtype == torch.float32 and latent.shape == (1, 4, 16, 16)
    assert {p.dtype for p in vae.parameters()} == {dtype}
    if encoded_in == torch.float32:
        assert torch.equal(latent, reference)  # the float32 encode by the same weights
    else:
        assert (latent - reference).abs().max().item() > 1e-4  # measured 1.1e-3 (float16), 9.4e-3 (bfloat16)


def test_float16_render_conditions_the_unet_as_diffusers_does(svd_job, svd_dir, first_frame):
    """The first UNet call of a float16 render against diffusers' float16 ``StableVideoDiffusionPipeline``:
    the same CLIP embedding (both in the encoder's float16) and time ids, and an image latent encoded in
    float32 by both, then rounded to float16 by both. The two float32 encodes agree to 1.1e-6 (a float16
    encode is 1.1e-3 off)."""
    from diffusers import StableVideoDiffusionPipeline

    from videogen.models.families.svd import augmentation_noise, image_latent

    job = svd_job()
    bundle = _fp16_bundle(job)
    ours = _first_unet_call(bundle.unet, lambda: denoise(job, bundle, job.noise.seed, WorkerSlot(), progress=False))
    image = load_image(first_frame, 32, 32)
    encoded = image_latent(bundle.vae, image, augmentation_noise(job.noise.seed, image, job.svd.noise_aug_strength))

    pipe = StableVideoDiffusionPipeline.from_pretrained(str(svd_dir), dtype=torch.float16, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    moments = []
    pipe.vae.quant_conv.register_forward_hook(lambda module, args, out: moments.append(out))
    reference = _first_unet_call(
        pipe.unet,
        lambda: pipe(
            Image.open(first_frame).convert("RGB"),
            height=32,
            width=32,
            num_frames=8,
            num_inference_steps=3,
            latents=video_noise(job.noise.seed, range(8), 4, 16, 16).transpose(1, 2).half(),
            generator=torch.Generator().manual_seed(frame_seed(job.noise.seed, 0, "image")),
        ),
    )
    (reference_moments,) = moments
    reference_encoded = reference_moments[:, :4]  # the posterior mean, its mode

    assert reference_encoded.dtype == torch.float32
    assert (encoded - reference_encoded).abs().max().item() <= 1e-5
    ours_image, reference_image = _conditional_image(ours["sample"]), _conditional_image(reference["sample"])
    assert torch.equal(ours_image, encoded.half().expand(8, -1, -1, -1))
    assert torch.equal(reference_image, reference_encoded.half().expand(8, -1, -1, -1))
    assert torch.equal(ours["context"], reference["context"])
    assert torch.equal(ours["time_ids"], reference["time_ids"])


# -- the parallel axes -----------------------------------------------------------------------------


def test_temporal_layers_couple_the_frames_of_the_tiny_model(svd_job):
    """A clip alone is not the same frames of the whole video, so the clip oracles below can fail."""
    job = svd_job(video={"num_frames": 9})
    whole, _ = _single(job)
    alone, _ = _single(svd_job(video={"num_frames": 5}))
    assert (whole[:, :, :5] - alone).abs().max().item() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "frames"), [(2, 9), (3, 13)])
def test_exact_clips_equal_the_single_worker(svd_job, workers, frames):
    job = svd_job(video={"num_frames": frames}, parallel={"launcher": "local", "clip": workers})
    parts = run_local(clip_latents_worker, workers, job, num_threads=1)
    assert [len(p["frames"]) for p in parts] == [len(r) for r in np.array_split(range(frames), workers)]
    single, _ = _single(job)
    assert (_joined(parts) - single).abs().max().item() <= 1e-4
    assert {"conv_halo", "attn_kv", "groupnorm", "image_latent"} <= set(parts[0]["traffic"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parallel", "workers"),
    [
        ({"cfg": 2}, 2),
        ({"step": 2, "step_warmup": 3}, 2),  # warm-up over every step: each step computed by both
        ({"patch": 2, "patch_options": {"mode": "sync", "groupnorm": "exact"}}, 2),
        ({"clip": 2, "patch": 2, "patch_options": {"mode": "sync", "groupnorm": "exact"}}, 4),
    ],
)
def test_cfg_step_and_patch_equal_the_single_worker(svd_job, parallel, workers):
    job = svd_job(video={"num_frames": 9}, parallel={"launcher": "local", **parallel})
    parts = run_local(clip_latents_worker, workers, job, num_threads=1)
    single, _ = _single(job)
    assert (_joined(parts) - single).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_parastep_after_one_warm_up_step_is_approximate(svd_job):
    """ParaStep after one warm-up step reuses stale outputs: close to the single worker, not equal to it."""
    job = svd_job(sampler={"steps": 4}, parallel={"launcher": "local", "step": 2, "step_warmup": 1})
    single, _ = _single(job)
    error = (_joined(run_local(clip_latents_worker, 2, job, num_threads=1)) - single).abs().max().item()
    assert 1e-4 < error < 10 * single.abs().max().item()


SMALL_SCOPE = {"local_radius": 2, "global_frames": 3, "switch_timestep": 800.0}  # c_noise 0.41 on SVD's betas
"""Dual-scope settings the tiny SVD's 3 Euler steps straddle: its UNet timesteps are ``ln(sigma) / 4`` = 1.64,
0.69 (global scope favoured) and -1.55 (local scope favoured)."""


def test_svd_dual_scope_reference_masks_the_temporal_self_attention_only(svd_job):
    check_model_limits(svd_job(parallel={"clip": 2, "clip_mode": "dual_scope", "dual_scope": SMALL_SCOPE}))
    unet = load_bundle(svd_job().model).unet
    gen = torch.Generator().manual_seed(0)
    sample, image = torch.randn(1, 9, 8, 16, 16, generator=gen), torch.randn(1, 1, 32, generator=gen)

    def call(t):
        with torch.no_grad():
            return unet(sample, t, encoder_hidden_states=image, added_time_ids=torch.tensor([[6.0, 127, 0.02]])).sample

    exact = call(1.0)
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    scoped = {}
    for switch in (0.5, 2.0):  # t = 1 favours the global scope, then the local one
        config = DualScopeConfig(**{**SMALL_SCOPE, "switch_timestep": switch})
        handle = apply_svd_dual_scope_reference(unet, config)
        replaced = {name for name, p in unet.attn_processors.items() if type(p) is not processors[name]}
        scoped[switch] = call(1.0)
        handle.remove()
    temporal_self = {n for n in processors if ".temporal_transformer_blocks." in n and ".attn1." in n}
    assert temporal_self and replaced == temporal_self
    assert min((out - exact).abs().max().item() for out in scoped.values()) > 1e-2
    assert (scoped[0.5] - scoped[2.0]).abs().max().item() > 1e-2
    assert torch.equal(call(1.0), exact)  # removed exactly


def _attention_tokens(unet, bands: int) -> list[tuple[int, int]]:
    """``(h w, inner width)`` of every temporal self-attention on one of ``bands`` row bands of the tests'
    16x16 latents."""
    shapes = []
    for name, module in unet.named_modules():
        if name.endswith(".attn1") and ".temporal_transformer_blocks." in name:
            side = 8 if name.startswith("mid_block") else 16
            shapes.append((side * side // bands, module.to_k.out_features))
    return shapes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "frames", "groupnorm", "patch"), [(2, 9, "exact", 1), (3, 13, "local", 1), (2, 9, "local", 2)]
)
def test_dual_scope_clips_equal_the_single_process_reference(svd_job, workers, frames, groupnorm, patch):
    parallel = {"clip": workers, "clip_mode": "dual_scope", "groupnorm": groupnorm, "dual_scope": SMALL_SCOPE}
    if patch > 1:
        parallel.update(patch=patch, patch_options={"mode": "sync", "groupnorm": "exact"})
    job = svd_job(video={"num_frames": frames}, parallel={"launcher": "local", **parallel})
    parts = run_local(clip_latents_worker, workers * patch, job, num_threads=1)
    config, clips = clip_config(job), job_clips(job)
    bundle = load_bundle(job.model)

    def install(unet, denoiser):
        local = clips if groupnorm == "local" else None
        return apply_svd_dual_scope_reference(unet, config.dual_scope, local).remove

    reference, evaluations, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(install=install), progress=False)
    assert (_joined(parts) - reference).abs().max().item() <= 1e-4
    assert (reference - _single(job)[0]).abs().max().item() > 1e-3  # not the exact render

    attentions = _attention_tokens(bundle.unet, patch)
    for part in parts:
        traffic, rank = part["traffic"], clips.index(part["frames"])
        assert {"attn_kv", "groupnorm"} & set(traffic) == ({"groupnorm"} if groupnorm == "exact" else set())
        per_call = scope_bytes_per_call(attentions, clips, rank, 2, 4, config.dual_scope)  # both guidance branches
        assert traffic["attn_scope"]["bytes_received"] == evaluations * per_call
        assert traffic["attn_scope"]["calls"] == evaluations * len(attentions)


def test_patch_window_cuts_the_image_latent(svd_job):
    from parallel.comm import AxisComm
    from parallel.patch import PatchParallelConfig, split_rows
    from parallel.svd import apply_svd_patch_parallel

    unet = load_bundle(svd_job().model).unet
    handle = apply_svd_patch_parallel(unet, AxisComm(None, "patch"), split_rows((16, 16), 1, 2), PatchParallelConfig())
    assert getattr(unet, LATENT_WINDOW) == (-2, 0, 16)
    handle.remove()
    assert not hasattr(unet, LATENT_WINDOW)


# -- decoding ---------------------------------------------------------------------------------------


def test_chunked_decode_with_a_full_halo_equals_the_whole_decode(svd_job):
    job = svd_job(output={"decode_chunk_frames": 3})
    bundle = load_bundle(job.model)
    latents = video_noise(0, range(8), 4, 16, 16) * 0.5
    job.svd.decode_halo = 8
    chunked = torch.cat(list(decode_video(job, bundle, latents)))
    whole = next(decode_chunks(bundle.vae, latents, 8, lambda z: bundle.vae.decode(z, num_frames=len(z)).sample))
    assert (chunked - whole).abs().max().item() <= 1e-5
    job.svd.decode_halo = 0
    assert (torch.cat(list(decode_video(job, bundle, latents))) - whole).abs().max().item() > 1e-2


def test_segment_window_takes_the_halo_from_the_context():
    assert segment_window(range(8, 16), (4, 4), range(8, 16), 4) == (slice(0, 16), (4, 4))
    assert segment_window(range(0, 8), (0, 2), range(0, 8), 4) == (slice(0, 10), (0, 2))
    assert segment_window(range(8, 16), (4, 0), range(12, 16), 2) == (slice(6, 12), (2, 0))


@pytest.mark.slow
def test_clip_split_decode_seam_is_within_the_stated_tolerance(svd_job, tmp_path):
    whole_job = svd_job(video={"num_frames": 12}, output={"decode_chunk_frames": 12})
    whole = render_frames(whole_job).astype(np.float32) / 255
    job = svd_job(
        video={"num_frames": 12}, output={"decode_chunk_frames": 12}, parallel={"launcher": "local", "clip": 2}
    )
    job.output.path = str(tmp_path / "frames")
    result = render_parallel(job, progress=False)
    split = np.stack([iio.imread(p) for p in sorted(result.output.iterdir())]).astype(np.float32) / 255
    error = np.abs(split - whole).max(axis=(1, 2, 3))
    assert error.max() <= SEAM_TOLERANCE
    assert error[5:7].max() > 2 / 255  # the seam is measured, not absent: clips decode apart


# -- image noise prior and warped noise ------------------------------------------------------------


def test_image_prior_pins_the_first_frame_to_the_image_latent(svd_job, first_frame):
    job = svd_job(svd={"image_prior": True})
    bundle = load_bundle(job.model)
    latents, _ = _single(job)
    z0 = encode_image_latent(bundle.vae, load_image(first_frame, 32, 32))
    assert (latents[:, :, :1] - z0).abs().max().item() <= 1e-4
    plain, _ = _single(svd_job())
    assert (latents[:, :, 1:] - plain[:, :, 1:]).abs().max().item() > 1e-2


@pytest.mark.slow
def test_clips_whose_own_scales_differ_guide_as_the_video_does(svd_job):
    """Scales from 0 to 1.5 over 8 frames pass 1 in the second clip only: both clips evaluate both branches,
    as the one worker does for the whole video (diffusers guides when the largest scale passes 1)."""
    job = svd_job(
        video={"num_frames": 8},
        parallel={"launcher": "local", "clip": 2},
        svd={"min_guidance_scale": 0.0, "max_guidance_scale": 1.5},
    )
    single, _ = _single(job)
    parts = run_local(clip_latents_worker, 2, job, num_threads=1)
    assert all(p["evaluations"] == parts[0]["evaluations"] for p in parts)
    assert (_joined(parts) - single).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    "sections",
    [
        {"svd": {"image_prior": True}, "image": {"strength": 0.7}},
        {"noise": {"kind": "warped", "warped": {"source": "camera", "camera": {"moves": [{"pan": 0.05}]}}}},
    ],
)
def test_image_prior_and_warped_noise_clips_equal_the_single_worker(svd_job, sections):
    job = svd_job(video={"num_frames": 9}, parallel={"launcher": "local", "clip": 2}, **sections)
    single, _ = _single(job)
    plain, _ = _single(svd_job(video={"num_frames": 9}))
    assert (single - plain).abs().max().item() > 1e-2
    assert (_joined(run_local(clip_latents_worker, 2, job, num_threads=1)) - single).abs().max().item() <= 1e-4


def test_the_dual_scope_switch_is_given_in_ddpm_timesteps_and_called_in_svds(svd_job):
    """``switch_timestep: 800`` is the noise level sigma = 5.1, which SVD's UNet sees as c_noise = ln(sigma)/4."""
    job = svd_job(parallel={"clip_mode": "dual_scope", "dual_scope": {"switch_timestep": 800.0}})
    switch = clip_config(job).dual_scope.switch_timestep
    assert switch == pytest.approx(0.41, abs=0.01)
    first, last = (0.25 * math.log(s) for s in (700.0, 0.002))  # the first and last steps' c_noise
    assert last < switch < first
