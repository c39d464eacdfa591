"""The VideoCrafter2 family: loading, the diffusers oracle with the fps embedding, the SDE sampler, every axis.

Oracles: our single-worker render equals diffusers' ``TextToVideoSDPipeline`` built from the same
components on the same latents (with the same per-step noise for the SDE sampler); each parallel axis
on two gloo workers equals the single worker (ParaStep with a partial warm-up equals its
single-process reference). The random tiny UNet's first SDE step starts at the Karras ``sigma_max``
(about 14.6), so its final latents reach magnitudes near 60; the axes are compared by the largest
difference relative to the largest magnitude, where float32 rounding leaves about 3e-6.
"""

from __future__ import annotations

import copy
import json
import shutil

import av
import pytest
import torch
from conftest import family_job
from diffusers import TextToVideoSDPipeline

from parallel.clip import ClipParallelConfig
from parallel.launch import run_local
from parallel.mesh import ParallelPlan
from parallel.patch import PatchParallelConfig
from parallel.plan import preflight_errors
from parallel.step import SerialReferenceLoop, StepParallelConfig, check_sampler
from parallel.testing import mesh_latents_worker, step_latents_worker
from videogen import cli
from videogen.config import JobConfig, ModelConfig, load_job
from videogen.errors import ConfigError, ModelLoadError
from videogen.models.families.videocrafter2 import (
    UNetVideoCrafter,
    tiny_videocrafter_unet,
    write_tiny_videocrafter2,
)
from videogen.models.family import family_named
from videogen.models.loader import load_bundle, model_family
from videogen.models.tiny import TinySpec
from videogen.noise.gaussian import video_noise
from videogen.pipeline import WorkerSlot, denoise, render, render_frames
from videogen.sampling import make_scheduler, run_steps

TOL = 1e-4
RELATIVE_TOL = 1e-5
STEPS = 3
ZEROSCOPE_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")


@pytest.fixture(scope="module")
def vc2_dir(tmp_path_factory):
    return write_tiny_videocrafter2(tmp_path_factory.mktemp("vc2") / "tiny-vc2", seed=0)


@pytest.fixture(scope="module")
def vc2_unet_dir(tmp_path_factory):
    """The VideoCrafter2 UNet alone, its files at the folder's root (as the public conversion ships it)."""
    folder = tmp_path_factory.mktemp("vc2_unet") / "unet"
    tiny_videocrafter_unet(seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def vc2_job(tmp_path, vc2_dir):
    return lambda **sections: family_job(tmp_path, {"path": str(vc2_dir)}, **sections)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _single(job: JobConfig, bundle=None, loop=run_steps) -> torch.Tensor:
    bundle = bundle if bundle is not None else load_bundle(job.model)
    latents, _, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(loop=loop), progress=False)
    return latents


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["auto", "videocrafter2"])
def test_tiny_folder_loads_as_videocrafter2(vc2_dir, family):
    bundle = load_bundle(ModelConfig(path=str(vc2_dir), family=family))
    assert bundle.family.name == "videocrafter2"
    assert type(bundle.unet) is UNetVideoCrafter and bundle.unet.config.fps_cond
    assert bundle.family.default_sampler == "dpmpp_sde"


def test_plain_unet3d_folder_is_not_claimed(tiny_model_dir):
    assert model_family(ModelConfig(path=str(tiny_model_dir))).name == "unet3d"


@pytest.mark.parametrize("layout", ["unet_as_path", "unet_override"])
def test_zeroscope_style_split_layouts_load_and_render_like_the_full_folder(
    tmp_path, vc2_job, vc2_unet_dir, tiny_model_dir, layout
):
    zeroscope = str(tiny_model_dir)  # same seed: the same VAE, text encoder, tokenizer and scheduler
    if layout == "unet_as_path":
        model = {"path": str(vc2_unet_dir), **{part: zeroscope for part in ZEROSCOPE_PARTS}}
    else:
        model = {"path": zeroscope, "unet": str(vc2_unet_dir)}
    split = family_job(tmp_path, model)
    assert model_family(split.model).name == "videocrafter2"
    assert torch.equal(_single(split), _single(vc2_job()))


def test_conversion_saved_as_unet3d_with_fps_cond_is_videocrafter2(tmp_path, vc2_unet_dir, tiny_model_dir):
    folder = tmp_path / "as_unet3d"
    shutil.copytree(vc2_unet_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet3DConditionModel"}))
    cfg = ModelConfig(path=str(tiny_model_dir), unet=str(folder))
    assert model_family(cfg).name == "videocrafter2"
    unet = load_bundle(cfg).unet
    assert type(unet) is UNetVideoCrafter
    assert torch.equal(unet.fps_embedding.linear_2.weight, tiny_videocrafter_unet().fps_embedding.linear_2.weight)


def test_build_tiny_model_cli_writes_a_folder_that_renders(tmp_path):
    out = tmp_path / "built"
    assert cli.main(["build-tiny-model", str(out), "--family", "videocrafter2"]) == 0
    job = family_job(tmp_path, {"path": str(out)}, video={"num_frames": 3}, sampler={"steps": 2})
    frames = render_frames(job)
    assert frames.shape == (3, 32, 32, 3) and frames.std() > 0


# ---------------------------------------------------------------------------------------------
# The diffusers oracle, and the fps conditioning
# ---------------------------------------------------------------------------------------------


def _diffusers_latents(job: JobConfig, bundle, sampler: str) -> torch.Tensor:
    """``TextToVideoSDPipeline`` on our bundle's components and our initial latents; the SDE sampler gets
    our per-step noise (the pipeline reshapes latents to ``(F, C, H, W)`` around each scheduler step)."""
    scheduler = make_scheduler(sampler, bundle.scheduler_config)
    frames, (channels, height, width) = job.video.num_frames, (4, job.video.height // 4, job.video.width // 4)
    if sampler == "dpmpp_sde":
        real_step, taken = scheduler.step, []

        def step(model_output, timestep, sample, **kwargs):
            noise = video_noise(job.noise.seed, range(frames), channels, height, width, stream="step", step=len(taken))
            taken.append(timestep)
            noise = noise.permute(0, 2, 1, 3, 4).reshape(sample.shape)
            return real_step(model_output, timestep, sample, variance_noise=noise, **kwargs)

        scheduler.step = step
    bundle.unet.fps = job.video.fps  # the pipeline passes no rate: the UNet's own is used
    pipe = TextToVideoSDPipeline(
        vae=bundle.vae,
        text_encoder=bundle.text_encoder,
        tokenizer=bundle.tokenizer,
        unet=bundle.unet,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        job.prompts.text,
        negative_prompt=job.prompts.negative,
        num_inference_steps=job.sampler.steps,
        num_frames=frames,
        height=job.video.height,
        width=job.video.width,
        guidance_scale=job.sampler.guidance_scale,
        latents=video_noise(job.noise.seed, range(frames), channels, height, width),
        output_type="latent",
    ).frames


@pytest.mark.parametrize("sampler", ["auto", "ddim"])
def test_render_equals_diffusers_text_to_video_pipeline_with_the_fps_embedding(vc2_job, sampler):
    job = vc2_job(sampler={"name": sampler, "steps": 4})
    bundle = load_bundle(job.model)
    ours = _single(job, bundle)  # video.fps 8, passed by our loop; the UNet's own rate is still 24 here
    reference = _diffusers_latents(job, bundle, "dpmpp_sde" if sampler == "auto" else sampler)
    assert ours.shape == reference.shape == (1, 4, 8, 8, 8)
    assert (ours - reference).abs().max().item() <= TOL


def test_fps_changes_the_render(vc2_job):
    eight, twenty_four = _single(vc2_job(video={"fps": 8})), _single(vc2_job(video={"fps": 24}))
    assert (eight - twenty_four).abs().max().item() > 1e-3


def test_condition_fps_sets_the_conditioning_rate_apart_from_the_file_rate(vc2_job):
    """Video-Infinity's setting: condition on 24, write the file at 8."""
    short = {"num_frames": 4}
    job = vc2_job(video={**short, "fps": 8, "condition_fps": 24}, sampler={"steps": 2})
    bundle = load_bundle(job.model)
    conditioned = _single(job, bundle)
    assert torch.equal(conditioned, _single(vc2_job(video={**short, "fps": 24}, sampler={"steps": 2}), bundle))
    eight = _single(vc2_job(video={**short, "fps": 8}, sampler={"steps": 2}), bundle)
    assert (conditioned - eight).abs().max().item() > 1e-3
    result = render(job, bundle=bundle, progress=False)
    with av.open(str(result.output)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 8 and sum(1 for _ in container.decode(stream)) == 4
    assert load_job(f"{result.output}.job.yaml").config.video.condition_fps == 24


def _without_unet_weights(source, folder):
    """A copy of model folder ``source`` whose UNet has its config but no weights: a check that passes
    before weights load meets a missing file instead."""
    shutil.copytree(source, folder)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    return folder


def test_condition_fps_is_refused_before_loading_a_model_that_takes_no_rate(tmp_path, tiny_model_dir, vc2_dir):
    plain = _without_unet_weights(tiny_model_dir, tmp_path / "unet3d")
    job = family_job(tmp_path, {"path": str(plain)}, video={"condition_fps": 24})
    with pytest.raises(ConfigError, match=r"^video.condition_fps: 24: the unet3d family conditions on no frame rate"):
        render(job, progress=False)
    no_fps = _without_unet_weights(vc2_dir, tmp_path / "no_fps_cond")
    config = json.loads((no_fps / "unet" / "config.json").read_text())
    (no_fps / "unet" / "config.json").write_text(json.dumps({**config, "fps_cond": False}))
    job = family_job(tmp_path, {"path": str(no_fps), "family": "videocrafter2"}, video={"condition_fps": 24})
    with pytest.raises(ConfigError, match=r"^video.condition_fps: 24: this VideoCrafter2 UNet has fps_cond: false"):
        render(job, progress=False)
    job.video.condition_fps = None
    with pytest.raises(ModelLoadError):  # the refusal came first: without the key, loading is reached
        render(job, progress=False)


@pytest.mark.parametrize(
    ("family", "says"),
    [("animatediff", "24: the animatediff family conditions on no frame rate"), ("svd", "conditioned on svd.fps")],
)
def test_other_families_refuse_condition_fps(tmp_path, family, says):
    job = family_job(tmp_path, {"path": "tiny", "family": family}, video={"condition_fps": 24})
    problems = family_named(family).job_problems(job)
    assert any(key == "video.condition_fps" and says in problem for key, problem in problems)


def test_condition_fps_below_one_is_refused_naming_the_key(tmp_path):
    refused = r"video.condition_fps: 0: frames per second must be >= 1"
    with pytest.raises(ConfigError, match=refused):
        family_job(tmp_path, {"path": "tiny"}, video={"condition_fps": 0})
    with pytest.raises(ConfigError, match=rf"command line: {refused}"):
        load_job(str(tmp_path / "job.yaml"), ["video.condition_fps=0"])
    assert load_job(str(tmp_path / "job.yaml"), ["video.condition_fps=null"]).config.video.condition_fps is None


def test_unet_adds_the_fps_embedding_to_the_time_embedding(vc2_dir):
    """Every ResNet's time projection sees ``silu(time_embedding(t) + fps_embedding(fps_proj(r)))``."""
    unet = load_bundle(ModelConfig(path=str(vc2_dir))).unet
    seen = []
    projection = unet.down_blocks[0].resnets[0].time_emb_proj
    handle = projection.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    sample, context = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 16, 16)
    with torch.no_grad():
        unet(sample, 500, context, fps=12)
        time = unet.time_embedding(unet.time_proj(torch.tensor([500])).to(unet.dtype))
        expected = torch.nn.functional.silu(time + unet.fps_embedding_of(12, sample.device))
    handle.remove()
    assert torch.allclose(seen[0], expected.repeat_interleave(2, dim=0), atol=1e-6)
    assert not torch.allclose(seen[0], torch.nn.functional.silu(time).repeat_interleave(2, dim=0), atol=1e-3)
    assert unet.time_embedding.post_act is None  # removed after the call


# ---------------------------------------------------------------------------------------------
# The SDE sampler and the errors
# ---------------------------------------------------------------------------------------------


def test_sde_sampler_is_deterministic_for_a_seed(vc2_job):
    job = vc2_job()
    bundle = load_bundle(job.model)
    torch.manual_seed(1)
    first = _single(job, bundle)
    torch.manual_seed(2)  # the step noise must not come from the global generator
    assert torch.equal(first, _single(job, bundle))
    other = copy.deepcopy(job)
    other.noise.seed = 4
    assert (first - _single(other, bundle)).abs().max().item() > 1e-3


def test_sde_scheduler_without_step_noise_is_refused(vc2_job):
    job = vc2_job()
    bundle = load_bundle(job.model)
    scheduler = make_scheduler("dpmpp_sde", bundle.scheduler_config)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="adds noise at every step and needs step_noise"):
        run_steps(lambda x, t: x, scheduler, torch.zeros(1, 4, 2, 8, 8), range(2))


def test_text_encoder_of_another_width_is_refused(tmp_path, tiny_model_dir):
    narrow = tmp_path / "narrow_unet"
    tiny_videocrafter_unet(TinySpec(text_dim=8)).save_pretrained(narrow, safe_serialization=True)
    with pytest.raises(ModelLoadError, match="text encoder width 16 does not match the UNet's cross_attention_dim 8"):
        load_bundle(ModelConfig(path=str(tiny_model_dir), unet=str(narrow)))


def test_eta_with_the_sde_sampler_is_refused_naming_the_key(tmp_path, vc2_dir, vc2_job):
    with pytest.raises(ConfigError, match="sampler.eta"):
        family_job(tmp_path, {"path": str(vc2_dir)}, sampler={"name": "dpmpp_sde", "eta": 0.5})
    job = vc2_job(sampler={"eta": 0.5})  # auto: the family's sampler, known once the model is
    with pytest.raises(ConfigError, match="sampler.eta: eta applies to ddim only, and this job samples with dpmpp_sde"):
        _single(job)


def test_step_parallelism_resolves_auto_to_the_family_sampler_without_weights(vc2_job, tiny_model_dir):
    job = vc2_job(parallel={"step": 2})
    check_sampler("auto", job.model)
    assert not [e for e in preflight_errors(job) if "sampler" in str(e)]
    check_sampler("auto", ModelConfig(path=str(tiny_model_dir)))
    missing = copy.deepcopy(job)
    missing.model.path = str(tiny_model_dir / "absent")
    assert sum("does not exist" in str(e) for e in preflight_errors(missing)) == 1


# ---------------------------------------------------------------------------------------------
# Every axis on two workers (gloo) equals the single worker
# ---------------------------------------------------------------------------------------------

EXACT = ClipParallelConfig(mode="exact")
SYNC = PatchParallelConfig(mode="sync", groupnorm="exact")
PARTIAL = StepParallelConfig(warmup=1)


def _axes(rank: int, world_size: int, job: JobConfig) -> dict:
    return {
        "clip": mesh_latents_worker(rank, world_size, job, ParallelPlan(clip=2), None, EXACT),
        "patch": mesh_latents_worker(rank, world_size, job, ParallelPlan(patch=2), SYNC),
        "cfg": mesh_latents_worker(rank, world_size, job, ParallelPlan(cfg=2)),
        "step": step_latents_worker(rank, world_size, job, 2, StepParallelConfig(warmup=STEPS)),
        "step_partial": step_latents_worker(rank, world_size, job, 2, PARTIAL),
    }


@pytest.fixture(scope="module")
def axes(tmp_path_factory, vc2_dir) -> tuple[JobConfig, list[dict]]:
    job = family_job(tmp_path_factory.mktemp("vc2_axes"), {"path": str(vc2_dir)})
    return job, run_local(_axes, 2, job, num_threads=1, timeout_s=300)


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["clip", "patch", "cfg", "step"])
def test_each_axis_equals_the_single_worker(axes, axis):
    job, parts = axes
    single = _single(job)
    if axis == "clip":
        assert [p["clip"]["frames"] for p in parts] == [range(0, 4), range(4, 8)]
        video = torch.cat([p["clip"]["latents"] for p in parts], dim=2)  # the SDE noise does not see the split
    else:
        assert torch.equal(parts[0][axis]["latents"], parts[1][axis]["latents"])
        video = parts[0][axis]["latents"]
    assert _relative_error(video, single) <= RELATIVE_TOL


@pytest.mark.slow
def test_step_parallel_sde_with_partial_warmup_equals_its_single_process_reference(axes):
    job, parts = axes
    reference = _single(job, loop=SerialReferenceLoop(2, PARTIAL))
    assert _relative_error(parts[0]["step_partial"]["latents"], reference) <= RELATIVE_TOL
    assert (_single(job) - reference).abs().max().item() > 1e-3  # the drafts are an approximation
