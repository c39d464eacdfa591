"""``videogen warp-noise``: write warped noise (safetensors) and a preview mp4 from a motion spec.

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
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from videogen.errors import ConfigError, MediaError
from videogen.io.atomic import commit, discard, partial_path
from videogen.io.writer import open_sink
from videogen.noise.flow import flow_to_rgb
from videogen.noise.warp import torch_threads
from videogen.noise.warp_spec import seed_from_yaml, spec_from_yaml
from videogen.noise.warped_latents import WarpedFrame, iter_warped_noise

_PREVIEW_MIN_HEIGHT = 256
_PREVIEW_FLOW_SPEED = 0.5  # output pixels per frame at which the flow colour is 1 - 1/e bright


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``warp-noise`` subcommand; its handler is ``args.handler(args) -> int``."""
    parser = subparsers.add_parser(
        "warp-noise",
        help="write Go-with-the-Flow warped noise and a preview mp4 from a motion spec",
        description=(
            "Read a YAML file holding a noise.warped section (or a bare warped spec) and write "
            "OUT.safetensors (key 'noise', shape (F, C, H, W)) and OUT.preview.mp4 (noise | flow colour)."
        ),
    )
    parser.add_argument("config", help="YAML with noise: {kind: warped, warped: {...}} or a bare spec")
    parser.add_argument("--frames", type=int, required=True, help="number of (latent) frames F")
    parser.add_argument("--height", type=int, required=True, help="noise height H (latent rows)")
    parser.add_argument("--width", type=int, required=True, help="noise width W (latent columns)")
    parser.add_argument("--channels", type=int, default=4, help="noise channels C (default 4)")
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
    for name in ("frames", "height", "width", "channels", "fps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")


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
    seed = _seed(args)
    noise_path = Path(f"{args.out}.safetensors")
    preview_path = Path(f"{args.out}.preview.mp4")
    shape = (args.frames, args.channels, args.height, args.width)
    metadata = {"seed": str(seed), "spec": OmegaConf.to_yaml(OmegaConf.structured(spec))}
    frames = iter_warped_noise(spec, seed, args.frames, args.channels, args.height, args.width)
    scale = max(1, math.ceil(_PREVIEW_MIN_HEIGHT / args.height))
    with (
        _SafetensorsStream(noise_path, "noise", shape, metadata) as noise_out,
        open_sink(preview_path, args.fps) as preview,
    ):
        with torch_threads(1):
            for frame in frames:
                noise_out.write(frame.noise)
                preview.write(preview_frame(frame, scale)[None])
    print(f"wrote {noise_path} (noise {shape}) and {preview_path}")
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
