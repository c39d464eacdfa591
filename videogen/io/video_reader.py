"""Streaming video reader: one RGB frame at a time, PyAV by default, decord when asked for.

Frames come out as ``uint8`` arrays shaped (H, W, 3). Container metadata (frame count, duration)
is only a hint: the number of frames is whatever decodes. Every failure a user can cause (a missing,
corrupt or stream-less file, or asking for decord without it installed) is a :class:`MediaError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

from videogen.errors import MediaError

Backend = Literal["pyav", "decord"]


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream.

    ``frame_count`` and ``duration`` are metadata and may be missing or wrong; use
    :func:`count_frames` for the decoded count.
    """

    width: int
    height: int
    fps: float
    frame_count: int | None
    duration: float | None
    codec: str


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise MediaError(f"video not found: {path}")
    if not path.is_file():
        raise MediaError(f"not a video file: {path}")


def _open(path: Path) -> av.container.InputContainer:
    _check_exists(path)
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"cannot open video {path}: {_reason(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: contains no video stream")
    return container


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, codec and the (untrusted) frame count of the first video stream."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate) if rate else 0.0,
            frame_count=stream.frames or None,
            duration=duration,
            codec=stream.codec_context.name,
        )
    finally:
        container.close()


def iter_frames(
    path: str | Path,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    *,
    start: int = 0,
    backend: Backend = "pyav",
) -> Iterator[np.ndarray]:
    """Yield decoded frames as uint8 (H, W, 3) RGB arrays, one at a time.

    ``size`` = (height, width) resizes every frame (area interpolation); ``start`` skips that many
    decoded frames; ``max_frames`` stops after that many frames. The file is opened (and errors are
    raised) at call time, not on the first ``next``.
    """
    path = Path(path)
    if size is not None and (size[0] < 1 or size[1] < 1):
        raise ValueError(f"size must be (height, width) >= 1, got {size}")
    if backend == "pyav":
        return _iter_pyav(_open(path), path, size, start, max_frames)
    if backend == "decord":
        return _iter_decord(path, size, start, max_frames)
    raise MediaError(f"unknown video backend {backend!r}; use 'pyav' or 'decord'")


def _iter_pyav(
    container: av.container.InputContainer,
    path: Path,
    size: tuple[int, int] | None,
    start: int,
    max_frames: int | None,
) -> Iterator[np.ndarray]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    resize = {} if size is None else {"height": size[0], "width": size[1], "interpolation": "AREA"}
    decoded = 0
    try:
        for frame in container.decode(stream):
            decoded += 1
            if decoded <= start:
                continue
            yield frame.to_ndarray(format="rgb24", **resize)
            if max_frames is not None and decoded - start >= max_frames:
                return
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: decoding failed after {decoded} frames: {_reason(exc)}") from exc
    finally:
        container.close()
    if decoded == 0:
        raise MediaError(f"{path}: no decodable video frames")


def _iter_decord(path: Path, size: tuple[int, int] | None, start: int, max_frames: int | None) -> Iterator[np.ndarray]:
    _check_exists(path)
    try:
        import decord
    except ImportError as exc:
        raise MediaError("video backend 'decord' is not installed (pip install 'videogen[decord]')") from exc
    height, width = size if size is not None else (-1, -1)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height)
    except decord.DECORDError as exc:
        raise MediaError(f"cannot open video {path}: {_reason(exc)}") from exc
    return _decord_frames(reader, path, start, max_frames)


def _decord_frames(reader, path: Path, start: int, max_frames: int | None) -> Iterator[np.ndarray]:
    import decord

    # decord's length is container metadata: stop at the first index that does not decode.
    stop = len(reader) if max_frames is None else min(len(reader), start + max_frames)
    decoded = 0
    for index in range(start, stop):
        try:
            frame = reader[index].asnumpy()
        except decord.DECORDError:
            break
        decoded += 1
        yield np.ascontiguousarray(frame, dtype=np.uint8)
    if decoded == 0 and start == 0:
        raise MediaError(f"{path}: no decodable video frames")


def count_frames(path: str | Path, backend: Backend = "pyav") -> int:
    """The number of frames that actually decode (metadata is not trusted)."""
    return sum(1 for _ in iter_frames(path, backend=backend))
