"""Clip-parallel renders through the real pipeline: oracles against the one-worker render."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from parallel.dual_scope import apply_dual_scope_reference
from parallel.job_plan import clip_config, job_clips
from parallel.launch import run_local
from parallel.runner import render_parallel
from parallel.testing import clip_latents_worker
from videogen.config import load_job
from videogen.errors import ConfigError, ModelLoadError
from videogen.models.loader import load_bundle
from videogen.pipeline import WorkerSlot, denoise


def _small(make_job, frames, **parallel):
    return load_job(
        make_job(video={"width": 32, "height": 32, "num_frames": frames}, parallel={"launcher": "local", **parallel})
    ).config


def _single(job):
    latents, _, _ = denoise(job, load_bundle(job.model), job.noise.seed, WorkerSlot(), progress=False)
    return latents


@pytest.mark.parametrize(("workers", "frames"), [(2, 9), (4, 18)])
def test_exact_clip_render_equals_the_single_worker_render(make_job, workers, frames):
    job = _small(make_job, frames, clip=workers, clip_mode="exact")
    parts = run_local(clip_latents_worker, workers, job, num_threads=1)
    assert [len(p["frames"]) for p in parts] == [len(r) for r in np.array_split(range(frames), workers)]
    joined = torch.cat([p["latents"] for p in parts], dim=2)
    assert (joined - _single(job)).abs().max().item() <= 1e-4
    assert all(p["evaluations"] == 3 for p in parts)


def test_warped_noise_clip_render_equals_the_single_worker_render(make_job):
    warped = {"kind": "warped", "warped": {"source": "camera", "camera": {"moves": [{"pan": 0.05, "zoom": 0.01}]}}}
    job = load_job(
        make_job(
            video={"width": 32, "height": 32, "num_frames": 9}, noise=warped, parallel={"launcher": "local", "clip": 2}
        )
    ).config
    parts = run_local(clip_latents_worker, 2, job, num_threads=1)
    joined = torch.cat([p["latents"] for p in parts], dim=2)
    assert (joined - _single(job)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("groupnorm", ["local", "exact"])
def test_dual_scope_render_equals_the_single_process_dual_scope_reference(make_job, groupnorm):
    job = _small(
        make_job,
        16,
        clip=2,
        clip_mode="dual_scope",
        groupnorm=groupnorm,
        dual_scope={"local_radius": 4, "global_frames": 4},
    )
    parts = run_local(clip_latents_worker, 2, job, num_threads=1)
    joined = torch.cat([p["latents"] for p in parts], dim=2)

    config, clips = clip_config(job), job_clips(job)
    local_clips = clips if groupnorm == "local" else None

    def install(unet, denoiser):
        return apply_dual_scope_reference(unet, config.dual_scope, local_groupnorm_clips=local_clips).remove

    reference, _, _ = denoise(job, load_bundle(job.model), job.noise.seed, WorkerSlot(install=install), progress=False)
    assert (joined - reference).abs().max().item() <= 1e-4
    assert (joined - _single(job)).abs().max().item() > 1e-3  # and it is not the exact render
    expected_kinds = {"conv_halo", "attn_scope"} | ({"groupnorm"} if groupnorm == "exact" else set())
    assert set(parts[0]["traffic"]) - {"setup"} == expected_kinds


def test_local_launcher_writes_the_joined_video(make_job, tmp_path):
    job = _small(make_job, 9, clip=2)
    job.output.path = str(tmp_path / "frames")
    result = render_parallel(job, progress=False)
    names = sorted(p.name for p in result.output.iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(9)]
    assert not list(tmp_path.glob(".frames*"))


def test_impossible_split_fails_before_any_worker_starts(make_job):
    job = _small(make_job, 6, clip=2)  # 3 frames per clip < the 4-frame temporal-conv halo
    with pytest.raises(ConfigError, match=r"parallel.clip: .* each clip needs at least 4 \(the temporal halo\)"):
        render_parallel(job, progress=False)


def test_missing_model_fails_before_any_worker_starts(make_job, tmp_path):
    job = _small(make_job, 9, clip=2)
    job.model.path = str(tmp_path / "gone")
    with pytest.raises(ModelLoadError, match="does not exist"):
        render_parallel(job, progress=False)


def test_image_to_video_clip_render_equals_the_single_worker_render(make_job, tmp_path):
    image = tmp_path / "first.png"
    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    iio.imwrite(
        image, np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), np.full((32, 32), 90, np.uint8)], -1)
    )
    job = load_job(
        make_job(
            video={"width": 32, "height": 32, "num_frames": 9},
            image={"path": str(image)},
            parallel={"launcher": "local", "clip": 2},
        )
    ).config
    parts = run_local(clip_latents_worker, 2, job, num_threads=1)
    joined = torch.cat([p["latents"] for p in parts], dim=2)
    assert (joined - _single(job)).abs().max().item() <= 1e-4
    assert "image_latent" in parts[1]["traffic"]


def test_prompt_schedule_across_clips_keeps_every_prompt(make_job):
    schedule = [
        {"text": "a red balloon", "end": 3},
        {"text": "zebra", "start": 3, "end": 5},
        {"text": "a lighthouse", "start": 5, "end": 7},
        {"text": "snow", "start": 7},
    ]
    job = load_job(
        make_job(
            video={"width": 32, "height": 32, "num_frames": 9},
            prompts={"text": "", "schedule": schedule, "blend_frames": 2},
            parallel={"launcher": "local", "clip": 2},
        )
    ).config
    parts = run_local(clip_latents_worker, 2, job, num_threads=1)
    joined = torch.cat([p["latents"] for p in parts], dim=2)
    assert (joined - _single(job)).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("parallel", "workers"),
    [
        ({"patch": 2, "cfg": 2, "patch_options": {"mode": "sync", "groupnorm": "exact"}}, 4),
        ({"step": 2, "step_warmup": 3}, 2),  # warm-up >= steps: every step is computed by both
        ({"clip": 2, "step": 2, "step_warmup": 3}, 4),
    ],
)
def test_render_worker_meshes_equal_the_single_worker_render(make_job, parallel, workers):
    job = load_job(
        make_job(video={"width": 32, "height": 32, "num_frames": 9}, parallel={"launcher": "local", **parallel})
    ).config
    parts = run_local(clip_latents_worker, workers, job, num_threads=1)
    by_clip = {p["frames"].start: p["latents"] for p in parts}
    joined = torch.cat([by_clip[k] for k in sorted(by_clip)], dim=2)
    assert (joined - _single(job)).abs().max().item() <= 1e-4


def test_patch_and_step_render_writes_one_joined_video(make_job, tmp_path):
    job = load_job(
        make_job(
            video={"width": 32, "height": 32, "num_frames": 9},
            parallel={"launcher": "local", "patch": 2, "step": 2, "step_warmup": 1},
            sampler={"steps": 4, "checkpoint_every": 2},
        ),
        [f"output.path={tmp_path / 'frames'}"],
    ).config
    result = render_parallel(job, progress=False)
    assert len(list(result.output.iterdir())) == 9
