"""The shortest clip is the model family's: clips must hold the halo of the family's temporal convolutions
(UNet3D's four stacked ``k = 3`` convs: 4 frames; SVD's temporal ResNets: 2; AnimateDiff's motion modules
have none), and ``videogen plan`` and the render accept and refuse the same splits."""

from __future__ import annotations

import re

import pytest
import torch
import torch.distributed as dist
from conftest import family_job
from torch import nn

from parallel.clip import ClipParallelConfig, apply_clip_parallel, min_clip_frames
from parallel.comm import AxisComm, CommStats
from parallel.job_plan import clip_config
from parallel.launch import run_local
from parallel.plan import measured_traffic, plan_render
from parallel.runner import render_parallel
from parallel.svd import TEMPORAL_HALO
from parallel.testing import clip_latents_worker
from videogen.cli import main as videogen_main
from videogen.config import JobConfig, ModelConfig
from videogen.errors import ConfigError
from videogen.models.families.animatediff import write_tiny_animatediff
from videogen.models.families.videocrafter2 import write_tiny_videocrafter2
from videogen.models.loader import component_config, load_bundle, model_family
from videogen.models.tiny import tiny_unet
from videogen.pipeline import WorkerSlot, denoise

TOL = 1e-4  # the clip oracles' tolerance (tests/test_family_animatediff.py, tests/test_clip_render.py)
SHORT_PARALLEL = {"clip": 2, "clip_mode": "exact", "threads_per_worker": 1}


@pytest.fixture(scope="module")
def ad_dir(tmp_path_factory):
    return write_tiny_animatediff(tmp_path_factory.mktemp("animatediff") / "tiny-ad", seed=0)


def _short_job(folder, model: dict, steps: int = 2) -> JobConfig:
    """4 frames on 2 exact clip workers: clips of 2 frames."""
    return family_job(folder, model, video={"num_frames": 4}, sampler={"steps": steps}, parallel=SHORT_PARALLEL)


def _single(job: JobConfig) -> torch.Tensor:
    latents, _, _ = denoise(job, load_bundle(job.model), job.noise.seed, WorkerSlot(), progress=False)
    return latents


def _temporal_reach(conv: nn.Module) -> int:
    """Frames one temporal convolution module reads on each side: its stacked temporal paddings."""
    return sum(m.padding[0] for m in conv.modules() if isinstance(m, nn.Conv3d))


def test_each_family_declares_the_halo_its_temporal_convolutions_reach(tmp_path, tiny_model_dir, ad_dir, svd_dir):
    folders = {
        "unet3d": tiny_model_dir,
        "videocrafter2": write_tiny_videocrafter2(tmp_path / "vc2"),
        "animatediff": ad_dir,
        "svd": svd_dir,
    }
    reach = {}
    for name, folder in folders.items():
        cfg = ModelConfig(path=str(folder))
        family = model_family(cfg)
        assert family.name == name
        meta = family.meta_unet(component_config(cfg, "unet"))
        reaches = {_temporal_reach(conv) for _, conv in family.temporal_modules(meta).convs}
        assert len(reaches) <= 1, f"{name}: temporal convolutions of different reach {reaches}"
        reach[name] = reaches.pop() if reaches else 0
        assert family.temporal_halo == reach[name], name
        job = family_job(tmp_path, {"path": str(folder)})
        assert clip_config(job).conv_halo == reach[name]
        assert min_clip_frames(clip_config(job)) == max(1, reach[name])
    assert reach == {"unet3d": 4, "videocrafter2": 4, "animatediff": 0, "svd": TEMPORAL_HALO}


def _clip_traffic(part: dict) -> dict[str, dict[str, int]]:
    return measured_traffic({"clip": part["traffic"]})


def test_animatediff_renders_clips_of_two_frames_as_the_plan_says(tmp_path, ad_dir, capsys):
    job = _short_job(tmp_path, {"path": str(ad_dir)})
    assert videogen_main(["plan", str(tmp_path / "job.yaml")]) == 0
    assert "no problems found" in capsys.readouterr().out
    plan = plan_render(job)
    assert not plan.problems
    assert [w.frames for w in plan.workers] == [(0, 2), (2, 4)]
    parts = run_local(clip_latents_worker, 2, job, num_threads=1, timeout_s=300)
    assert [p["frames"] for p in parts] == [range(0, 2), range(2, 4)]
    joined = torch.cat([p["latents"] for p in parts], dim=2)
    assert (joined - _single(job)).abs().max().item() <= TOL
    for rank, part in enumerate(parts):  # no conv halo predicted, none exchanged
        assert _clip_traffic(part) == plan.traffic[rank]
        assert "conv_halo" not in plan.traffic[rank]["clip"]


def test_svd_renders_clips_of_its_two_frame_halo_as_the_plan_says(tmp_path, svd_dir, first_frame):
    job = _short_job(tmp_path, {"path": str(svd_dir), "family": "svd"}, steps=3)  # as tests/test_family_svd.py
    job.image.path, job.svd.decode_halo = str(first_frame), 2  # SVD animates an image; a decode halo that fits
    plan = plan_render(job)
    assert not plan.problems
    assert [w.frames for w in plan.workers] == [(0, 2), (2, 4)]
    parts = run_local(clip_latents_worker, 2, job, num_threads=1, timeout_s=300)
    joined = torch.cat([p["latents"] for p in parts], dim=2)
    assert (joined - _single(job)).abs().max().item() <= TOL
    for rank, part in enumerate(parts):
        assert _clip_traffic(part)["clip"]["conv_halo"] == plan.traffic[rank]["clip"]["conv_halo"] > 0


def _install_on_short_clips(rank: int, world_size: int, jobs: list[JobConfig]) -> list[str]:
    """What the installer says to each job on a worker handed its 2-frame clip directly (past the frame split)."""
    comm = AxisComm(dist.group.WORLD, "clip", CommStats())
    said = []
    for job in jobs:
        bundle = load_bundle(job.model)
        modules = bundle.family.temporal_modules(bundle.unet)
        frames = range(2 * rank, 2 * rank + 2)
        try:
            apply_clip_parallel(bundle.unet, comm, frames, 4, clip_config(job), modules=modules).remove()
            said.append("installed")
        except ConfigError as error:
            said.append(str(error))
    return said


def test_unet3d_clips_of_two_frames_are_refused_by_the_plan_and_the_render_alike(
    tmp_path, tiny_model_dir, ad_dir, capsys
):
    job = _short_job(tmp_path, {"path": str(tiny_model_dir)})
    split = "splitting 4 frames over 2 clip workers gives clips of 2 frames, but each clip needs at least 4"
    assert videogen_main(["plan", str(tmp_path / "job.yaml")]) == 2
    assert f"parallel.clip: {split} (the temporal halo)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=re.escape(split)):
        render_parallel(job, progress=False)
    (tmp_path / "motion").mkdir()
    motion = _short_job(tmp_path / "motion", {"path": str(ad_dir)})
    said = run_local(_install_on_short_clips, 2, [job, motion], num_threads=1)
    halo = "a clip of 2 frames is shorter than the 4-frame temporal halo; use fewer clip workers or more frames"
    assert said == [[halo, "installed"]] * 2


def test_a_clip_config_halo_other_than_the_temporal_convolutions_reach_is_refused():
    unet = tiny_unet(seed=0)
    with pytest.raises(
        ConfigError, match="its temporal convs reach 4 frames per side, but the clip config's conv_halo is 2"
    ):
        apply_clip_parallel(unet, AxisComm(None, "clip"), range(8), 8, ClipParallelConfig(conv_halo=2))
    with pytest.raises(ConfigError, match="halo cannot be negative"):
        ClipParallelConfig(conv_halo=-1)
