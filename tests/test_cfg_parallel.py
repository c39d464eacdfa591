"""CFG parallelism: the two guidance branches on two workers equal the single-process guided render."""

from __future__ import annotations

import pytest
import torch

from parallel.cfg import CfgParallelDenoiser
from parallel.comm import AxisComm
from parallel.launch import run_local
from parallel.mesh import ParallelPlan
from parallel.patch import PatchParallelConfig
from parallel.testing import mesh_latents_worker
from videogen.config import load_job
from videogen.errors import ConfigError
from videogen.models.loader import load_bundle
from videogen.pipeline import WorkerSlot, denoise
from videogen.prompts import TextContext
from videogen.sampling import Denoiser

TOL = 1e-4
SYNC = PatchParallelConfig(mode="sync", groupnorm="exact")
SCHEDULE = {
    "schedule": [{"text": "a red balloon", "end": 4}, {"text": "a blue kite", "start": 4}],
    "blend_frames": 2,
}


def _runs(rank: int, world_size: int, runs: list) -> list[dict]:
    return [mesh_latents_worker(rank, world_size, *run) for run in runs]


def _single(job) -> torch.Tensor:
    latents, _, _ = denoise(job, load_bundle(job.model), job.noise.seed, WorkerSlot(), progress=False)
    return latents


@pytest.fixture(scope="module")
def renders(tmp_path_factory, tiny_model_dir) -> dict:
    import yaml

    folder = tmp_path_factory.mktemp("cfg_jobs")

    def job(name: str, **prompts):
        spec = {
            "model": {"path": str(tiny_model_dir)},
            "prompts": {"negative": "blurry", **prompts},
            "video": {"width": 32, "height": 32, "num_frames": 8},
            "sampler": {"name": "ddim", "steps": 3, "guidance_scale": 7.5},
            "noise": {"seed": 3},
            "parallel": {"launcher": "local"},
            "output": {"path": str(folder / f"{name}.mp4")},
        }
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return load_job(str(path)).config

    jobs = {"plain": job("plain", text="a red balloon"), "schedule": job("schedule", **SCHEDULE)}
    two = run_local(_runs, 2, [(jobs["plain"], ParallelPlan(cfg=2)), (jobs["schedule"], ParallelPlan(cfg=2))])
    four = run_local(_runs, 4, [(jobs["plain"], ParallelPlan(patch=2, cfg=2), SYNC)])
    return {
        "jobs": jobs,
        "cfg2": [r[0] for r in two],
        "cfg2_schedule": [r[1] for r in two],
        "cfg2_patch2": [r[0] for r in four],
    }


@pytest.mark.slow
@pytest.mark.parametrize(("name", "job"), [("cfg2", "plain"), ("cfg2_schedule", "schedule"), ("cfg2_patch2", "plain")])
def test_cfg_parallel_render_equals_the_single_worker_render(renders, name, job):
    expected = _single(renders["jobs"][job])
    for part in renders[name]:
        assert (part["latents"] - expected).abs().max().item() <= TOL
        assert part["evaluations"] == 3


@pytest.mark.slow
def test_the_branches_sit_on_different_workers_and_exchange_one_output_per_step(renders):
    parts = renders["cfg2"]
    assert [p["coords"]["cfg"] for p in parts] == [0, 1]
    output = 1 * 4 * 8 * 8 * 8 * 4  # one branch's output: B, C, frames, 8x8 latent, fp32
    for part in parts:
        assert part["traffic"]["cfg"] == {
            "output": {"calls": 3, "bytes_sent": 3 * output, "bytes_received": 3 * output}
        }
        assert part["traffic"]["patch"] == {} and part["traffic"]["clip"] == {}


@pytest.mark.slow
def test_cfg_by_patch_exchanges_bands_on_the_cfg_axis(renders):
    band = 1 * 4 * 8 * 4 * 8 * 4  # half the rows
    for part in renders["cfg2_patch2"]:
        assert part["traffic"]["cfg"]["output"] == {"calls": 3, "bytes_sent": 3 * band, "bytes_received": 3 * band}
        assert part["traffic"]["patch"]["output"]["calls"] == 3


def _denoiser(guidance: float) -> Denoiser:
    text = TextContext(torch.zeros(1, 5, 16), torch.zeros(1, 5, 16))
    return Denoiser(torch.nn.Linear(1, 1), text, guidance)


def test_cfg_parallel_needs_guidance_and_two_workers():
    with pytest.raises(ConfigError, match="guidance_scale > 1, got 1.0"):
        CfgParallelDenoiser(_denoiser(1.0), AxisComm(None, "cfg"))
    with pytest.raises(ConfigError, match="over 2 workers, not 1"):
        CfgParallelDenoiser(_denoiser(7.5), AxisComm(None, "cfg"))
