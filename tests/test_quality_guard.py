"""Quality floors of the bundled ``shapes`` model: a change that breaks what a method does to the video fails here.

A small fixed suite (64x64, 8 frames, 10 DDIM steps, guidance 6, seed 1000), scored with the shapes
world's own measurements (``videogen.eval``, docs/quality.md). Each floor sits below the figure this
suite measured on the bundled model, with a margin, and above what the same suite measures when the
method is switched off (both in the comments), so it fails on a real break and not on noise:

* text conditioning: the prompted colour and shape (against the empty caption, which scores 0 of 4);
* warped noise: the background moves with a requested camera pan (Gaussian noise: it does not);
* the image prior: the first frame is the image, up to its VAE reconstruction (no prior: 13 dB worse);
* parallel modes: exact ones render the one-worker video, approximate ones stay close to it.

The figures come from this suite itself (``tools/bench_quality.py`` measures the same things on more
renders). A retrained model changes them: measure again and move the floors with the comments.
"""

from __future__ import annotations

import numpy as np
import pytest

from videogen.config import load_job
from videogen.data.measure import parse_caption, score_video
from videogen.eval import identity_rate, psnr, score_row, single_object_prompts, vae_round_trip
from videogen.eval.runner import render_in_parallel
from videogen.io.image import fit_image, read_rgb
from videogen.pipeline import prepare_bundle, render_frames

PROMPTS = single_object_prompts(4)  # red circle right, green square left, blue triangle up, yellow circle down
IMAGE = "configs/assets/green_square.png"  # a frame of the shapes world (tools/make_first_frame.py --kind shapes)


def guard_job(prompt: str, *overrides: str):
    return load_job(
        None,
        [
            "model.path=shapes",
            f"prompts.text={prompt}",
            "video.width=64",
            "video.height=64",
            "video.num_frames=8",
            "sampler.steps=10",
            "sampler.guidance_scale=6.0",
            "noise.seed=1000",
            "parallel.launcher=local",
            "parallel.threads_per_worker=1",
            *overrides,
        ],
    ).config


@pytest.fixture(scope="module")
def bundle():
    return prepare_bundle(guard_job(PROMPTS[0]))


@pytest.fixture(scope="module")
def renders(bundle):
    """The four prompts rendered on one worker: the text floors and the parallel modes' reference."""
    return {prompt: render_frames(guard_job(prompt), bundle=bundle) for prompt in PROMPTS}


def identity(frames: np.ndarray, prompt: str) -> float:
    obj = parse_caption(prompt).objects[0]
    return identity_rate(frames, obj.colour, obj.shape)


def test_the_prompt_decides_colour_and_shape(bundle, renders):
    rows = [score_row(frames, prompt) for prompt, frames in renders.items()]
    colour = sum(r.colour_ok for r in rows)
    colour_shape = sum(r.colour_ok and r.shape_ok for r in rows)
    # measured: colour 4 of 4, colour and shape 4 of 4 (over these prompts with seeds 1000 and 1001 and
    # the two that follow them: colour 12 of 12, colour and shape 10 of 12, purple squares called circles)
    assert colour >= 3, [(r.prompt, r.colour_hit_rate) for r in rows]
    assert colour_shape >= 3, [(r.prompt, r.colour_hit_rate, r.shape_hit_rate) for r in rows]

    # The same noise under the empty caption (the unconditional text the model was trained with, which a
    # job cannot ask for): scored against the four captions it passes colour 0 times (measured), below
    # the floor, so a model or pipeline that ignores the prompt fails the assertions above.
    job = guard_job(PROMPTS[0])
    job.prompts.text = ""
    unprompted = render_frames(job, bundle=bundle)
    ignored = sum(score_row(unprompted, prompt).colour_ok for prompt in PROMPTS)
    assert ignored < 3


def test_warped_noise_moves_the_background_with_the_camera(bundle):
    # the camera turns right 1 px/frame (the shapes world's pan speed): the scene should slide left
    pans = []
    for prompt in (
        "a red circle standing still, camera panning right",
        "a green circle standing still, camera panning right",
    ):
        job = guard_job(
            prompt, "noise.kind=warped", "noise.warped.source=camera", "noise.warped.camera.moves=[{pan: 0.015625}]"
        )
        pans.append(score_video(render_frames(job, bundle=bundle), prompt).pan[0])
    # measured background motion x: -0.33 and -0.31 px/frame (requested -1; the model follows the noise
    # loosely); with Gaussian noise and the same prompts +0.02 and +0.18 (over two more prompts: +0.38, +0.41)
    assert np.mean(pans) <= -0.15, pans
    assert max(pans) < 0.0, pans


def test_the_image_prior_starts_on_the_image_and_keeps_its_object(bundle):
    prompt = "a green square moving right"
    image = fit_image(read_rgb(IMAGE), 64, 64)
    ceiling = psnr(vae_round_trip(bundle.vae, image), image)  # measured 35.46 dB: the VAE's own loss
    trained = render_frames(guard_job(prompt, f"image.path={IMAGE}", "image.fusion=auto"), bundle=bundle)
    linear = render_frames(guard_job(prompt, f"image.path={IMAGE}", "image.fusion=none"), bundle=bundle)
    # measured: the first frame 0.05 dB below the ceiling with either fusion (frame 0 follows the prior
    # on every step); without the prior (the image as the noised start alone) 13.4 dB below it
    for frames in (trained, linear):
        assert psnr(frames[0], image) >= ceiling - 1.0, (psnr(frames[0], image), ceiling)
        assert score_row(frames, prompt).colour_hit_rate >= 7 / 8  # measured: green in 8 of 8 frames
    # measured: a green square in 6 of 8 frames with the linear fusion, 3 of 8 without the prior (the
    # rounded square reads as a circle) and 3 of 8 with the trained fusion module, whose frames 2-7 are
    # within 39-51 dB of the prior-free render's (it hands those frames back to the model). The module is
    # used: its frames past the first are not the linear fusion's (22.1 dB apart)
    assert identity(linear, prompt) >= 5 / 8
    assert psnr(trained[1:], linear[1:]) < 60.0


@pytest.mark.slow
def test_parallel_modes_render_the_one_worker_video_or_stay_close(renders, tmp_path):
    prompt = PROMPTS[0]
    single = renders[prompt]
    exact = {
        "clip exact": ["parallel.clip=2", "parallel.clip_mode=exact"],
        "patch sync": [
            "parallel.patch=2",
            "parallel.patch_options.mode=sync",
            "parallel.patch_options.groupnorm=exact",
        ],
    }
    for mode, overrides in exact.items():
        frames = render_in_parallel(guard_job(prompt, *overrides), tmp_path)
        # measured: at most 1 level apart (decoded from latents equal to about 1e-5)
        assert np.abs(frames.astype(int) - single.astype(int)).max() <= 1, mode
    approximate = {  # mode: (overrides, PSNR floor in dB against the one-worker render)
        "PCPP": (["parallel.patch=2"], 36.0),  # measured 41.4 dB
        "ParaStep": (["parallel.step=2"], 44.0),  # measured 49.3 dB
        "dual-scope": (  # measured 24.8 dB: 4 global frames and +-2 local ones of 8 change the video most
            [
                "parallel.clip=2",
                "parallel.clip_mode=dual_scope",
                "parallel.dual_scope.local_radius=2",
                "parallel.dual_scope.global_frames=4",
            ],
            21.0,
        ),
    }
    for mode, (overrides, floor) in approximate.items():
        frames = render_in_parallel(guard_job(prompt, *overrides), tmp_path)
        assert psnr(frames, single) >= floor, (mode, psnr(frames, single))
        # measured: the red circle in 8 of 8 frames, as on one worker
        assert identity(frames, prompt) >= identity(single, prompt) - 1 / 8, mode
