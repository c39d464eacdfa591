"""The bundled shapes model: it loads as shipped (fp16 on disk, fp32 in memory) and renders what it is asked.

These are quality floors, not exact figures: the prompted colour and shape of a few renders, scored by
the synthetic world's own measurements (``videogen.data.measure``), on the model's measured behaviour
with margin (docs/training.md has the full figures). A change that breaks text conditioning, the
pooled caption, v-prediction, the layout prior or the image prior fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from videogen.config import ModelConfig, load_job
from videogen.data.measure import dominant_objects, score_video
from videogen.io.image import load_image
from videogen.models.bundled import SHAPES_DIR
from videogen.models.loader import load_bundle
from videogen.pipeline import prepare_bundle, render, render_frames

PROMPTS = ["a red circle moving right", "a blue triangle moving up", "a yellow square moving left"]


def shapes_job(prompt: str, *overrides: str):
    return load_job(
        None,
        [
            "model.path=shapes",
            f"prompts.text={prompt}",
            "video.width=64",
            "video.height=64",
            "video.num_frames=8",
            "sampler.steps=12",
            "sampler.guidance_scale=6.0",
            "noise.seed=1000",
            *overrides,
        ],
    ).config


@pytest.fixture(scope="module")
def shapes_bundle():
    return prepare_bundle(shapes_job(PROMPTS[0]))


def test_the_bundled_model_is_fp16_on_disk_and_small():
    files = [p for p in SHAPES_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    for weights in SHAPES_DIR.rglob("*.safetensors"):
        with safe_open(str(weights), "pt") as tensors:
            assert {tensors.get_slice(k).get_dtype() for k in tensors.keys()} == {"F16"}, weights
    bundle = load_bundle(ModelConfig(path="shapes"))
    assert next(bundle.unet.parameters()).dtype == torch.float32
    assert bundle.unet.config.time_cond_proj_dim == bundle.text_encoder.config.hidden_size
    assert bundle.scheduler_config["prediction_type"] == "v_prediction"
    assert (SHAPES_DIR / "trip_fusion").is_dir()


def test_renders_show_the_prompted_colour_and_shape_moving_the_prompted_way(shapes_bundle):
    colours = shapes = directions = 0
    for prompt in PROMPTS:
        frames = render_frames(shapes_job(prompt), bundle=shapes_bundle)
        score = score_video(frames, prompt)
        colours += score.colour_ok
        shapes += score.colour_ok and score.shape_ok
        directions += score.direction_ok
    assert colours == len(PROMPTS)
    assert shapes >= len(PROMPTS) - 1
    assert directions >= len(PROMPTS) - 1  # the object layout prior's doing: the UNet alone moved 1 of these 3


def test_the_prompt_decides_the_colour_from_the_same_noise(shapes_bundle):
    """Same seed, two prompts: the main object takes each prompt's colour in most frames."""
    for prompt in ("a green circle moving down", "a blue circle moving down"):
        score = score_video(render_frames(shapes_job(prompt), bundle=shapes_bundle), prompt)
        assert score.colour_ok, (prompt, score.colour_hit_rate)


def test_image_to_video_starts_from_the_image_and_keeps_its_object(shapes_bundle):
    image = "configs/assets/green_square.png"
    frames = render_frames(shapes_job("a green square moving right", f"image.path={image}"), bundle=shapes_bundle)
    target = ((load_image(image, 64, 64).permute(1, 2, 0).numpy() + 1.0) * 127.5).round()
    mse = np.mean((frames[0].astype(np.float64) - target) ** 2)
    assert 10 * np.log10(255.0**2 / mse) > 20.0
    for frame in frames:
        blobs = dominant_objects(frame)
        assert blobs and blobs[0].colour == "green"


def test_the_render_record_says_which_fusion_the_image_prior_used(shapes_bundle, tmp_path):
    image = "configs/assets/green_square.png"
    for fusion, expected in (("auto", str(SHAPES_DIR / "trip_fusion")), ("none", None)):
        out = tmp_path / f"{fusion}.mp4"
        job = shapes_job(
            "a green square moving right",
            f"image.path={image}",
            f"image.fusion={fusion}",
            "video.num_frames=4",
            "sampler.steps=2",
            f"output.path={out}",
        )
        render(job, bundle=shapes_bundle, progress=False)
        record = json.loads(Path(f"{out}.meta.json").read_text())
        assert record["image"] == {"path": image, "fusion": expected}
