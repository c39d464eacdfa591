"""Train TRIP's Temporal Noise Fusion module, optionally with the UNet (arXiv 2403.17005, Sec. 3.4).

One step, for a batch of clips of ``F`` frames (frame 0 is the "image"):

    z = s * E(clip)                      (VAE posterior sample per frame, s = scaling factor)
    t ~ U{0, ..., T-1},  eps ~ N(0, I),  z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps
    eps_prior = (z_t - sqrt(abar_t) z[:, :, :1]) / sqrt(1 - abar_t)     (image noise prior)
    eps_res   = UNet(z_t, t, text)       (v-prediction models: sqrt(abar_t) v + sqrt(1 - abar_t) z_t)
    loss      = || TNF(eps_res, eps_prior, t, frames) - eps ||^2

AdamW on the TNF (lr 2e-4 as in TRIP) and, with ``--train-unet``, on the UNet (lr 2e-6). The UNet sees
the noised clip only: TRIP also concatenates the image latent along the frame axis for its residual
path, which a text-to-video UNet would first have to learn, so that is left out.

Data: video files, folders of them and manifests, read by :class:`~videogen.data.video_clips.VideoClipDataset`
(PyAV): every ``frame_stride``-th frame fitted to the size by the ``cover`` policy, cut into consecutive
clips of ``frames`` frames, the videos in a fresh shuffled order every pass. A caption is read from a
``.txt`` file beside a video (same stem) or from the manifest; without one the caption is empty.

Output (``--out``): ``trip_fusion/`` (config.json + diffusion_pytorch_model.safetensors; copy it into a
model folder and renders find it), ``unet/`` with ``--train-unet``, and ``train_state.json``. Written
every ``checkpoint_every`` steps and at the end, each folder replaced atomically; the output folder
appears with the first of them, so a run that fails before (an unreadable or too short video) leaves none.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from videogen.config import ModelConfig
from videogen.data.video_clips import VideoClipDataset
from videogen.errors import ConfigError, VideogenError
from videogen.io.atomic import atomic_folder, check_target, write_text_atomic
from videogen.models.loader import ModelBundle, load_bundle
from videogen.models.text_condition import unet_text_kwargs
from videogen.models.trip_fusion import FUSION_DIRNAME, TemporalNoiseFusion, save_fusion
from videogen.noise.image_prior import epsilon_prior
from videogen.prompts import encode_texts


@dataclass
class TrainConfig:
    """Everything one training run needs (the CLI's flags, one to one)."""

    model: str
    data: list[str]
    out: str
    frames: int = 16
    frame_stride: int = 1
    width: int = 256
    height: int = 256
    steps: int = 1000
    batch_size: int = 1
    lr: float = 2e-4
    lr_unet: float = 2e-6
    train_unet: bool = False
    dim: int = 64
    heads: int = 4
    patch_size: int = 1
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"


@dataclass
class TrainResult:
    losses: list[float]
    fusion_dir: Path
    unet_dir: Path | None = None
    seconds: float = 0.0


def check_config(cfg: TrainConfig) -> None:
    """One :class:`ConfigError` line for an impossible setting."""
    positive = ("frames", "frame_stride", "width", "height", "steps", "batch_size", "dim", "heads", "patch_size")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(cfg, name)}")
    if cfg.frames < 2:
        raise ConfigError(f"--frames: a clip needs the image frame and at least one more, got {cfg.frames}")
    for name in ("lr", "lr_unet"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(cfg, name)}")
    if cfg.checkpoint_every < 0 or cfg.log_every < 0:
        raise ConfigError("--checkpoint-every and --log-every must be >= 0 (0 = never)")
    if cfg.dtype not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"--dtype: use fp32, fp16 or bf16, got {cfg.dtype!r}")
    if cfg.train_unet and cfg.dtype != "fp32":
        raise ConfigError("--train-unet needs --dtype fp32 (AdamW on half-precision weights loses the updates)")


# -- data ---------------------------------------------------------------------------------------


def open_dataset(cfg: TrainConfig, data: Sequence[str | Path] | None = None) -> VideoClipDataset:
    """The clips ``cfg`` asks for, of ``data`` (default ``cfg.data``), decoded with PyAV."""
    sources = cfg.data if data is None else data
    return VideoClipDataset(sources, cfg.frames, cfg.frame_stride, cfg.width, cfg.height, backend="pyav")


def clip_stream(videos: Sequence[str | Path], cfg: TrainConfig, rng: random.Random) -> Iterator[tuple[np.ndarray, str]]:
    """(clip, caption) forever: every consecutive clip of each video, in a fresh shuffled order every pass."""
    return open_dataset(cfg, videos).stream(rng, mode="sequential")


# -- model pieces -------------------------------------------------------------------------------


@torch.no_grad()
def encode_clips(vae, clips: np.ndarray, generator: torch.Generator, chunk: int = 16) -> torch.Tensor:
    """uint8 ``(B, F, H, W, 3)`` to latents ``(B, C, F, h, w)`` (posterior samples x scaling factor)."""
    b, f = clips.shape[:2]
    pixels = torch.from_numpy(clips).reshape(b * f, *clips.shape[2:]).permute(0, 3, 1, 2)
    latents = []
    for start in range(0, b * f, chunk):
        x = pixels[start : start + chunk].to(device=vae.device, dtype=torch.float32) / 127.5 - 1.0
        dist = vae.encode(x.to(vae.dtype)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator).to(device=dist.mean.device, dtype=dist.mean.dtype)
        latents.append((dist.mean + dist.std * noise).float() * vae.config.scaling_factor)
    z = torch.cat(latents)
    return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def trip_loss(
    unet: torch.nn.Module,
    fusion: TemporalNoiseFusion,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    text: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """``|| TNF(eps_res, eps_prior, t, frames) - eps ||^2`` for clean ``latents`` ``(B, C, F, h, w)``."""
    abar = scheduler.alphas_cumprod.to(latents.device)[timesteps].view(-1, 1, 1, 1, 1)
    z_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    prior = epsilon_prior(z_t, latents[:, :, :1], abar)
    unet_dtype = next(unet.parameters()).dtype
    with torch.set_grad_enabled(torch.is_grad_enabled() and unet.training):
        out = unet(z_t.to(unet_dtype), timesteps, **unet_text_kwargs(unet, text.to(unet_dtype))).sample.float()
    if scheduler.config.prediction_type == "v_prediction":
        out = abar.sqrt() * out + (1 - abar).sqrt() * z_t
    fused = fusion(out, prior, timesteps, range(latents.shape[2]))
    return F.mse_loss(fused, noise)


def new_fusion(bundle: ModelBundle, cfg: TrainConfig) -> TemporalNoiseFusion:
    torch.manual_seed(cfg.seed)
    fusion = TemporalNoiseFusion(
        channels=bundle.latent_channels,
        dim=cfg.dim,
        heads=cfg.heads,
        patch_size=cfg.patch_size,
        frame_horizon=cfg.frames,
    )
    return fusion.to(bundle.device).train()


def _save_unet(unet: torch.nn.Module, folder: Path) -> None:
    with atomic_folder(folder) as staging:
        unet.save_pretrained(staging, safe_serialization=True)


def _checkpoint(cfg: TrainConfig, fusion, unet, step: int, losses: list[float]) -> None:
    out = Path(cfg.out)
    save_fusion(fusion, out / FUSION_DIRNAME)
    if cfg.train_unet:
        _save_unet(unet, out / "unet")
    state = {"step": step, "last_loss": losses[-1] if losses else None, "config": asdict(cfg)}
    write_text_atomic(out / "train_state.json", json.dumps(state, indent=2) + "\n")


# -- the loop -----------------------------------------------------------------------------------


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Run ``cfg.steps`` optimiser steps and write the checkpoints; returns the per-step losses."""
    check_config(cfg)
    check_target(cfg.out, "--out", "folder")
    dataset = open_dataset(cfg)
    if dataset.uncaptioned:
        log(f"{len(dataset.uncaptioned)} of {len(dataset)} videos have no caption (they train with an empty one)")
    bundle = load_bundle(ModelConfig(path=cfg.model, device=cfg.device, dtype=cfg.dtype))
    multiple = bundle.size_multiple
    if cfg.width % multiple or cfg.height % multiple:
        raise ConfigError(f"--width/--height: {cfg.width}x{cfg.height} is not a multiple of {multiple} for this model")
    scheduler = DDPMScheduler.from_config(bundle.scheduler_config)
    fusion = new_fusion(bundle, cfg)
    groups = [{"params": list(fusion.parameters()), "lr": cfg.lr}]
    if cfg.train_unet:
        bundle.unet.train().requires_grad_(True)
        groups.append({"params": list(bundle.unet.parameters()), "lr": cfg.lr_unet})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    generator = torch.Generator().manual_seed(cfg.seed)
    clips = dataset.stream(random.Random(cfg.seed), mode="sequential")
    losses: list[float] = []
    started = time.perf_counter()
    trainable = [p for group in groups for p in group["params"]]
    for step in range(1, cfg.steps + 1):
        batch = [next(clips) for _ in range(cfg.batch_size)]
        latents = encode_clips(bundle.vae, np.stack([clip for clip, _ in batch]), generator)
        with torch.no_grad():
            text = encode_texts(bundle.tokenizer, bundle.text_encoder, [caption for _, caption in batch])
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        loss = trip_loss(bundle.unet, fusion, scheduler, latents, text, timesteps.to(latents.device), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            recent = losses[-cfg.log_every :]
            log(f"step {step}/{cfg.steps}  loss {sum(recent) / len(recent):.4f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
            _checkpoint(cfg, fusion, bundle.unet, step, losses)
    _checkpoint(cfg, fusion, bundle.unet, cfg.steps, losses)
    out = Path(cfg.out)
    return TrainResult(
        losses=losses,
        fusion_dir=out / FUSION_DIRNAME,
        unet_dir=out / "unet" if cfg.train_unet else None,
        seconds=time.perf_counter() - started,
    )


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = TrainConfig(model="", data=[], out="")
    parser.add_argument("--model", required=True, help="diffusers-format model folder, or 'tiny'")
    parser.add_argument("--data", required=True, nargs="+", help="videos, folders of them, manifests (.jsonl/.csv)")
    parser.add_argument("--out", required=True, help="output folder (trip_fusion/, unet/, train_state.json)")
    parser.add_argument("--frames", type=int, default=d.frames, help=f"frames per clip (default {d.frames})")
    parser.add_argument("--frame-stride", type=int, default=d.frame_stride, help="take every n-th video frame")
    parser.add_argument("--width", type=int, default=d.width, help=f"clip width in pixels (default {d.width})")
    parser.add_argument("--height", type=int, default=d.height, help=f"clip height in pixels (default {d.height})")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per step (default 1)")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"fusion module learning rate (default {d.lr})")
    parser.add_argument("--lr-unet", type=float, default=d.lr_unet, help=f"UNet learning rate (default {d.lr_unet})")
    parser.add_argument("--train-unet", action="store_true", help="fine-tune the UNet too (needs --dtype fp32)")
    parser.add_argument("--dim", type=int, default=d.dim, help=f"fusion token width (default {d.dim})")
    parser.add_argument("--heads", type=int, default=d.heads, help=f"fusion attention heads (default {d.heads})")
    parser.add_argument("--patch-size", type=int, default=d.patch_size, help="latent pixels per token side")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between saves")
    parser.add_argument("--log-every", type=int, default=d.log_every, help="steps between loss lines")
    parser.add_argument("--seed", type=int, default=d.seed, help="data order, noise and initialisation seed")
    parser.add_argument("--device", default=d.device, help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=d.dtype, choices=("fp32", "fp16", "bf16"), help="frozen model dtype")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(
        argparse.ArgumentParser(
            prog="videogen train-trip",
            description="Train TRIP's Temporal Noise Fusion module (and optionally the UNet) on videos.",
        )
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-trip`` subcommand; its handler is ``args.handler(args) -> int``."""
    parser = subparsers.add_parser(
        "train-trip",
        help="train TRIP's Temporal Noise Fusion module on videos",
        description="Train TRIP's Temporal Noise Fusion module (and optionally the UNet) on videos.",
    )
    add_arguments(parser).set_defaults(handler=cmd_train_trip)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = TrainConfig.__dataclass_fields__
    return TrainConfig(**{name: getattr(args, name) for name in names})


def cmd_train_trip(args: argparse.Namespace) -> int:
    """Handler of ``videogen train-trip``."""
    result = train(config_from_args(args))
    print(f"wrote {result.fusion_dir} after {len(result.losses)} steps (last loss {result.losses[-1]:.4f})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_train_trip(args)
    except VideogenError as error:
        print(f"videogen train-trip: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
