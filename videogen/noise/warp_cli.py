"""``videogen warp-noise``: write warped noise (safetensors) and a preview mp4 from a motion spec.

The sizes are the video's, as in a job (``video.num_frames``, ``video.height``, ``video.width``, which
they default to for a job file): the noise is the latent noise of that video, ``height / f`` rows by
``width / f`` columns, where ``f`` is the VAE's downsampling of the job's model (read from its
``vae/config.json``, no weights loaded) or ``--vae-factor``. For a job file the result is the noise its
render starts from.

The noise file holds one float32 tensor ``noise`` shaped (F, C, H, W) plus the spec in its metadata;
the preview shows the noise (first three channels as RGB) left of the flow as colour (hue =
direction, brightness = speed). Both are streamed to temporary names and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from videogen.errors import ConfigError, MediaError, ModelLoadError
from videogen.io.atomic import commit, discard, partial_path
from videogen.io.writer import open_sink
from videogen.noise.flow import flow_to_rgb
from videogen.noise.warp import torch_threads
from videogen.noise.warp_spec import seed_from_yaml, spec_from_yaml
from videogen.noise.warped_latents import WarpedFrame, iter_warped_noise

_PREVIEW_MIN_HEIGHT = 256
_PREVIEW_FLOW_SPEED = 0.5  # output pixels per frame at which the flow colour is 1 - 1/e bright
DEFAULT_VAE_FACTOR = 8  # the UNet3D family's VAE (zeroscope, ModelScope, VideoCrafter2)
DEFAULT_CHANNELS = 4


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``warp-noise`` subcommand; its handler is ``args.handler(args) -> int``."""
    parser = subparsers.add_parser(
        "warp-noise",
        help="write Go-with-the-Flow warped noise and a preview mp4 from a motion spec",
        description=(
            "Read a YAML file holding a noise.warped section (or a bare warped spec) and write "
            "OUT.safetensors (key 'noise', shape (F, C, H, W): the latent noise of a video of --frames frames "
            "of --width x --height pixels) and OUT.preview.mp4 (noise | flow colour). For a job file the sizes, "
            "seed, VAE factor and channels default to its render's, so the noise is the one it starts from."
        ),
    )
    parser.add_argument("config", help="YAML with noise: {kind: warped, warped: {...}} or a bare spec")
    parser.add_argument("--frames", type=int, help="video frames F (default: a job file's video.num_frames)")
    parser.add_argument(
        "--height", type=int, help="video height in pixels, as video.height (default: a job file's); H = height / f"
    )
    parser.add_argument(
        "--width", type=int, help="video width in pixels, as video.width (default: a job file's); W = width / f"
    )
    parser.add_argument(
        "--vae-factor",
        type=int,
        default=None,
        help=f"the VAE's downsampling f (default: the job's model's, else {DEFAULT_VAE_FACTOR})",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=None,
        help=f"noise channels C (default: the job's model's latent channels, else {DEFAULT_CHANNELS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="noise seed (default: the file's noise.seed, so the noise is the render's; 0 for a bare spec)",
    )
    parser.add_argument("--out", required=True, help="output prefix: writes OUT.safetensors and OUT.preview.mp4")
    parser.add_argument("--fps", type=int, default=8, help="preview frame rate (default 8)")
    parser.set_defaults(handler=cmd_warp_noise)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("frames", "height", "width", "vae_factor", "channels", "fps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")


def _job_sections(path: str) -> tuple[DictConfig | None, DictConfig | None]:
    """A job file's ``model`` and ``video`` sections merged over their defaults; (None, None) for a bare spec
    (read after :func:`spec_from_yaml` has checked the file)."""
    from videogen.config import ModelConfig, VideoConfig

    raw = OmegaConf.load(Path(path))
    if "noise" not in raw:
        return None, None
    sections = []
    for name, schema in (("model", ModelConfig), ("video", VideoConfig)):
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), raw.get(name) or {})
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or "?"
            raise ConfigError(f"{path}: {name}.{key}: {str(error).strip().splitlines()[0]}") from None
        sections.append(merged)
    return sections[0], sections[1]


def _model_geometry(model: DictConfig, path: str) -> tuple[int, int] | None:
    """(VAE downsampling, latent channels) of the job's model, from its configs; None when it names none."""
    if OmegaConf.is_missing(model, "path"):
        return None
    from videogen.config import ModelConfig
    from videogen.models.loader import component_config, model_family

    cfg = ModelConfig(**{key: model[key] for key in ("path", "family", "vae", "unet") if key in model})
    try:
        vae, unet = component_config(cfg, "vae"), component_config(cfg, "unet")
        if vae is None or unet is None:  # a hub id: nothing on this disk to read
            return None
        geometry = model_family(cfg).geometry(unet, vae)
    except ModelLoadError as error:
        raise ModelLoadError(
            f"{path}: {error}; pass --vae-factor and --channels to preview the noise without the model"
        ) from None
    return geometry.spatial_factor, geometry.channels


@dataclass
class NoiseSize:
    """The video the noise is for, and the latent grid it becomes."""

    frames: int
    height: int
    width: int
    vae_factor: int
    channels: int

    @property
    def latent(self) -> tuple[int, int]:
        return self.height // self.vae_factor, self.width // self.vae_factor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.channels, *self.latent)


def noise_size(args: argparse.Namespace) -> NoiseSize:
    """The flags, else the job file's video and model, else the defaults; checked against the VAE factor."""
    model, video = _job_sections(args.config)
    geometry = (
        _model_geometry(model, args.config)
        if model is not None and (args.vae_factor is None or args.channels is None)
        else None
    )
    sizes = {}
    for flag, key in (("frames", "num_frames"), ("height", "height"), ("width", "width")):
        value = getattr(args, flag)
        if value is None and video is None:
            raise ConfigError(f"--{flag} is required for a bare spec (a job file gives its video.{key})")
        sizes[flag] = value if value is not None else int(video[key])
    factor = args.vae_factor or (geometry[0] if geometry else DEFAULT_VAE_FACTOR)
    channels = args.channels or (geometry[1] if geometry else DEFAULT_CHANNELS)
    if args.vae_factor:
        whose = f"--vae-factor {factor}"
    elif geometry:
        whose = f"the model's VAE downsamples by {factor}"
    else:
        whose = f"the VAE factor defaults to {factor}; --vae-factor sets another"
    for flag in ("height", "width"):
        value = sizes[flag]
        named = f"--{flag}" if getattr(args, flag) is not None else f"video.{flag}"
        if value < 1 or value % factor:
            raise ConfigError(
                f"{named}: {value} is not a positive multiple of {factor} ({whose}); the sizes are the "
                "video's pixels, as video.width and video.height"
            )
    return NoiseSize(sizes["frames"], sizes["height"], sizes["width"], factor, channels)


def _seed(args: argparse.Namespace) -> int:
    """``--seed``, else the job file's ``noise.seed`` (-1 draws one, as a render does, and says so), else 0."""
    if args.seed is not None:
        return args.seed
    seed = seed_from_yaml(args.config)
    if seed is None:
        return 0
    if seed == -1:
        seed = secrets.randbelow(2**31)
        print(f"noise.seed is -1: drew seed {seed} (pass --seed to choose)")
    elif seed < 0:
        raise ConfigError(f"{args.config}: noise.seed must be >= 0 or -1, got {seed}")
    return seed


def cmd_warp_noise(args: argparse.Namespace) -> int:
    """Handler of ``videogen warp-noise``."""
    _check_args(args)
    spec = spec_from_yaml(args.config)
    size = noise_size(args)
    seed = _seed(args)
    noise_path = Path(f"{args.out}.safetensors")
    preview_path = Path(f"{args.out}.preview.mp4")
    shape = size.shape
    metadata = {
        "seed": str(seed),
        "spec": OmegaConf.to_yaml(OmegaConf.structured(spec)),
        "video": f"{size.frames} frames of {size.width}x{size.height}",
        "vae_factor": str(size.vae_factor),
    }
    frames = iter_warped_noise(spec, seed, *shape)
    scale = max(1, math.ceil(_PREVIEW_MIN_HEIGHT / shape[2]))
    with (
        _SafetensorsStream(noise_path, "noise", shape, metadata) as noise_out,
        open_sink(preview_path, args.fps) as preview,
    ):
        with torch_threads(1):
            for frame in frames:
                noise_out.write(frame.noise)
                preview.write(preview_frame(frame, scale)[None])
    print(
        f"wrote {noise_path} (noise {shape}: {size.frames} frames of a {size.width}x{size.height} video, "
        f"VAE x{size.vae_factor}) and {preview_path}"
    )
    return 0


class _AtomicOutput:
    """Context manager: :meth:`close` (commit) on success, :meth:`abort` (discard) on an exception."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise


class _SafetensorsStream(_AtomicOutput):
    """Writes one float32 tensor to a .safetensors file frame by frame.

    Layout (the safetensors format): little-endian u64 header length, a JSON header padded with
    spaces to a multiple of 8 bytes, then the raw little-endian data.
    """

    def __init__(self, target: Path, key: str, shape: tuple[int, ...], metadata: dict[str, str]) -> None:
        self.target, self.partial = target, partial_path(target)
        self.frame_shape = shape[1:]
        self.expected, self.written = shape[0], 0
        nbytes = 4 * math.prod(shape)
        header = {
            "__metadata__": metadata,
            key: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, nbytes]},
        }
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.partial, "wb")
        except OSError as exc:
            raise MediaError(f"cannot write {target}: {exc.strerror or exc}") from exc
        self.file.write(struct.pack("<Q", len(blob)) + blob)

    def write(self, frame: torch.Tensor) -> None:
        if tuple(frame.shape) != self.frame_shape:
            raise ValueError(f"frame {tuple(frame.shape)} does not match {self.frame_shape}")
        self.file.write(frame.detach().cpu().float().contiguous().numpy().astype("<f4").tobytes())
        self.written += 1

    def close(self) -> None:
        self.file.close()
        if self.written != self.expected:
            raise MediaError(f"{self.target}: wrote {self.written} of {self.expected} frames")
        commit(self.partial, self.target)

    def abort(self) -> None:
        self.file.close()
        discard(self.partial)


def _noise_rgb(noise: torch.Tensor) -> np.ndarray:
    """(C, H, W) noise to uint8 RGB: channels 0-2 (or channel 0 as grey), +-2 sigma spans 0..255."""
    rgb = noise[:3] if noise.shape[0] >= 3 else noise[:1].expand(3, -1, -1)
    scaled = (rgb.detach().cpu().float() / 4.0 + 0.5).clamp(0.0, 1.0) * 255.0
    return scaled.round().to(torch.uint8).permute(1, 2, 0).numpy()


def preview_frame(frame: WarpedFrame, scale: int) -> np.ndarray:
    """Noise on the left, the flow as colour on the right, enlarged ``scale`` times, even-sized."""
    side = np.concatenate([_noise_rgb(frame.noise), flow_to_rgb(frame.flow, _PREVIEW_FLOW_SPEED)], axis=1)
    big = side.repeat(scale, axis=0).repeat(scale, axis=1)
    return np.pad(big, ((0, big.shape[0] % 2), (0, big.shape[1] % 2), (0, 0)))
