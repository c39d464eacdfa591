"""Renders that start from a model folder's text-to-layout prior (``layout:``, docs/layout.md): the start step and
its record, the clip-parallel oracle, when ``auto`` stays off, bad values, and the SDEdit identity of the start."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml

from parallel.launch import run_local
from parallel.plan import plan_render
from parallel.testing import clip_latents_worker
from videogen.checkpoint import job_fingerprint
from videogen.cli import main
from videogen.config import layout_folder, load_job
from videogen.errors import ConfigError
from videogen.models.family import family_named
from videogen.models.layout_prior import (
    LAYOUT_DIRNAME,
    LayoutPrior,
    layout_latents,
    layout_velocity,
    load_layout_prior,
)
from videogen.models.loader import load_bundle
from videogen.models.object_layout import ObjectLayoutPrior
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, WarpedNoiseSpec
from videogen.noise.warped_latents import warped_latent_noise
from videogen.pipeline import WorkerSlot, denoise, initial_noise, layout_noise, render
from videogen.prompts import encode_texts
from videogen.sampling import Denoiser, make_scheduler, run_steps

SIZE, FRAMES, STEPS = 32, 9, 4  # the tiny VAE downsamples by 4: an 8 x 8 latent grid


def _tiny_model_with_prior(folder: Path, objects: bool = False) -> Path:
    """The tiny UNet3D model, built by its family's builder, with a random layout prior of its latent grid and
    text states (tokenizer.model_max_length tokens x the text encoder's hidden size) in ``layout_prior/``: the
    mean prior, or an object prior whose placements are objects of radius about 0.2."""
    folder = family_named("unet3d").build_tiny(folder, seed=0)
    tokens = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"]
    dim = json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_size"]
    torch.manual_seed(0)
    shape = {"text_tokens": tokens, "text_dim": dim, "hidden": 32}
    if objects:
        prior = ObjectLayoutPrior(4, SIZE // 4, SIZE // 4, **shape, slots=2, text_hidden=32)
        last = prior.pixel_body[-1]
        with torch.no_grad():
            prior.quantile_body[-1].bias.copy_(torch.tensor([0.5, 0.5, 0.2, 0.0, 0.0, 0.0]))
    else:
        prior = LayoutPrior(4, SIZE // 4, SIZE // 4, **shape, frequencies=3)
        last = prior.body[-1]
    with torch.no_grad():
        last.weight.mul_(4.0)  # a layout of about unit size, so the start is visible in every frame
    prior.save_pretrained(folder / LAYOUT_DIRNAME, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def layout_model(tmp_path_factory) -> Path:
    return _tiny_model_with_prior(tmp_path_factory.mktemp("models") / "tiny-layout")


@pytest.fixture(scope="module")
def object_model(tmp_path_factory) -> Path:
    return _tiny_model_with_prior(tmp_path_factory.mktemp("models") / "tiny-objects", objects=True)


def _job(folder: Path, model: Path, overrides: list[str] = (), **sections):
    spec = {
        "model": {"path": str(model)},
        "prompts": {"text": "a red circle moving right", "negative": "blurry"},
        "video": {"width": SIZE, "height": SIZE, "num_frames": FRAMES, "fps": 8},
        "sampler": {"name": "ddim", "steps": STEPS, "guidance_scale": 7.5},
        "noise": {"seed": 3},
        "parallel": {"launcher": "local"},
        "output": {"path": str(folder / "out.mp4"), "decode_chunk_frames": 3},
    }
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, load_job(str(path), list(overrides)).config


def _latents(job) -> torch.Tensor:
    latents, _, _ = denoise(job, load_bundle(job.model), job.noise.seed, WorkerSlot(), progress=False)
    return latents


def test_a_render_starts_from_the_layout_at_the_strength_step_and_records_it(layout_model, tmp_path):
    _, job = _job(tmp_path, layout_model)
    assert layout_folder(job) == layout_model / LAYOUT_DIRNAME
    result = render(job, progress=False)
    meta = json.loads(Path(f"{result.output}.meta.json").read_text())
    assert meta["layout"] == {
        "prior": str(layout_model / LAYOUT_DIRNAME),
        "strength": 0.4,
        "start_step": 2,
        "noise": "warped",
        "degradation": 0.0,
    }
    assert result.model_evaluations == STEPS - 2
    assert [len(w.calls) for w in plan_render(job).workers] == [STEPS - 2]

    _, off = _job(tmp_path, layout_model, ["layout.prior=off"])
    assert off.layout.prior is False  # YAML reads a bare off as false
    assert (_latents(job) - _latents(off)).abs().amax(dim=(0, 1, 3, 4)).min() > 0.1  # every frame moved
    assert [len(w.calls) for w in plan_render(off).workers] == [STEPS]
    assert job_fingerprint(job) != job_fingerprint(off)
    _, weaker = _job(tmp_path, layout_model, ["layout.strength=0.75"])
    assert job_fingerprint(weaker) != job_fingerprint(job)
    assert [len(w.calls) for w in plan_render(weaker).workers] == [3]


def test_clip_parallel_layout_render_equals_the_single_worker_render(layout_model, tmp_path):
    schedule = [{"text": "a red circle", "start": 0, "end": 5}, {"text": "a blue square", "start": 5, "end": None}]
    _, job = _job(tmp_path, layout_model, prompts={"text": None, "schedule": schedule}, parallel={"clip": 2})
    parts = run_local(clip_latents_worker, 2, job, num_threads=1)
    assert [(p["frames"].start, p["frames"].stop) for p in parts] == [(0, 5), (5, 9)]
    assert all(p["evaluations"] == STEPS - 2 for p in parts)
    joined = torch.cat([p["latents"] for p in parts], dim=2)
    single = _latents(job)
    assert (joined - single).abs().max().item() <= 1e-4
    _, off = _job(tmp_path, layout_model, ["layout.prior=off"], prompts={"text": None, "schedule": schedule})
    assert (single - _latents(off)).abs().amax(dim=(0, 1, 3, 4)).min() > 0.1


def test_an_object_prior_draws_its_layout_from_the_seed_the_same_on_every_worker(object_model, tmp_path):
    _, job = _job(tmp_path, object_model, parallel={"clip": 2})
    parts = run_local(clip_latents_worker, 2, job, num_threads=1)
    joined = torch.cat([p["latents"] for p in parts], dim=2)
    single = _latents(job)
    assert (joined - single).abs().max().item() <= 1e-4
    _, again = _job(tmp_path, object_model)
    assert torch.equal(_latents(again), single)
    bundle = load_bundle(job.model)
    prior = load_layout_prior(object_model / LAYOUT_DIRNAME)
    assert isinstance(prior, ObjectLayoutPrior)
    text = encode_texts(bundle.tokenizer, bundle.text_encoder, ["a red circle moving right"])
    layouts = [layout_latents(prior, text, range(FRAMES), FRAMES, 8, 8, seed) for seed in (3, 4)]
    assert (layouts[0] - layouts[1]).abs().max() > 0.01  # another seed draws another placement
    _, other_seed = _job(tmp_path, object_model, ["noise.seed=4"])
    assert (single - _latents(other_seed)).abs().max() > 0.1


def _first_frame(folder: Path) -> Path:
    path = folder / "first.png"
    iio.imwrite(path, (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    return path


def test_auto_stays_off_with_warped_noise_and_with_an_image(layout_model, tmp_path):
    warped = {"kind": "warped", "warped": {"source": "camera", "camera": {"moves": [{"pan": 0.05}]}}}
    image = {"path": str(_first_frame(tmp_path)), "strength": 0.75}
    for sections in ({"noise": warped}, {"image": image}):
        _, auto = _job(tmp_path, layout_model, **sections)
        _, off = _job(tmp_path, layout_model, ["layout.prior=off"], **sections)
        assert layout_folder(auto) is None
        assert torch.equal(_latents(auto), _latents(off))
    _, given = _job(tmp_path, layout_model, [f"layout.prior={layout_model / LAYOUT_DIRNAME}"], noise=warped)
    assert layout_folder(given) == layout_model / LAYOUT_DIRNAME  # a folder given is used even with warped noise
    assert [len(w.calls) for w in plan_render(given).workers] == [STEPS - 2]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["layout.prior={tmp}/nowhere"], ["layout.prior", "nowhere"]),
        (["layout.strength=0"], ["layout.strength"]),
        (["layout.strength=1.5"], ["layout.strength"]),
        (["layout.prior={model}/layout_prior", "image.path={tmp}/first.png"], ["layout.prior", "image.path"]),
    ],
)
def test_bad_layout_values_are_one_line_naming_the_keys_and_render_nothing(
    layout_model, tmp_path, capsys, overrides, named
):
    _first_frame(tmp_path)
    path, _ = _job(tmp_path, layout_model)
    argv = [o.format(tmp=tmp_path, model=layout_model) for o in overrides]
    code = main(["render", str(path), *argv, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("videogen: error: "), err
    assert all(word in err for word in named), err
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.meta.json").exists()


def test_a_prior_for_other_text_states_is_refused_naming_the_key(layout_model, tmp_path):
    other = tmp_path / "other_prior"
    LayoutPrior(4, 8, 8, text_tokens=7, text_dim=16, hidden=8, frequencies=1).save_pretrained(
        other, safe_serialization=True
    )
    _, job = _job(tmp_path, layout_model, [f"layout.prior={other}"])
    with pytest.raises(
        ConfigError, match=r"^layout.prior: .* 7 x 16; this model has 4-channel latents and text states of 16 x 16"
    ):
        _latents(job)


class _FromLayout:
    """A UNet call that, for the timesteps before the start, returns the output implied by ``x0 = m`` at the
    given latents (epsilon ``(x - sqrt(abar) m) / sqrt(1 - abar)``, v ``sqrt(abar) eps - sqrt(1 - abar) m``),
    and the real call after."""

    def __init__(self, real, mean: torch.Tensor, early: set[int], alphas: torch.Tensor, form: str):
        self.real, self.mean, self.early, self.alphas, self.form = real, mean, early, alphas, form

    def __call__(self, sample, timestep, context, branches):
        if int(timestep) not in self.early:
            return self.real(sample, timestep, context, branches)
        abar = self.alphas[int(timestep)]
        eps = (sample - abar.sqrt() * self.mean) / (1 - abar).sqrt()
        return eps if self.form == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * self.mean


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_layout_start_is_the_full_ddim_loop_whose_early_outputs_imply_the_layout(
    layout_model, tmp_path, prediction
):
    """docs/layout.md: with DDIM (eta 0), starting at step k from ``add_noise(m, eps, t_k)`` is the loop from step 0
    starting at ``sqrt(abar_T) m + sqrt(1 - abar_T) eps`` whose model output before step k is the one implied by
    ``x0 = m``: every such step lands on ``m`` noised with the same ``eps`` to the next timestep."""
    _, job = _job(tmp_path, layout_model, [f"model.prediction_type={prediction}", "layout.noise=gaussian"])
    bundle = load_bundle(job.model)
    rendered = _latents(job)

    frames = range(FRAMES)
    family, unet = bundle.family, bundle.unet
    text = family.condition(bundle, job, job.noise.seed, frames, lambda t: t)
    prior = load_layout_prior(layout_model / LAYOUT_DIRNAME)
    mean = layout_latents(prior, text.cond, frames, FRAMES, SIZE // 4, SIZE // 4, 0)
    fresh = initial_noise(job, job.noise.seed, frames, bundle)
    scheduler = make_scheduler("ddim", bundle.scheduler_config, prediction)
    scheduler.set_timesteps(STEPS)
    assert scheduler.config.prediction_type == prediction
    abar = scheduler.alphas_cumprod[int(scheduler.timesteps[0])]
    start = abar.sqrt() * mean + (1 - abar).sqrt() * fresh
    early = {int(t) for t in scheduler.timesteps[:2]}  # strength 0.4 of 4 steps: the UNet runs from step 2
    inputs = functools.partial(family.unet_inputs, unet, job=job)
    real = Denoiser(unet, text, job.sampler.guidance_scale, inputs=inputs, call=family.unet_call(unet, job, text))
    call = _FromLayout(real.call, mean, early, scheduler.alphas_cumprod, prediction)
    denoiser = Denoiser(unet, text, job.sampler.guidance_scale, inputs=inputs, call=call)
    reference = run_steps(denoiser, scheduler, start, frames)
    assert denoiser.evaluations == STEPS
    torch.testing.assert_close(rendered, reference, atol=1e-4, rtol=0)
    _, off = _job(tmp_path, layout_model, [f"model.prediction_type={prediction}", "layout.prior=off"])
    assert (rendered - _latents(off)).abs().max() > 0.1


def test_the_layout_velocity_is_the_translation_that_explains_the_frames():
    """A blurred blob (as a mean layout is) moving (0.5, -0.25) latent px per frame over a background of its
    own colour per channel: the velocity recovers the motion; a still layout has none."""
    frames, size = 12, 16
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    layout = torch.empty(1, 4, frames, size, size)
    for f in range(frames):
        cx, cy = 4.0 + 0.5 * f, 10.0 - 0.25 * f
        blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 12.0)
        for c in range(4):
            layout[0, c, f] = 0.3 * c - 0.5 + (1.0 - 0.4 * c) * blob
    vx, vy = layout_velocity(layout)
    assert vx == pytest.approx(0.5, abs=0.03) and vy == pytest.approx(-0.25, abs=0.03)
    assert layout_velocity(layout[:, :, :1]) == (0.0, 0.0)
    still = layout[:, :, :1].expand(-1, -1, frames, -1, -1)
    assert max(abs(v) for v in layout_velocity(still)) < 1e-4


def test_the_warped_start_noise_moves_with_the_layout(layout_model, tmp_path):
    """``layout.noise: warped`` starts from the camera move that slides the scene by the layout's velocity:
    exactly the warped noise of that move, which is not the job's Gaussian noise."""
    _, job = _job(tmp_path, layout_model)
    bundle = load_bundle(job.model)
    frames = range(FRAMES)
    text = bundle.family.condition(bundle, job, job.noise.seed, frames, lambda t: t)
    prior = load_layout_prior(layout_model / LAYOUT_DIRNAME)
    whole = layout_latents(prior, text.cond, frames, FRAMES, SIZE // 4, SIZE // 4, 0)
    vx, vy = layout_velocity(whole)
    assert abs(vx) + abs(vy) > 1e-3
    move = CameraMoveSpec(pan=-vx / (SIZE // 4), tilt=vy / (SIZE // 4))
    spec = WarpedNoiseSpec(source="camera", degradation=0.0, camera=CameraSpec([move]))
    expected = warped_latent_noise(spec, job.noise.seed, FRAMES, 4, SIZE // 4, SIZE // 4, frames)
    noise = layout_noise(job, whole, job.noise.seed, frames)
    torch.testing.assert_close(noise, expected, atol=0, rtol=0)
    assert (noise - initial_noise(job, job.noise.seed, frames, bundle)).abs().max() > 0.5
    _, gaussian = _job(tmp_path, layout_model, ["layout.noise=gaussian"])
    assert (_latents(job) - _latents(gaussian)).abs().max() > 0.1
