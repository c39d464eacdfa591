"""Our sampling loop equals diffusers' own TextToVideoSDPipeline on the same latents."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, TextToVideoSDPipeline

from videogen.config import load_job
from videogen.decode import decode_chunks
from videogen.models.loader import load_bundle
from videogen.noise.gaussian import video_noise
from videogen.pipeline import WorkerSlot, denoise


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_render_equals_diffusers_text_to_video_pipeline(make_job, tiny_model_dir, sampler):
    job = load_job(make_job(sampler={"name": sampler, "steps": 4})).config
    bundle = load_bundle(job.model)
    latents, evaluations, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(), progress=False)
    ours = torch.cat(list(decode_chunks(bundle.vae, latents, chunk=3)))

    pipe = TextToVideoSDPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    if sampler == "dpmpp":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    pipe.set_progress_bar_config(disable=True)
    initial = video_noise(job.noise.seed, range(8), 4, 16, 16)
    reference = pipe(
        "a red balloon",
        negative_prompt="blurry",
        num_inference_steps=4,
        num_frames=8,
        height=64,
        width=64,
        guidance_scale=7.5,
        latents=initial,
        output_type="np",
    ).frames[0]

    assert evaluations == 4
    assert ours.shape == reference.shape == (8, 64, 64, 3)
    assert (ours - torch.from_numpy(reference)).abs().max().item() <= 1e-4
