"""`videogen train`: each stage lowers its loss, writes a model the renderer loads, and resumes exactly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput

from videogen.cli import main
from videogen.config import ModelConfig, load_job
from videogen.errors import ConfigError
from videogen.models.loader import load_bundle
from videogen.noise.flow import resize_flow
from videogen.noise.warp import flow_correlation
from videogen.pipeline import render
from videogen.train.batches import ShapesSource, sample_generator
from videogen.train.config import load_train_job
from videogen.train.loop import SingleWorker
from videogen.train.run import JobRunner, train_job
from videogen.train.stages import encode_clips, unet_draws

TINY = [
    "data.width=32",
    "data.height=32",
    "data.frames=4",
    "model.architecture.vae_channels=[8,8]",
    "model.architecture.unet_channels=[8,16]",
    "model.architecture.norm_groups=4",
    "model.architecture.text_dim=16",
    "model.architecture.text_heads=2",
    "model.architecture.attention_head_dim=4",
    "threads=1",
    "vae.batch_size=8",
    "image.batch_size=4",
    "unet.batch_size=2",
    "trip.batch_size=2",
    "trip.dim=16",
    "trip.heads=2",
    "layout.batch_size=16",
    "layout.clips=6",
    "layout.hidden=32",
]


def tiny_job(out: Path, *overrides: str):
    return load_train_job(None, [f"out={out}", *TINY, *overrides]).config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run of every stage (a pooled-caption UNet, an object layout prior), shared by the
    tests that only read its output."""
    out = tmp_path_factory.mktemp("train") / "model"
    job = tiny_job(
        out,
        "vae.steps=40",
        "vae.lr=3e-3",
        "image.steps=10",
        "unet.steps=30",
        "unet.lr=2e-3",
        "trip.steps=8",
        "layout.steps=30",
        "layout.lr=3e-3",
        "layout.kind=objects",
        "model.architecture.pooled_text=true",
    )
    return job, train_job(job, progress=False)


def _objective_loss(job, stage: str, indices: list[int]) -> float:
    runner = JobRunner(job, SingleWorker(), resume=True, progress=False, log=lambda _: None)
    run = getattr(runner, f"{stage}_stage")()
    if stage == "layout":
        run.objective.first_clip = 10**6  # a pool of clips the stage never saw
    with torch.no_grad():
        return float(run.objective(indices))


def test_every_stage_lowers_its_loss_on_held_out_samples(trained, tmp_path):
    job, result = trained
    assert set(result.stages) == {"vae", "image", "unet", "trip", "layout"}
    held_out = list(range(10**6, 10**6 + 8))
    fresh = tiny_job(tmp_path / "fresh", "stages=[vae]")
    before = _objective_loss(fresh, "vae", held_out)
    after_job = tiny_job(Path(job.out), "model.init=" + job.out, "layout.kind=objects")
    after = _objective_loss(after_job, "vae", held_out)
    assert after < 0.5 * before, (before, after)
    for stage in ("image", "unet", "trip"):
        losses = result.stages[stage].losses
        assert np.isfinite(losses).all()
    unet = result.stages["unet"].losses
    assert np.mean(unet[-10:]) < np.mean(unet[:3]), unet
    new_prior = _objective_loss(tiny_job(Path(job.out), "layout.kind=objects"), "layout", held_out)
    trained_prior = _objective_loss(after_job, "layout", held_out)
    assert trained_prior < 0.5 * new_prior, (new_prior, trained_prior)


def test_the_output_folder_is_a_model_the_renderer_loads(trained, tmp_path):
    job, _ = trained
    out = Path(job.out)
    parts = ("model_index.json", "vae", "unet", "text_encoder", "tokenizer", "scheduler", "trip_fusion", "layout_prior")
    for part in parts:
        assert (out / part).exists(), part
    assert not list(out.rglob("*.bin"))
    assert (out / "train" / "loss_unet.png").stat().st_size > 1000
    bundle = load_bundle(ModelConfig(path=str(out)))
    assert bundle.vae.config.scaling_factor != pytest.approx(0.18215)
    assert bundle.unet.config.time_cond_proj_dim == bundle.text_encoder.config.hidden_size
    assert bundle.scheduler_config["prediction_type"] == "v_prediction"
    video = tmp_path / "clip.mp4"
    loaded = load_job(
        None,
        [
            f"model.path={out}",
            "prompts.text=a red circle moving right",
            "video.width=32",
            "video.height=32",
            "video.num_frames=4",
            "sampler.steps=2",
            f"output.path={video}",
        ],
    )
    result = render(loaded.config, progress=False)
    assert result.output.is_file() and result.frames == 4


@pytest.mark.parametrize(
    ("stages", "objective", "extra"),
    [
        ("vae,unet", "UnetObjective", ()),
        ("vae,image,layout", "LayoutObjective", ()),
        ("vae,image,layout", "LayoutObjective", ("layout.kind=objects",)),
    ],
)
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, stages, objective, extra):
    stage = stages.split(",")[-1]
    overrides = (f"stages=[{stages}]", "vae.steps=3", "image.steps=1", f"{stage}.steps=6", *extra)
    overrides += (f"{stage}.checkpoint_every=3",)
    whole = tiny_job(tmp_path / "whole", *overrides)
    train_job(whole, progress=False)

    class Interrupted(Exception):
        pass

    class StopAfter(SingleWorker):
        """Runs normally until the stage objective's fifth call, then fails like a killed run."""

        calls = 0

        def wrap(self, module):
            if type(module).__name__ != objective:
                return module

            def call(indices):
                StopAfter.calls += 1
                if StopAfter.calls == 5:
                    raise Interrupted
                return module(indices)

            return call

    cut = tiny_job(tmp_path / "cut", *overrides)
    with pytest.raises(Interrupted):
        train_job(cut, progress=False, workers=StopAfter())
    with pytest.raises(ConfigError, match="--resume"):
        train_job(cut, progress=False)
    resumed = train_job(cut, progress=False, resume=True)
    assert resumed.stages[stage].start_step == 3
    a = torch.load(tmp_path / "whole" / "train" / f"{stage}.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "train" / f"{stage}.pt", weights_only=True)
    assert a["losses"] == b["losses"]
    for name in a["model"]:
        for key, value in a["model"][name].items():
            assert torch.equal(value, b["model"][name][key]), (name, key)
            assert torch.equal(a["ema"][name][key], b["ema"][name][key]), (name, key)


def test_the_video_stage_starts_from_the_image_stage(tmp_path):
    job = tiny_job(tmp_path / "m", "stages=[vae,image]", "vae.steps=2", "image.steps=3")
    train_job(job, progress=False)
    runner = JobRunner(
        tiny_job(tmp_path / "m", "stages=[vae,image,unet]"), SingleWorker(), False, False, lambda _: None
    )
    image_unet = runner.written(UNet3DConditionModel, "unet", "test")
    run = runner.unet_stage()
    for a, b in zip(run.modules["unet"].parameters(), image_unet.parameters(), strict=True):
        assert torch.equal(a, b)
    alone = JobRunner(tiny_job(tmp_path / "m", "stages=[vae,unet]"), SingleWorker(), False, False, lambda _: None)
    fresh = alone.unet_stage().modules["unet"]
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), image_unet.parameters(), strict=True))


def test_the_objective_targets_v_or_epsilon_as_the_scheduler_predicts(tmp_path):
    """With the network replaced by the exact target, the loss is zero: ``v`` for a v model, ``eps`` else."""
    for prediction in ("v_prediction", "epsilon"):
        job = tiny_job(tmp_path / prediction, "stages=[vae]", "vae.steps=1", f"model.prediction_type={prediction}")
        train_job(job, progress=False)
        runner = JobRunner(job, SingleWorker(), False, False, lambda _: None)
        assert runner.scheduler().config.prediction_type == prediction
        objective = runner.image_stage().objective

        class Oracle(torch.nn.Module):
            """Answers every call with the target under test."""

            config = objective.unet.config

            def __init__(self) -> None:
                super().__init__()
                self.anchor = torch.nn.Parameter(torch.zeros(1))  # where the objective reads its device
                self.target = torch.zeros(1)

            def forward(self, z_t, timesteps, **kwargs):
                return UNet3DConditionOutput(sample=self.target)

        indices = [0, 1]
        with torch.no_grad():
            batch = objective.source.still_batch(indices)
            generators = [sample_generator(job.seed, "image", i + (1 << 40)) for i in indices]
            latents = encode_clips(objective.vae, batch.frames, generators)
            _, timesteps, noise = unet_draws(job, indices, tuple(latents.shape[1:]), None, 1000, "image")
            abar = objective.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
            v = abar.sqrt() * noise - (1 - abar).sqrt() * latents
            oracle = Oracle()
            objective.unet = oracle
            oracle.target = v if prediction == "v_prediction" else noise
            assert float(objective(indices)) < 1e-10
            oracle.target = noise if prediction == "v_prediction" else v
            assert float(objective(indices)) > 0.1


def test_warped_noise_is_standard_normal_and_follows_the_clip_flow(tmp_path):
    job = tiny_job(
        tmp_path / "m",
        "data.width=64",
        "data.height=64",
        "data.frames=6",
        "data.world.pan=1.0",
        "unet.warped_fraction=1.0",
        "unet.degradation=[0.0,0.0]",
        "model.architecture.vae_channels=[8,8,8]",
    )
    batch = ShapesSource(job.data).clip_batch(list(range(12)))
    _, _, noise = unet_draws(job, list(range(12)), (4, 6, 16, 16), (batch.flow_forward, batch.flow_backward), 1000)
    values = noise.double()
    assert abs(float(values.mean())) < 0.03 and abs(float(values.var()) - 1.0) < 0.05
    correlations = []
    for j in range(12):
        for t in range(5):
            backward = resize_flow(torch.from_numpy(batch.flow_backward[j, t]), (16, 16))
            correlations.append(flow_correlation(noise[j, :, t], noise[j, :, t + 1], backward))
    assert np.mean(correlations) > 0.6, np.mean(correlations)
    gaussian = tiny_job(tmp_path / "g", "data.frames=6", "unet.warped_fraction=0.0")
    _, _, plain = unet_draws(gaussian, list(range(12)), (4, 6, 16, 16), None, 1000)
    pairs = [torch.stack([plain[j, :, 0].flatten(), plain[j, :, 1].flatten()]) for j in range(12)]
    assert abs(np.mean([float(torch.corrcoef(p)[0, 1]) for p in pairs])) < 0.1


def test_a_timestep_range_draws_the_video_stage_timesteps_from_that_share_only(tmp_path):
    job = tiny_job(tmp_path / "m", "unet.timestep_range=[0.6,1.0]")
    _, timesteps, _ = unet_draws(job, list(range(64)), (4, 2, 8, 8), None, 1000)
    assert 600 <= int(timesteps.min()) and int(timesteps.max()) <= 999
    _, stills, _ = unet_draws(job, list(range(64)), (4, 1, 8, 8), None, 1000, "image")
    assert int(stills.min()) < 600  # the image stage keeps every timestep
    full = tiny_job(tmp_path / "f")
    _, default, _ = unet_draws(full, list(range(64)), (4, 2, 8, 8), None, 1000)
    assert int(default.min()) < 100 and int(default.max()) > 900
    with pytest.raises(ConfigError, match=r"unet.timestep_range: must be \[low, high\]"):
        load_train_job(None, [f"out={tmp_path}", "unet.timestep_range=[0.8,0.2]"])


def test_training_job_mistakes_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: vae.steps: must be >= 1"):
        load_train_job(None, [f"out={tmp_path}", "vae.steps=0"])
    with pytest.raises(ConfigError, match=r"stages"):
        load_train_job(None, [f"out={tmp_path}", "stages=[vae,decoder]"])
    with pytest.raises(ConfigError, match=r"unet.degradation"):
        load_train_job(None, [f"out={tmp_path}", "unet.degradation=[0.8,0.2]"])
    with pytest.raises(ConfigError, match=r"model.init: model folder /nonexistent"):
        load_train_job(None, [f"out={tmp_path}", "model.init=/nonexistent"])
    with pytest.raises(ConfigError, match=r"data.bogus"):
        load_train_job(None, [f"out={tmp_path}", "data.bogus=1"])
    with pytest.raises(ConfigError, match=r"layout.kind: objects learns .* only data.source: shapes has"):
        load_train_job(None, [f"out={tmp_path}", "data.source=videos", "data.videos=[x]", "layout.kind=objects"])
    with pytest.raises(ConfigError, match=r"layout.slots: must be >= 1"):
        load_train_job(None, [f"out={tmp_path}", "layout.slots=0"])
    job = tiny_job(tmp_path / "m", "stages=[unet]")
    with pytest.raises(ConfigError, match="needs a trained vae"):
        train_job(job, progress=False)


def test_the_train_command_reports_each_stage(tmp_path, capsys):
    code = main(
        [
            "train",
            "configs/train_shapes.yaml",
            f"out={tmp_path / 'm'}",
            *TINY,
            "stages=[vae]",
            "vae.steps=2",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "vae: 2 steps" in out and "render it with model.path=" in out
    assert main(["train", "configs/train_shapes.yaml", f"out={tmp_path / 'm'}", "vae.steps=-1"]) == 2
    assert "vae.steps" in capsys.readouterr().err


def test_a_user_video_folder_trains_with_sidecar_captions_and_opencv_flow(tmp_path):
    from videogen.data.shapes import ShapesWorld, WorldSpec
    from videogen.io.writer import open_sink

    world = ShapesWorld(WorldSpec(width=32, height=32, frames=10, two_objects=0.0), seed=4)
    for index in range(2):
        clip = world.clip(index)
        with open_sink(tmp_path / "videos" / f"clip{index}.mp4", 8, 18) as sink:
            sink.write(clip.frames)
        (tmp_path / "videos" / f"clip{index}.txt").write_text(clip.caption)
    job = tiny_job(
        tmp_path / "m",
        "data.source=videos",
        f"data.videos=[{tmp_path / 'videos'}]",
        "stages=[vae,unet]",
        "vae.steps=2",
        "unet.steps=2",
        "unet.warped_fraction=1.0",
    )
    result = train_job(job, progress=False)
    assert len(result.stages["unet"].losses) == 2 and np.isfinite(result.stages["unet"].losses).all()
    tokenizer = load_bundle(ModelConfig(path=str(tmp_path / "m"))).tokenizer
    for word in re.findall(r"[a-z]+", world.clip(0).caption):  # the captions' words are whole tokens
        assert len(tokenizer.tokenize(word)) == 1, word


def test_a_fine_tune_folder_is_a_whole_model_before_its_first_step(trained, tmp_path):
    job, _ = trained
    tune = tiny_job(tmp_path / "tune", f"model.init={job.out}", "stages=[trip]")
    JobRunner(tune, SingleWorker(), resume=False, progress=False, log=lambda _: None).prepare_folder()
    assert load_bundle(ModelConfig(path=str(tmp_path / "tune"))).unet is not None


def test_single_frame_clips_are_for_image_stages_only(tmp_path):
    assert load_train_job(None, [f"out={tmp_path}", "data.frames=1", "stages=[vae,unet]"]).config.data.frames == 1
    with pytest.raises(ConfigError, match="data.frames: TRIP needs the image frame and one more"):
        load_train_job(None, [f"out={tmp_path}", "data.frames=1"])


def test_a_zero_initialised_text_path_adds_nothing_until_trained():
    from videogen.train.architecture import ArchitectureConfig, new_unet

    arch = ArchitectureConfig(unet_channels=[8, 16], norm_groups=4, text_dim=16, attention_head_dim=4)
    latents, t = torch.randn(1, 4, 2, 8, 8), torch.tensor([500])
    texts = torch.randn(2, 1, 5, 16)
    for zero, same in ((True, True), (False, False)):
        torch.manual_seed(0)
        unet = new_unet(ArchitectureConfig(**{**arch.__dict__, "zero_init_cross_attention": zero})).eval()
        with torch.no_grad():
            a, b = (unet(latents, t, encoder_hidden_states=text).sample for text in texts)
        assert torch.equal(a, b) == same


def test_the_motion_weight_adds_the_frame_to_frame_change_of_the_error(trained, tmp_path):
    job, _ = trained
    indices = list(range(10**6, 10**6 + 2))
    plain = _objective_loss(tiny_job(Path(job.out), "model.init=" + job.out), "unet", indices)
    weighted = _objective_loss(
        tiny_job(Path(job.out), "model.init=" + job.out, "unet.motion_weight=2.0"), "unet", indices
    )
    assert weighted > plain * 1.01, (plain, weighted)
    with pytest.raises(ConfigError, match=r"unet.motion_weight: must be >= 0"):
        load_train_job(None, [f"out={tmp_path}", "unet.motion_weight=-1"])


def test_the_train_help_names_every_key_and_stage():
    from dataclasses import fields, is_dataclass

    from videogen.train.cli import TRAIN_EPILOG
    from videogen.train.config import STAGES, TrainJob

    def names(cls) -> list[str]:
        out = []
        for f in fields(cls):
            out.append(f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default
            if is_dataclass(default):
                out += names(type(default))
        return out

    words = set(re.findall(r"[a-z_]+", TRAIN_EPILOG))
    missing = [n for n in names(TrainJob) if n not in words]
    assert not missing, missing
    assert f"list of {'|'.join(STAGES)}" in TRAIN_EPILOG
