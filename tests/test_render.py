"""End-to-end renders on the tiny model: output files, resume, prompt schedules, failures."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import torch

from videogen.checkpoint import checkpoint_dir, checkpoint_steps, resume_step
from videogen.config import load_job
from videogen.errors import VideogenError
from videogen.models.loader import load_bundle
from videogen.pipeline import WorkerSlot, denoise, render
from videogen.sampling import StepHook


def _read_mp4(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        return frames, stream.average_rate, (stream.width, stream.height)


def test_render_writes_playable_mp4_and_records(make_job):
    job = load_job(make_job(video={"fps": 12})).config
    result = render(job, progress=False)
    frames, fps, size = _read_mp4(result.output)
    assert len(frames) == 8 and fps == 12 and size == (64, 64)
    meta = json.loads(open(f"{result.output}.meta.json").read())
    assert meta["seed"] == 3 and meta["versions"]["torch"] == torch.__version__
    recorded = load_job(f"{result.output}.job.yaml").config
    assert recorded == job


@pytest.mark.parametrize("suffix", [".gif", ""])
def test_gif_and_png_outputs(make_job, tmp_path, suffix):
    target = tmp_path / f"video{suffix}"
    result = render(load_job(make_job(), [f"output.path={target}"]).config, progress=False)
    if suffix:
        import imageio.v3 as iio

        assert iio.imread(result.output).shape == (8, 64, 64, 3)
    else:
        assert sorted(p.name for p in result.output.iterdir())[-1] == "frame_000007.png"


class _Interrupt(StepHook):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, ctx, latents):
        if ctx.index == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize(("sampler", "eta"), [("dpmpp", 0.0), ("unipc", 0.0), ("ddim", 0.7)])
def test_resume_after_interrupt_equals_uninterrupted_render(make_job, sampler, eta):
    job = load_job(make_job(sampler={"name": sampler, "steps": 6, "checkpoint_every": 2, "eta": eta})).config
    bundle = load_bundle(job.model)
    full, _, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(), progress=False)
    with pytest.raises(KeyboardInterrupt):
        denoise(job, bundle, job.noise.seed, WorkerSlot(hooks=[_Interrupt(at=4)]), progress=False)
    directory = checkpoint_dir(job)
    assert checkpoint_steps(directory, range(8)) == [1, 3]  # saved after steps 2 and 4; the interrupt hit index 4
    step = resume_step(directory, range(8))
    resumed, evaluations, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(), resume_from=step, progress=False)
    assert evaluations == 2
    assert torch.equal(resumed, full)


def test_resume_refuses_a_changed_job(make_job):
    path = make_job(sampler={"steps": 4, "checkpoint_every": 2})
    job = load_job(path).config
    bundle = load_bundle(job.model)
    denoise(job, bundle, job.noise.seed, WorkerSlot(hooks=[]), progress=False)
    changed = load_job(path, ["prompts.text=something else"]).config
    with pytest.raises(VideogenError, match="belongs to a different job"):
        denoise(changed, bundle, changed.noise.seed, WorkerSlot(), resume_from=1, progress=False)


def test_prompt_schedule_with_one_text_equals_single_prompt(make_job):
    single = load_job(make_job()).config
    schedule = load_job(
        make_job(
            prompts={
                "text": "",
                "schedule": [{"text": "a red balloon", "end": 3}, {"text": "a red balloon", "start": 3}],
            }
        )
    ).config
    bundle = load_bundle(single.model)
    a, _, _ = denoise(single, bundle, 3, WorkerSlot(), progress=False)
    b, _, _ = denoise(schedule, bundle, 3, WorkerSlot(), progress=False)
    assert (a - b).abs().max().item() <= 1e-5


def test_prompt_schedule_conditions_each_frame_on_its_prompt(make_job):
    job = load_job(
        make_job(
            prompts={"text": "", "schedule": [{"text": "a red balloon", "end": 4}, {"text": "zebra", "start": 4}]},
            sampler={"guidance_scale": 1.0},
        )
    ).config
    bundle = load_bundle(job.model)
    mixed, _, _ = denoise(job, bundle, 3, WorkerSlot(), progress=False)
    single, _, _ = denoise(
        load_job(make_job(sampler={"guidance_scale": 1.0})).config, bundle, 3, WorkerSlot(), progress=False
    )
    # the two halves differ from the single-prompt render, the second far more than the first
    early = (mixed[:, :, :4] - single[:, :, :4]).abs().mean()
    late = (mixed[:, :, 4:] - single[:, :, 4:]).abs().mean()
    assert late > 2 * early > 0


def test_a_schedule_in_shares_of_the_video_is_recorded_in_frames_and_rerenders_the_same(make_job, tmp_path):
    import yaml

    from videogen.api import render_job

    shares = [{"text": "a red balloon", "end": "50%"}, {"text": "zebra", "start": 0.5}]
    first = render_job(make_job(prompts={"text": "", "schedule": shares}), ["sampler.steps=2"], progress=False)
    record = Path(f"{first.output}.job.yaml")
    schedule = yaml.safe_load(record.read_text())["prompts"]["schedule"]
    assert [(seg["start"], seg["end"]) for seg in schedule] == [(0, 4), (4, None)]
    again = render_job(record, [f"output.path={tmp_path / 'again.mp4'}"], progress=False)
    assert again.output.read_bytes() == first.output.read_bytes()


class _Fail(StepHook):
    def on_step_end(self, ctx, latents):
        raise RuntimeError("worker exploded")


def test_failed_render_leaves_no_output(make_job, tmp_path, monkeypatch):
    import videogen.pipeline as pipeline

    job = load_job(make_job()).config

    def broken_decode(vae, latents, chunk):
        yield torch.zeros(2, 64, 64, 3)
        raise RuntimeError("decoder out of memory")

    monkeypatch.setattr(pipeline, "decode_chunks", broken_decode)
    with pytest.raises(RuntimeError, match="out of memory"):
        render(job, progress=False)
    assert list(tmp_path.glob("out*")) == [] and list(tmp_path.glob(".out*")) == []


def test_frame_count_not_a_multiple_of_the_chunk(make_job):
    result = render(
        load_job(make_job(video={"num_frames": 7}), ["output.decode_chunk_frames=3"]).config, progress=False
    )
    assert len(_read_mp4(result.output)[0]) == 7


def test_warped_noise_render_moves_the_initial_noise(make_job):
    from videogen.pipeline import initial_noise

    warped = {
        "kind": "warped",
        "warped": {"source": "camera", "degradation": 0.0, "upsample": 1, "camera": {"moves": [{"pan": 0.0625}]}},
    }
    job = load_job(make_job(noise=warped)).config
    bundle = load_bundle(job.model)
    noise = initial_noise(job, 3, range(8), bundle)[0]  # (C, F, 16, 16): a 1-latent-pixel pan per frame
    shifted = torch.nn.functional.cosine_similarity(noise[:, 1, :, :-1].flatten(), noise[:, 0, :, 1:].flatten(), dim=0)
    assert shifted > 0.9
    assert render(job, progress=False).frames == 8


def test_bad_warped_section_names_the_key(make_job):
    from videogen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"job.yaml: noise.warped.degradation"):
        load_job(make_job(noise={"kind": "warped", "warped": {"degradation": 3.0}}))
