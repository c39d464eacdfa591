"""TRIP's Temporal Noise Fusion: the module, save/load, training on tiny generated videos, use in renders."""

from __future__ import annotations

import json
import random

import av
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from videogen.config import ModelConfig, PromptsConfig
from videogen.errors import ConfigError, MediaError, ModelLoadError
from videogen.models.loader import load_bundle
from videogen.models.trip_fusion import TemporalNoiseFusion, find_fusion_module, load_fusion, save_fusion
from videogen.noise.gaussian import video_noise
from videogen.noise.i2v_spec import ImageToVideoSpec, resolve_fusion
from videogen.noise.image_prior import ImagePriorHook, PriorSchedule, encode_image_latent, i2v_initial_latents
from videogen.prompts import build_text_context, encode_texts
from videogen.sampling import Denoiser, make_scheduler, run_steps
from videogen.train.trip import TrainConfig, clip_stream, encode_clips, main, new_fusion, train, trip_loss


def _trained_like(seed: int = 0, **config) -> TemporalNoiseFusion:
    """A module with every weight random (as after training), so no path is an identity."""
    torch.manual_seed(seed)
    module = TemporalNoiseFusion(**{"channels": 4, "dim": 16, "heads": 2, **config})
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return module.eval().requires_grad_(False)  # as load_fusion returns it (same attention kernels)


def test_untrained_module_returns_the_residual():
    module = TemporalNoiseFusion(channels=4, dim=16, heads=2)
    residual, prior = torch.randn(2, 2, 4, 3, 6, 6)
    assert torch.equal(module(residual, prior, torch.tensor(500), range(3)), residual)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_frames_are_fused_independently(patch_size):
    """A clip worker fusing frames 3..5 gets what one worker gets for those frames."""
    module = _trained_like(patch_size=patch_size, frame_horizon=4)
    residual, prior = torch.randn(2, 1, 4, 6, 4, 4)
    with torch.no_grad():
        full = module(residual, prior, torch.tensor(300), range(6))
        part = module(residual[:, :, 3:], prior[:, :, 3:], torch.tensor(300), range(3, 6))
        shifted = module(residual[:, :, 3:], prior[:, :, 3:], torch.tensor(300), range(0, 3))
    torch.testing.assert_close(part, full[:, :, 3:], atol=1e-6, rtol=1e-5)
    assert (shifted - part).abs().max() > 1e-3  # the frame index matters ...
    with torch.no_grad():
        beyond = module(residual[:, :, 3:], prior[:, :, 3:], torch.tensor(300), range(30, 33))
    torch.testing.assert_close(beyond[:, :, 0], part[:, :, 0])  # ... up to the horizon (frame 3 = last seen)


def test_save_load_round_trip_and_discovery(tmp_path):
    module = _trained_like()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert find_fusion_module(model_dir) is None
    folder = save_fusion(module, model_dir / "trip_fusion")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert find_fusion_module(model_dir) == folder and find_fusion_module(folder) == folder
    loaded = load_fusion(folder, channels=4)
    residual, prior = torch.randn(2, 1, 4, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded(residual, prior, 10, range(2)), module(residual, prior, 10, range(2)))
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(ModelLoadError, match="for 4-channel latents, the model has 16"):
        load_fusion(folder, channels=16)
    with pytest.raises(ModelLoadError, match="not a trained fusion module"):
        load_fusion(tmp_path)
    assert resolve_fusion(ImageToVideoSpec(), model_dir) == folder
    assert resolve_fusion(ImageToVideoSpec(fusion="none"), model_dir) is None
    assert resolve_fusion(ImageToVideoSpec(fusion=str(model_dir)), tmp_path) == folder
    with pytest.raises(ConfigError, match="^image.fusion: .*no trained fusion module"):
        resolve_fusion(ImageToVideoSpec(fusion=str(tmp_path / "nowhere")), model_dir)


# -- training -------------------------------------------------------------------------------------


def _write_video(path, frames: int, size: int, seed: int) -> None:
    """A square of random colour sliding over a gradient, libx264 mp4."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, 3)
    ys, xs = np.mgrid[0:size, 0:size]
    background = np.stack([xs * 255 // size, ys * 255 // size, np.full_like(xs, 128)], -1).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = background.copy()
            x = (int(rng.integers(0, 4)) + 2 * i) % (size - 8)
            frame[8:16, x : x + 8] = colour
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for i in range(3):
        _write_video(folder / f"clip{i}.mp4", frames=9, size=32, seed=i)
    (folder / "clip0.txt").write_text("a sliding square\n")
    return folder


def _config(tiny_model_dir, videos, out, **overrides) -> TrainConfig:
    base = dict(model=str(tiny_model_dir), data=[str(videos)], out=str(out), frames=4, width=32, height=32)
    base.update(dim=16, heads=2, steps=60, batch_size=2, lr=3e-3, log_every=0, checkpoint_every=0, device="cpu")
    return TrainConfig(**{**base, **overrides})


def _held_out(bundle, cfg: TrainConfig, videos):
    """Fixed clips, timesteps and noise, to compare losses before and after training."""
    generator = torch.Generator().manual_seed(99)
    stream = clip_stream(sorted(videos.glob("*.mp4")), cfg, random.Random(1))
    clips = np.stack([next(stream)[0] for _ in range(4)])
    latents = encode_clips(bundle.vae, clips, generator)
    text = encode_texts(bundle.tokenizer, bundle.text_encoder, [""] * 4)
    timesteps = torch.tensor([50, 300, 600, 900])
    return latents, text, timesteps, torch.randn(latents.shape, generator=generator)


def test_training_lowers_the_fusion_loss(tiny_model_dir, videos, tmp_path):
    cfg = _config(tiny_model_dir, videos, tmp_path / "run")
    result = train(cfg, log=lambda line: None)
    assert len(result.losses) == cfg.steps and all(np.isfinite(result.losses))
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:10])
    bundle = load_bundle(ModelConfig(path=str(tiny_model_dir)))
    scheduler = DDPMScheduler.from_config(bundle.scheduler_config)
    batch = _held_out(bundle, cfg, videos)
    with torch.no_grad():
        before = trip_loss(bundle.unet, new_fusion(bundle, cfg).eval(), scheduler, *batch)
        after = trip_loss(bundle.unet, load_fusion(result.fusion_dir, channels=4), scheduler, *batch)
    assert after < 0.5 * before
    state = json.loads((tmp_path / "run" / "train_state.json").read_text())
    assert state["step"] == cfg.steps and state["config"]["frames"] == 4


def test_cli_trains_unet_too_and_checkpoints(tiny_model_dir, videos, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", str(tiny_model_dir), "--data", str(videos / "clip1.mp4"), str(videos / "clip2.mp4")]
    argv += ["--out", str(out), "--frames", "3", "--frame-stride", "2", "--width", "32", "--height", "32"]
    argv += ["--steps", "3", "--checkpoint-every", "2", "--log-every", "1", "--dim", "16", "--heads", "2"]
    argv += ["--train-unet", "--device", "cpu"]
    before = load_bundle(ModelConfig(path=str(tiny_model_dir))).unet.state_dict()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "step 3/3" in printed and f"wrote {out / 'trip_fusion'}" in printed
    unet = load_bundle(ModelConfig(path=str(tiny_model_dir), unet=str(out / "unet"))).unet.state_dict()
    assert any(not torch.equal(before[k], unet[k]) for k in before)
    assert find_fusion_module(out) == out / "trip_fusion"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--frames", "1"], "--frames: a clip needs the image frame"),
        (["--train-unet", "--dtype", "bf16"], "--train-unet needs --dtype fp32"),
        (["--width", "36"], "36x32 is not a multiple of 8"),
        (["--frames", "8", "--frame-stride", "2"], "no video has the 15 frames"),
    ],
)
def test_cli_reports_bad_settings_on_one_line(tiny_model_dir, videos, tmp_path, capsys, argv, message):
    base = ["--model", str(tiny_model_dir), "--data", str(videos), "--out", str(tmp_path / "o")]
    base += ["--width", "32", "--height", "32", "--steps", "1", "--device", "cpu"]
    assert main(base + argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers may draw a loading bar first)
    assert last.startswith("videogen train-trip: error: ") and message in last


def test_missing_data_is_a_media_error(tiny_model_dir, tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        train(_config(tiny_model_dir, tmp_path / "none", tmp_path / "o"))
    with pytest.raises(MediaError, match="no video files"):
        train(_config(tiny_model_dir, tmp_path, tmp_path / "o"))


def test_render_with_a_fusion_module_keeps_the_first_frame_on_the_image(tiny_model_dir):
    bundle = load_bundle(ModelConfig(path=str(tiny_model_dir)))
    frames = range(4)
    z0 = encode_image_latent(bundle.vae, torch.linspace(-1, 1, 3 * 32 * 32).reshape(3, 32, 32))
    text = build_text_context(bundle.tokenizer, bundle.text_encoder, PromptsConfig(text="a cat"), 4, frames)
    module = _trained_like(frame_horizon=4)
    outs = []
    for fusion in (None, module):
        scheduler = make_scheduler("euler", bundle.scheduler_config)
        scheduler.set_timesteps(3)
        latents = i2v_initial_latents(z0, video_noise(1, frames, 4, 8, 8), scheduler)
        hook = ImagePriorHook(z0, PriorSchedule(active_fraction=1.0), fusion=fusion)
        outs.append(run_steps(Denoiser(bundle.unet, text, 1.0), scheduler, latents, frames, [hook]))
    for out in outs:
        torch.testing.assert_close(out[:, :, :1], z0, atol=1e-5, rtol=0)
    assert (outs[0][:, :, 1:] - outs[1][:, :, 1:]).abs().max() > 1e-3
