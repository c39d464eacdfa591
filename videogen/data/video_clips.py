"""A user's own videos as training clips: file discovery, captions, clip sampling and optical flow.

Sources (any mix, in the order given):

* a folder: every file under it (recursively) whose suffix is one of :data:`VIDEO_SUFFIXES`, sorted;
* a video file: that file (any suffix);
* a manifest, ``.jsonl`` (one ``{"video": path, "caption": text}`` object a line) or ``.csv`` (a header
  ``video,caption``, then one row a video): the videos it lists, in its order, with its captions.
  Relative paths are relative to the manifest's folder.

Outside a manifest a video's caption is the text of ``<stem>.txt`` beside it. A video without a
caption trains with the empty caption; such videos are listed in :attr:`VideoClipDataset.uncaptioned`.

A clip is ``frames`` frames taken every ``frame_stride``-th source frame, so it spans
``(frames - 1) * frame_stride + 1`` source frames; each frame is scaled to cover ``width`` x ``height``
and centre-cropped (:func:`~videogen.io.image.fit_image`, ``cover``). Clips come out as uint8
``(frames, height, width, 3)`` arrays. Frames are streamed through :mod:`videogen.io.video_reader`;
decoding stops after a clip's last frame (frames before its start are decoded and dropped, as the
reader does not seek).

Frame counts: a random start is drawn in the container's frame count (metadata), which a read that
ends early replaces by the decoded count; starts are drawn from one uniform number per clip, so a
given random state picks the same clip whether or not the count had to be corrected.

Every bad input is a one-line :class:`~videogen.errors.MediaError` naming the file (a bad setting is a
:class:`~videogen.errors.ConfigError`).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import torch

from videogen.errors import ConfigError, MediaError
from videogen.io.image import fit_image
from videogen.io.video_reader import Backend, count_frames, iter_frames, probe
from videogen.noise.flow import FlowPair, _optical_flow, cover_resize, flow_resolution, resize_flow

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
MANIFEST_SUFFIXES = (".jsonl", ".csv")

BackendChoice = Literal["auto", "pyav", "decord"]
ClipMode = Literal["random", "sequential"]


class RandomSource(Protocol):
    """What clip sampling draws from: :class:`random.Random` and :class:`numpy.random.Generator` both fit."""

    def random(self) -> float: ...

    def shuffle(self, x: list) -> None: ...


@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset and its caption (empty when it has none)."""

    path: Path
    caption: str


# -- discovery ----------------------------------------------------------------------------------


def resolve_backend(backend: str) -> Backend:
    """``auto`` is decord when it is importable, else PyAV; asking for decord without it is a MediaError."""
    if backend not in ("auto", "pyav", "decord"):
        raise ConfigError(f"unknown video backend {backend!r}; use 'auto', 'pyav' or 'decord'")
    installed = importlib.util.find_spec("decord") is not None
    if backend == "decord" and not installed:
        raise MediaError("video backend 'decord' is not installed (pip install 'videogen[decord]')")
    if backend == "auto":
        return "decord" if installed else "pyav"
    return backend  # type: ignore[return-value]


def find_entries(sources: str | Path | Sequence[str | Path]) -> list[VideoEntry]:
    """The videos (with captions) of folders, video files and manifests, in the order given."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not items:
        raise MediaError("no videos given (name video files, folders of videos or a manifest)")
    entries: list[VideoEntry] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not videos:
                raise MediaError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {path}")
            entries.extend(VideoEntry(video, sidecar_caption(video)) for video in videos)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            entries.extend(read_manifest(path))
        elif path.is_file():
            entries.append(VideoEntry(path, sidecar_caption(path)))
        else:
            raise MediaError(f"{path} does not exist")
    return entries


def sidecar_caption(video: Path) -> str:
    """The text of ``<video stem>.txt`` beside the video, stripped, or ``""`` when there is none."""
    text = video.with_suffix(".txt")
    if not text.is_file():
        return ""
    try:
        return text.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"cannot read caption {text}: {_reason(exc)}") from None


def read_manifest(path: str | Path) -> list[VideoEntry]:
    """The entries of a ``.jsonl`` or ``.csv`` manifest; a bad line is a MediaError naming ``file:line``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"cannot read manifest {path}: {_reason(exc)}") from None
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    entries = [VideoEntry(_manifest_video(path, line, video), caption.strip()) for line, video, caption in rows]
    if not entries:
        raise MediaError(f"{path}: the manifest lists no videos")
    return entries


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, str, str]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise MediaError(f"{path}:{line}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise MediaError(f'{path}:{line}: expected an object {{"video": ..., "caption": ...}}')
        video, caption = row.get("video"), row.get("caption")
        if not isinstance(video, str) or not video.strip():
            raise MediaError(f'{path}:{line}: "video" must be a non-empty path string')
        if caption is not None and not isinstance(caption, str):
            raise MediaError(f'{path}:{line}: "caption" must be a string')
        yield line, video, caption or ""


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, str, str]]:
    reader = csv.reader(text.splitlines())
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        if "video" not in header:
            raise MediaError(f"{path}:1: a CSV manifest starts with the header video,caption; got {','.join(header)}")
        video_at = header.index("video")
        caption_at = header.index("caption") if "caption" in header else None
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise MediaError(f"{path}:{line}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
            if not row[video_at].strip():
                raise MediaError(f"{path}:{line}: the video column is empty")
            yield line, row[video_at].strip(), "" if caption_at is None else row[caption_at]
    except csv.Error as exc:
        raise MediaError(f"{path}:{reader.line_num}: {exc}") from None


def _manifest_video(manifest: Path, line: int, video: str) -> Path:
    path = Path(video).expanduser()
    if not path.is_absolute():
        path = manifest.parent / path
    if not path.is_file():
        raise MediaError(f"{manifest}:{line}: video {path} does not exist")
    return path


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _random_source(seed: int | RandomSource) -> RandomSource:
    return random.Random(int(seed)) if isinstance(seed, (int, np.integer)) else seed


# -- the dataset --------------------------------------------------------------------------------


class VideoTooShort(MediaError):
    """A video with fewer frames than the clip asked of it needs."""

    def __init__(self, path: Path, frames: int, needed: int, detail: str) -> None:
        super().__init__(f"{path}: has {frames} frames; {detail} needs {needed}")
        self.path, self.frames, self.needed = path, frames, needed


class VideoClipDataset:
    """Clips of ``frames`` frames (every ``frame_stride``-th source frame) of a user's videos, with captions.

    ``len(dataset)`` is the number of videos. :meth:`clip` reads the clip starting at a source frame,
    :meth:`random_clip` one at a random start, :meth:`clips` a video's consecutive clips;
    :meth:`sample` gives item ``index`` of an endless shuffled sequence by index alone (for workers that
    split a batch by global index), and :meth:`stream` yields ``(clip, caption)`` forever over the videos
    in a fresh shuffled order every pass. Videos are opened only when read.
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        frames: int,
        frame_stride: int = 1,
        width: int = 256,
        height: int = 256,
        backend: BackendChoice = "auto",
    ) -> None:
        for name, value in (("frames", frames), ("frame_stride", frame_stride), ("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be an integer >= 1, got {value!r}")
        self.frames = frames
        self.frame_stride = frame_stride
        self.width = width
        self.height = height
        self.backend: Backend = resolve_backend(backend)
        self.entries: list[VideoEntry] = find_entries(sources)
        self.uncaptioned: list[Path] = [entry.path for entry in self.entries if not entry.caption]
        """Videos without a caption (they train with the empty caption)."""
        self.too_short: dict[Path, int] = {}
        """Videos :meth:`stream` skipped for having fewer frames than one clip needs: path -> frames."""
        self._hints: dict[int, int] = {}  # container frame counts
        self._counts: dict[int, int] = {}  # decoded frame counts

    @property
    def span(self) -> int:
        """Source frames one clip covers: ``(frames - 1) * frame_stride + 1``."""
        return (self.frames - 1) * self.frame_stride + 1

    def __len__(self) -> int:
        return len(self.entries)

    def path(self, i: int) -> Path:
        return self.entries[i].path

    def caption(self, i: int) -> str:
        return self.entries[i].caption

    # -- frame counts ----------------------------------------------------------------------------

    def frame_count(self, i: int) -> int:
        """The number of frames of video ``i`` that decode (decoded once, then remembered)."""
        if i not in self._counts:
            self._counts[i] = count_frames(self.path(i), backend=self.backend)
        return self._counts[i]

    def _count_hint(self, i: int) -> int:
        """The decoded count when known, else the container's count, else the decoded count."""
        if i in self._counts:
            return self._counts[i]
        if i not in self._hints:
            hint = probe(self.path(i)).frame_count
            if hint is None:
                return self.frame_count(i)
            self._hints[i] = hint
        return self._hints[i]

    def _too_short(self, i: int, start: int = 0) -> VideoTooShort:
        detail = f"a clip of {self.frames} frames every {self.frame_stride}"
        if start:
            detail += f" from frame {start}"
        return VideoTooShort(self.path(i), self.frame_count(i), start + self.span, detail)

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, i: int, start: int) -> np.ndarray | None:
        """The clip at ``start``, or None (with the decoded frame count learnt) when the video ends first."""
        kept: list[np.ndarray] = []
        decoded = 0
        frames = iter_frames(self.path(i), start=start, max_frames=self.span, backend=self.backend)
        for decoded, frame in enumerate(frames, start=1):
            if (decoded - 1) % self.frame_stride == 0:
                kept.append(fit_image(frame, self.width, self.height, "cover"))
        if len(kept) == self.frames:
            return np.stack(kept)
        if decoded:
            self._counts[i] = start + decoded
        return None

    def clip(self, i: int, start: int = 0) -> np.ndarray:
        """The clip of video ``i`` whose first frame is source frame ``start``: uint8 ``(frames, height, width, 3)``."""
        if start < 0:
            raise ConfigError(f"clip start must be >= 0, got {start}")
        clip = self._read(i, start)
        if clip is None:
            raise self._too_short(i, start)
        return clip

    def random_start(self, i: int, u: float) -> int:
        """The start at fraction ``u`` in [0, 1) of video ``i``'s possible starts (:class:`VideoTooShort` if none)."""
        count = self._count_hint(i)
        if count < self.span:  # the container may undercount: decode before refusing
            count = self.frame_count(i)
        if count < self.span:
            raise self._too_short(i)
        return min(int(u * (count - self.span + 1)), count - self.span)

    def random_clip(self, i: int, rng: int | RandomSource) -> np.ndarray:
        """A clip of video ``i`` at a uniformly random start drawn from ``rng`` (a seed, or a random source)."""
        return self._clip_at(i, _random_source(rng).random())

    def _clip_at(self, i: int, u: float) -> np.ndarray:
        for _ in range(2):  # the second read only after a read showed the container's count was too high
            clip = self._read(i, self.random_start(i, u))
            if clip is not None:
                return clip
            self.frame_count(i)
        raise self._too_short(i)

    def clips(self, i: int) -> Iterator[np.ndarray]:
        """Video ``i``'s consecutive clips, starting at source frames ``0, frames * frame_stride, ...``,
        streamed in one decoding pass; a video too short for one clip is a :class:`VideoTooShort`."""
        window: list[np.ndarray] = []
        decoded = produced = 0
        for decoded, frame in enumerate(iter_frames(self.path(i), backend=self.backend), start=1):
            if (decoded - 1) % self.frame_stride:
                continue
            window.append(fit_image(frame, self.width, self.height, "cover"))
            if len(window) == self.frames:
                produced += 1
                yield np.stack(window)
                window = []
        self._counts[i] = decoded
        if not produced:
            raise self._too_short(i)

    def sample(self, index: int, seed: int = 0) -> tuple[np.ndarray, str]:
        """Item ``index`` (>= 0) of an endless sequence fixed by ``seed`` alone: ``(clip, caption)``.

        Pass ``p = index // len(self)`` visits the videos in the order of a permutation drawn from
        ``(seed, p)``; the clip starts at a random frame drawn from ``(seed, index)``. A video too short
        for one clip gives its place to the next one of that pass's order (listed in :attr:`too_short`).
        Any process computes the same item for the same index, whatever it read before.
        """
        if index < 0 or seed < 0:
            raise ConfigError(f"sample index and seed must be >= 0, got {index} and {seed}")
        count = len(self)
        order = np.random.default_rng([seed, index // count]).permutation(count)
        u = float(np.random.default_rng([seed, index, 1]).random())
        for k in range(count):
            i = int(order[(index + k) % count])
            try:
                return self._clip_at(i, u), self.caption(i)
            except VideoTooShort as short:
                self.too_short[short.path] = short.frames
        raise self._none_long_enough()

    def _none_long_enough(self) -> MediaError:
        longest, frames = max(self.too_short.items(), key=lambda item: item[1])
        return MediaError(
            f"no video has the {self.span} frames one clip needs ({self.frames} frames every "
            f"{self.frame_stride}); the longest, {longest}, has {frames}"
        )

    def stream(self, seed: int | RandomSource = 0, mode: ClipMode = "random") -> Iterator[tuple[np.ndarray, str]]:
        """``(clip, caption)`` forever, over the videos in a fresh shuffled order every pass.

        ``random``: one clip at a random start per video per pass; ``sequential``: every consecutive clip
        of each video. Videos too short for one clip are skipped (and listed in :attr:`too_short`); a pass
        that yields nothing is a MediaError. The sequence is fixed by ``seed`` (or the random source given).
        """
        if mode not in ("random", "sequential"):
            raise ConfigError(f"unknown clip mode {mode!r}; use 'random' or 'sequential'")
        rng = _random_source(seed)
        while True:
            order = list(range(len(self)))
            rng.shuffle(order)
            produced = 0
            for i in order:
                try:
                    if mode == "sequential":
                        for clip in self.clips(i):
                            produced += 1
                            yield clip, self.caption(i)
                    else:
                        clip = self._clip_at(i, rng.random())
                        produced += 1
                        yield clip, self.caption(i)
                except VideoTooShort as short:
                    self.too_short[short.path] = short.frames
            if not produced:
                raise self._none_long_enough()


# -- optical flow -------------------------------------------------------------------------------


def clip_flows(clip: np.ndarray, size: tuple[int, int], method: str = "dis") -> list[FlowPair]:
    """Forward and backward optical flow between consecutive frames of a uint8 ``(F, H, W, 3)`` clip.

    One ``(forward, backward)`` pair of float32 ``(2, size[0], size[1])`` tensors per transition
    ``t -> t+1``, (dx, dy) in pixels of the ``size`` = (height, width) grid, as
    :mod:`videogen.noise.flow`'s sources give them: OpenCV flow (``dis`` or ``farneback``) is computed
    both ways on grey frames cover-cropped to the grid's aspect at
    :func:`~videogen.noise.flow.flow_resolution` (at most the clip's own resolution), then resized
    to ``size`` with the vectors rescaled.
    """
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (F, H, W, 3) clip, got {clip.shape} {clip.dtype}")
    flow = _optical_flow(method)
    work = flow_resolution(size, clip.shape[1:3])
    greys = [cv2.cvtColor(cover_resize(frame, work), cv2.COLOR_RGB2GRAY) for frame in clip]
    pairs = []
    for previous, current in zip(greys[:-1], greys[1:], strict=True):
        pairs.append((_flow_tensor(flow(previous, current), size), _flow_tensor(flow(current, previous), size)))
    return pairs


def _flow_tensor(flow_hw2: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    return resize_flow(torch.from_numpy(np.ascontiguousarray(flow_hw2.transpose(2, 0, 1))), size)
