"""Streaming frame sinks: mp4 (PyAV libx264, yuv420p), GIF (PyAV), or a folder of PNGs.

Frames arrive in chunks of ``(N, H, W, 3)`` uint8 and are encoded as they come, so memory stays
flat however long the video is. Everything is written under a temporary name and renamed on
:meth:`FrameSink.close`; leaving the ``with`` block by an exception, or a ``close`` that fails,
discards it instead. A PNG folder replaces only a folder of frames (:func:`foreign_entry`):
a folder holding anything else is never deleted.

The same frames with the same settings give the same mp4 bytes on every machine and in every
process (:data:`X264_OPTIONS`):

- libx264 runs on one thread. Left to choose, it takes a thread count from the CPUs this process
  may use and splits frames into that many slices, so the bitstream (and the decoded pixels) would
  depend on the machine, a Ray worker's CPU share or a ``taskset``.
- macroblock-tree rate control is off. With it on, the bytes of a short clip depend on memory the
  encoder did not initialise: the same frames gave different bytes in about half of fresh processes,
  and now and then between two encodes in one process.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import av
import imageio.v3 as iio
import numpy as np

from videogen.errors import MediaError
from videogen.io.atomic import commit, discard, partial_path

FRAME_NAME = re.compile(r"^frame_\d{6}\.png$")
X264_OPTIONS = {"preset": "medium", "threads": "1", "x264-params": "mbtree=0"}


def foreign_entry(folder: Path) -> str | None:
    """The first entry of ``folder`` that is not a ``frame_NNNNNN.png`` file, or None."""
    for entry in sorted(Path(folder).iterdir()):
        if not (entry.is_file() and FRAME_NAME.match(entry.name)):
            return entry.name
    return None


class FrameSink:
    """Base class: a context manager that commits on success and discards on failure."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.partial = partial_path(self.target)
        self.frames_written = 0
        self.target.parent.mkdir(parents=True, exist_ok=True)
        discard(self.partial)

    def write(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        self._write(frames)
        self.frames_written += len(frames)

    def close(self) -> Path:
        """Finish and move the output under its final name; on any failure discard it and re-raise."""
        try:
            self._finish()
            commit(self.partial, self.target)
        except BaseException:
            self.abort()
            raise
        return self.target

    def abort(self) -> None:
        try:
            self._abandon()
        finally:
            discard(self.partial)

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _write(self, frames: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Flush everything to ``self.partial``."""

    def _abandon(self) -> None:
        """Release resources without committing."""


class PyAVSink(FrameSink):
    """Encodes with PyAV as frames arrive (libx264 yuv420p for mp4, palette rgb8 for GIF)."""

    def __init__(self, target: Path, fps: int, codec: str, pix_fmt: str, options: dict[str, str]):
        super().__init__(target)
        self.fps, self.codec, self.pix_fmt, self.options = fps, codec, pix_fmt, options
        self.container = None
        self.stream = None

    def _open(self, height: int, width: int) -> None:
        if self.pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise MediaError(f"{self.target}: yuv420p needs even frame sizes, got {width}x{height}")
        self.container = av.open(str(self.partial), mode="w", format=self.target.suffix.lstrip(".") or None)
        self.stream = self.container.add_stream(self.codec, rate=Fraction(self.fps))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, self.pix_fmt
        self.stream.options = self.options

    def _write(self, frames: np.ndarray) -> None:
        if self.container is None:
            self._open(frames.shape[1], frames.shape[2])
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def _finish(self) -> None:
        if self.container is None:
            raise MediaError(f"{self.target}: no frames were written")
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None

    def _abandon(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


class PNGFolderSink(FrameSink):
    """``frame_000000.png``, ... in a folder that appears under its final name when complete.

    An existing target folder is replaced only when it holds nothing but frames.
    """

    def __init__(self, target: Path):
        target = Path(target)
        if target.is_dir() and (name := foreign_entry(target)) is not None:
            raise MediaError(f"{target}: the folder holds {name}, which videogen did not write; not replacing it")
        super().__init__(target)

    def _write(self, frames: np.ndarray) -> None:
        self.partial.mkdir(parents=True, exist_ok=True)
        for offset, image in enumerate(frames):
            iio.imwrite(self.partial / f"frame_{self.frames_written + offset:06d}.png", image)

    def _finish(self) -> None:
        if not self.partial.is_dir():
            raise MediaError(f"{self.target}: no frames were written")


def open_sink(path: str | Path, fps: int, crf: int = 18) -> FrameSink:
    """The sink for ``path``'s suffix: ``.mp4``, ``.gif``, or no suffix for a PNG folder."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".mp4":
        return PyAVSink(target, fps, "libx264", "yuv420p", {"crf": str(crf), **X264_OPTIONS})
    if suffix == ".gif":
        return PyAVSink(target, fps, "gif", "rgb8", {})
    if suffix == "":
        return PNGFolderSink(target)
    raise MediaError(f"{target}: unsupported output format {suffix!r} (use .mp4, .gif or a folder)")
