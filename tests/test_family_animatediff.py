"""The AnimateDiff family: loading, the diffusers oracle, frame positions under clip sharding, every axis.

Oracles: our single-worker render equals diffusers' ``AnimateDiffPipeline`` on the same latents; exact
clip parallelism (each clip adding the positions of its global frame indices), patch (sync), cfg and
step (full warm-up) on gloo workers equal the single worker; dual-scope attention past the model's
frame-position limit on two workers equals its single-process masked reference.
"""

from __future__ import annotations

import copy
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import family_job
from diffusers import AnimateDiffPipeline

from parallel.clip import ClipParallelConfig, apply_clip_parallel
from parallel.comm import AxisComm
from parallel.dual_scope import (
    DualScopeConfig,
    apply_dual_scope_reference,
    global_frame_indices,
    key_set,
    position_windows,
)
from parallel.launch import run_local
from parallel.mesh import ParallelPlan
from parallel.patch import PatchParallelConfig
from parallel.plan import measured_traffic, plan_render, preflight_errors
from parallel.step import StepParallelConfig
from parallel.testing import mesh_latents_worker, step_latents_worker
from videogen import cli
from videogen.api import render_job
from videogen.config import JobConfig, ModelConfig
from videogen.errors import ConfigError, ModelLoadError
from videogen.models.families.animatediff import (
    TINY_FRAME_LIMIT,
    MotionUNet,
    write_tiny_animatediff,
    write_tiny_motion_adapter,
)
from videogen.models.loader import load_bundle, model_family
from videogen.noise.gaussian import video_noise
from videogen.pipeline import WorkerSlot, check_model_limits, denoise, render_frames
from videogen.sampling import run_steps

TOL = 1e-4
STEPS = 3
LONG = 30  # past the tiny model's 16 positions: three position windows of 10 frames over two clips of 15
SMALL_SCOPE = DualScopeConfig(local_radius=2, global_frames=4)


@pytest.fixture(scope="module")
def ad_dir(tmp_path_factory):
    return write_tiny_animatediff(tmp_path_factory.mktemp("animatediff") / "tiny-ad", seed=0)


@pytest.fixture
def ad_job(tmp_path, ad_dir):
    return lambda **sections: family_job(tmp_path, {"path": str(ad_dir)}, **sections)


def _single(job: JobConfig, bundle=None, install=None) -> torch.Tensor:
    bundle = bundle if bundle is not None else load_bundle(job.model)
    latents, _, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(install=install, loop=run_steps), progress=False)
    return latents


def _long_job(folder, ad_dir) -> JobConfig:
    return family_job(
        folder,
        {"path": str(ad_dir)},
        video={"width": 16, "height": 16, "num_frames": LONG},
        sampler={"steps": 2},
        parallel={"clip_mode": "dual_scope", "dual_scope": {"local_radius": 2, "global_frames": 4}},
    )


def _reference_install(config: DualScopeConfig, bundle):
    def install(unet, denoiser):
        modules = bundle.family.temporal_modules(unet)
        return apply_dual_scope_reference(unet, config, modules=modules).remove

    return install


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _unet_output(bundle) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    sample, context = torch.randn(1, 4, 6, 8, 8, generator=gen), torch.randn(1, 16, 16, generator=gen)
    with torch.no_grad():
        return bundle.unet(sample, 500, context).sample


@pytest.mark.parametrize("layout", ["pipeline", "unet2d", "sd"])
def test_every_layout_loads_the_same_motion_unet(tmp_path, ad_dir, layout):
    folder = write_tiny_animatediff(tmp_path / layout, seed=0, layout=layout)
    model = {"path": str(folder)}
    if layout == "sd":
        model["motion_adapter"] = str(write_tiny_motion_adapter(tmp_path / "adapter", seed=0))
    cfg = ModelConfig(**model)
    assert model_family(cfg).name == "animatediff"
    bundle = load_bundle(cfg)
    assert type(bundle.unet) is MotionUNet and bundle.family.default_sampler == "ddim"
    assert bundle.family.frame_limit(dict(bundle.unet.config)) == TINY_FRAME_LIMIT
    assert torch.equal(_unet_output(bundle), _unet_output(load_bundle(ModelConfig(path=str(ad_dir)))))


def test_a_motion_unet_saved_by_videogen_loads_back(tmp_path, ad_dir):
    bundle = load_bundle(ModelConfig(path=str(ad_dir)))
    bundle.unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    cfg = ModelConfig(path=str(ad_dir), unet=str(tmp_path / "unet"))
    assert model_family(cfg).name == "animatediff"
    assert torch.equal(_unet_output(load_bundle(cfg)), _unet_output(bundle))


def test_stable_diffusion_folder_without_an_adapter_is_not_animatediff(tmp_path):
    folder = write_tiny_animatediff(tmp_path / "sd", seed=0, layout="sd")
    with pytest.raises(ModelLoadError, match="UNet2DConditionModel, which no model family claims"):
        model_family(ModelConfig(path=str(folder)))
    with pytest.raises(ModelLoadError, match="model.motion_adapter: the UNet in .* needs a MotionAdapter"):
        load_bundle(ModelConfig(path=str(folder), family="animatediff"))


def test_an_adapter_beside_a_motion_unet_is_refused(tmp_path, ad_dir):
    adapter = write_tiny_motion_adapter(tmp_path / "adapter", seed=0)
    with pytest.raises(ModelLoadError, match="model.motion_adapter: .* is a UNetMotionModel"):
        load_bundle(ModelConfig(path=str(ad_dir), motion_adapter=str(adapter)))


def test_a_named_adapter_folder_that_does_not_exist_stops_the_plan(tmp_path, ad_dir, ad_job):
    job = ad_job()
    job.model.motion_adapter = str(tmp_path / "absent")
    assert any("model.motion_adapter" in str(e) and "does not exist" in str(e) for e in preflight_errors(job))


def test_build_tiny_model_cli_writes_an_animatediff_pipeline_folder(tmp_path):
    out = tmp_path / "built"
    assert cli.main(["build-tiny-model", str(out), "--family", "animatediff"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AnimateDiffPipeline" and index["unet"] == ["diffusers", "UNetMotionModel"]
    assert (out / "motion_adapter" / "config.json").is_file()
    job = family_job(tmp_path, {"path": str(out)}, video={"num_frames": 3}, sampler={"steps": 2})
    assert _single(job).shape == (1, 4, 3, 8, 8)


def test_temporal_modules_are_the_motion_transformers_with_their_positions(ad_dir):
    bundle = load_bundle(ModelConfig(path=str(ad_dir)))
    family, unet = bundle.family, bundle.unet
    temporal = family.temporal_modules(unet)
    assert not temporal.convs and temporal.frame_limit == TINY_FRAME_LIMIT
    assert all(".motion_modules." in path for path, _ in temporal.transformers)
    assert len(temporal.positions) == len(temporal.transformers) and len(temporal.attentions()) == 2 * len(
        temporal.positions
    )
    assert all(temporal.position_of(path) is not None for path, _ in temporal.attentions())
    spatial = {path for path, _ in family.spatial_modules(unet).attentions}
    assert spatial and not any(".motion_modules." in path for path in spatial)


# ---------------------------------------------------------------------------------------------
# The diffusers oracle
# ---------------------------------------------------------------------------------------------


def test_render_equals_diffusers_animatediff_pipeline(ad_job, ad_dir):
    job = ad_job(sampler={"steps": 4})
    ours = _single(job)
    pipe = AnimateDiffPipeline.from_pretrained(str(ad_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        job.prompts.text,
        negative_prompt=job.prompts.negative,
        num_inference_steps=4,
        num_frames=8,
        height=32,
        width=32,
        guidance_scale=job.sampler.guidance_scale,
        latents=video_noise(job.noise.seed, range(8), 4, 8, 8),
        output_type="latent",
    ).frames
    assert ours.shape == reference.shape == (1, 4, 8, 8, 8)
    assert (ours - reference).abs().max().item() <= TOL


# ---------------------------------------------------------------------------------------------
# The frame-position limit and the position windows
# ---------------------------------------------------------------------------------------------


def test_exact_mode_past_the_limit_is_refused_naming_the_keys_and_the_fix(ad_job):
    job = ad_job(video={"num_frames": TINY_FRAME_LIMIT + 1})
    with pytest.raises(ConfigError, match="video.num_frames: 17 frames are more than the 16 frame positions") as error:
        check_model_limits(job)
    assert "parallel.clip_mode: exact" in str(error.value) and "parallel.clip_mode: dual_scope" in str(error.value)
    unet = load_bundle(job.model).unet
    modules = load_bundle(job.model).family.temporal_modules(unet)
    with pytest.raises(ConfigError, match="video.num_frames: 17 frames"):
        apply_clip_parallel(unet, AxisComm(None, "clip"), range(17), 17, ClipParallelConfig(), modules=modules)


def test_position_windows_are_the_fewest_whose_key_sets_fit():
    assert position_windows(12, SMALL_SCOPE, 16) == [range(0, 12)]  # within the limit: the frames' own indices
    windows = position_windows(LONG, SMALL_SCOPE, 16)
    assert windows == [range(0, 10), range(10, 20), range(20, 30)]
    glob = global_frame_indices(LONG, 4)
    assert max(len(key_set(w, LONG, 2, glob)) for w in windows) <= 16
    assert len(key_set(range(0, 15), LONG, 2, glob)) > 16  # two windows would not fit
    tight = DualScopeConfig(local_radius=4, global_frames=7)  # 2 * 4 + 1 + 7 = 16: single frames, but at the ends
    windows = position_windows(200, tight, 16)
    assert sum(len(w) > 1 for w in windows) == 2 and max(len(w) for w in windows) == 2
    assert max(len(key_set(w, 200, 4, global_frame_indices(200, 7))) for w in windows) == 16


def test_a_scope_wider_than_the_limit_is_refused_naming_the_keys():
    with pytest.raises(ConfigError, match="parallel.dual_scope.local_radius or parallel.dual_scope.global_frames"):
        position_windows(40, DualScopeConfig(local_radius=8, global_frames=4), 16)
    position_windows(40, DualScopeConfig(local_radius=5, global_frames=5), 16)  # 2 * 5 + 1 + 5 fits


def _motion_unet(ad_dir):
    bundle = load_bundle(ModelConfig(path=str(ad_dir)))
    return bundle.unet, bundle.family.temporal_modules(bundle.unet)


def _inputs(frames: int):
    gen = torch.Generator().manual_seed(frames)
    return torch.randn(2, 4, frames, 8, 8, generator=gen), torch.randn(2, 16, 16, generator=gen)


def test_dual_scope_that_sees_every_frame_with_its_own_position_is_the_model_itself(ad_dir):
    """Radius and global frames covering the video: one window, every key twice at its own index, and
    duplicated keys with one bias per scope leave the softmax unchanged, so the output is the model's."""
    unet, modules = _motion_unet(ad_dir)
    sample, context = _inputs(TINY_FRAME_LIMIT)
    with torch.no_grad():
        plain = unet(sample, 900, context).sample
        handle = apply_dual_scope_reference(unet, DualScopeConfig(local_radius=16, global_frames=16), modules=modules)
        covered = unet(sample, 900, context).sample
        handle.remove()
        again = unet(sample, 900, context).sample
    assert (covered - plain).abs().max().item() <= 1e-5
    assert torch.equal(again, plain)  # removing the reference restores the positions


def test_one_clip_worker_past_the_limit_equals_the_single_process_reference(ad_dir):
    unet, modules = _motion_unet(ad_dir)
    sample, context = _inputs(LONG)
    config = ClipParallelConfig(mode="dual_scope", dual_scope=SMALL_SCOPE)
    with torch.no_grad():
        handle = apply_clip_parallel(unet, AxisComm(None, "clip"), range(LONG), LONG, config, modules=modules)
        clipped = unet(sample, 500, context).sample
        handle.remove()
        handle = apply_dual_scope_reference(unet, SMALL_SCOPE, modules=modules)
        reference = unet(sample, 500, context).sample
        handle.remove()
    assert (clipped - reference).abs().max().item() <= TOL
    with pytest.raises(RuntimeError, match="must match"):  # what the model itself does with 30 frames
        with torch.no_grad():
            unet(sample, 500, context)


# ---------------------------------------------------------------------------------------------
# Every axis on gloo workers equals the single worker; dual-scope past the limit equals its reference
# ---------------------------------------------------------------------------------------------

EXACT = ClipParallelConfig(mode="exact")
SYNC = PatchParallelConfig(mode="sync", groupnorm="exact")
DUAL = ClipParallelConfig(mode="dual_scope", dual_scope=SMALL_SCOPE)


def _two(rank: int, world_size: int, job: JobConfig, long: JobConfig) -> dict:
    return {
        "clip": mesh_latents_worker(rank, world_size, job, ParallelPlan(clip=2), None, EXACT),
        "patch": mesh_latents_worker(rank, world_size, job, ParallelPlan(patch=2), SYNC),
        "cfg": mesh_latents_worker(rank, world_size, job, ParallelPlan(cfg=2)),
        "step": step_latents_worker(rank, world_size, job, 2, StepParallelConfig(warmup=STEPS)),
        "dual_scope": mesh_latents_worker(rank, world_size, long, ParallelPlan(clip=2), None, DUAL),
    }


@pytest.fixture(scope="module")
def axes(tmp_path_factory, ad_dir) -> tuple[JobConfig, JobConfig, list[dict], tuple[JobConfig, list[dict]]]:
    job = family_job(tmp_path_factory.mktemp("ad_axes"), {"path": str(ad_dir)})
    long = _long_job(tmp_path_factory.mktemp("ad_long"), ad_dir)
    two = run_local(_two, 2, job, long, num_threads=1, timeout_s=300)
    twelve = family_job(tmp_path_factory.mktemp("ad_twelve"), {"path": str(ad_dir)}, video={"num_frames": 12})
    three = run_local(mesh_latents_worker, 3, twelve, ParallelPlan(clip=3), None, EXACT, num_threads=1, timeout_s=300)
    return job, long, two, (twelve, three)


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["clip", "patch", "cfg", "step"])
def test_each_axis_on_two_workers_equals_the_single_worker(axes, axis):
    job, _, parts, _ = axes
    single = _single(job)
    if axis == "clip":
        assert [p["clip"]["frames"] for p in parts] == [range(0, 4), range(4, 8)]
        video = torch.cat([p["clip"]["latents"] for p in parts], dim=2)
    else:
        assert torch.equal(parts[0][axis]["latents"], parts[1][axis]["latents"])
        video = parts[0][axis]["latents"]
    assert (video - single).abs().max().item() <= TOL


@pytest.mark.slow
def test_exact_clips_on_three_workers_add_the_positions_of_their_global_frames(axes):
    _, _, _, (job, parts) = axes
    assert [p["frames"] for p in parts] == [range(0, 4), range(4, 8), range(8, 12)]
    video = torch.cat([p["latents"] for p in parts], dim=2)
    assert (video - _single(job)).abs().max().item() <= TOL


@pytest.mark.slow
def test_dual_scope_past_the_limit_on_two_workers_equals_the_single_process_reference(axes):
    _, long, parts, _ = axes
    assert [p["dual_scope"]["frames"] for p in parts] == [range(0, 15), range(15, 30)]
    video = torch.cat([p["dual_scope"]["latents"] for p in parts], dim=2)
    bundle = load_bundle(long.model)
    reference = _single(long, bundle, install=_reference_install(SMALL_SCOPE, bundle))
    assert video.shape == (1, 4, LONG, 4, 4)
    assert (video - reference).abs().max().item() <= TOL
    assert set(parts[0]["dual_scope"]["traffic"]["clip"]) - {"setup"} == {"attn_scope", "groupnorm"}


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["clip", "dual_scope"])
def test_the_plan_predicts_the_bytes_the_clip_workers_record(axes, axis):
    """Dual-scope sends the normalised tokens of positioned attentions (``C`` per frame), not keys and values."""
    job, long, parts, _ = axes
    planned = copy.deepcopy(long if axis == "dual_scope" else job)
    planned.parallel.clip = 2
    plan = plan_render(planned)
    assert not plan.problems
    for rank, part in enumerate(parts):
        assert measured_traffic(part[axis]["traffic"]) == plan.traffic[rank]


@pytest.mark.slow
def test_dual_scope_past_the_limit_renders_on_one_worker_as_on_two(tmp_path, ad_dir):
    """The position windows do not depend on the workers, so one clip worker renders the two workers' video."""
    frames = {}
    for workers in (1, 2):
        (tmp_path / str(workers)).mkdir()
        job = _long_job(tmp_path / str(workers), ad_dir)
        job.output.path = str(tmp_path / f"frames-{workers}")
        job.parallel.clip = workers
        job.parallel.threads_per_worker = 1
        result = render_job(job, progress=False)
        frames[workers] = np.stack([iio.imread(p) for p in sorted(result.output.glob("frame_*.png"))]).astype(int)
    assert frames[1].shape == (LONG, 16, 16, 3)
    assert np.abs(frames[1] - frames[2]).max() <= 1


def test_one_process_refuses_position_windows_and_names_the_entry_point(tmp_path, ad_dir):
    job = _long_job(tmp_path, ad_dir)
    with pytest.raises(ConfigError, match="position windows .* use videogen.api.render_job"):
        render_frames(job)
