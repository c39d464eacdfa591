"""Flow sources for noise warping: camera presets, drags, driving videos and flow files.

Every source yields, for each transition ``t -> t+1`` of a sequence of ``num_frames`` frames, a pair
``(forward, backward)`` of float32 tensors shaped (2, H, W) holding (dx, dy) in pixels of the
requested (H, W) grid: ``forward`` at a pixel of frame ``t`` points to where it goes in frame
``t+1``; ``backward`` at a pixel of frame ``t+1`` points to where it came from in frame ``t``.
Backward flows are computed (analytically, or by running optical flow the other way), never taken
as the negated forward flow. A pixel with no match in the other frame (occluded, revealed) has the
flow :data:`~videogen.noise.warp.OFF_FRAME`, which points out of any frame. Pixel ``(x, y)`` has
its centre at integer index coordinates; a frame fraction ``u`` maps to ``u * W - 0.5``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from videogen.errors import MediaError
from videogen.io.video_reader import iter_frames, probe
from videogen.noise.warp import OFF_FRAME, FlowError
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, DragSpec, VideoFlowSpec, WarpedNoiseSpec

FlowPair = tuple[torch.Tensor, torch.Tensor]

# Optical flow on tiny frames is poor: compute it with at least this many pixels on the short side
# (never above the video's own resolution) and resize the flow to the requested grid.
_MIN_FLOW_SIDE = 256
# Fixed-point iterations used to invert a forward-only flow file.
_INVERT_ITERATIONS = 8


# ----------------------------------------------------------------------------------------------
# Grids, resizing and affine maps
# ----------------------------------------------------------------------------------------------


def _pixel_grid(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return xs, ys


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (2, h, w) flow to (2, H, W) bilinearly and rescale it: ``dx *= W/w``, ``dy *= H/h``."""
    _, h, w = flow.shape
    if (h, w) == tuple(size):
        return flow.float()
    shrink = size[0] < h or size[1] < w
    out = F.interpolate(flow[None].float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)[0]
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=out.dtype)[:, None, None]
    return out * scale


def _apply_affine(matrix: np.ndarray, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Displacement ``A(p) - p`` of the 2x3 affine ``matrix`` at every grid point, as float32 (2, H, W)."""
    a = torch.from_numpy(matrix)
    x = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    y = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    return torch.stack([x - xs, y - ys]).float()


def _similarity(scale: float, degrees: float, pivot: tuple[float, float], shift: tuple[float, float]):
    """2x3 matrix of ``p -> pivot + scale * R(degrees) (p - pivot) + shift``.

    ``R`` turns counter-clockwise on screen (y points down): ``R = [[cos, sin], [-sin, cos]]``.
    """
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    lin = scale * np.array([[c, s], [-s, c]])
    p = np.asarray(pivot, dtype=np.float64)
    offset = p - lin @ p + np.asarray(shift, dtype=np.float64)
    return np.concatenate([lin, offset[:, None]], axis=1)


def _invert_affine(matrix: np.ndarray) -> np.ndarray:
    lin_inv = np.linalg.inv(matrix[:, :2])
    return np.concatenate([lin_inv, -(lin_inv @ matrix[:, 2])[:, None]], axis=1)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of ``outer(inner(p))``."""
    lin = outer[:, :2] @ inner[:, :2]
    return np.concatenate([lin, (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], axis=1)


def _affine_pair(step: np.ndarray, size: tuple[int, int]) -> FlowPair:
    """Forward flow of the affine ``step`` and backward flow of its exact inverse."""
    xs, ys = _pixel_grid(size)
    return _apply_affine(step, xs, ys), _apply_affine(_invert_affine(step), xs, ys)


# ----------------------------------------------------------------------------------------------
# Camera presets
# ----------------------------------------------------------------------------------------------


def _active_move(moves: list[CameraMoveSpec], t: int) -> CameraMoveSpec | None:
    start = 0
    for move in moves:
        if move.frames == 0 or t < start + move.frames:
            return move
        start += move.frames
    return None


def camera_step(move: CameraMoveSpec, size: tuple[int, int]) -> np.ndarray:
    """2x3 affine map of one frame of ``move`` on an (H, W) grid: zoom and rotate about the centre,
    then shift the scene by ``(-pan * W, tilt * H)``."""
    h, w = size
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    return _similarity(1.0 + move.zoom, move.rotate, centre, (-move.pan * w, move.tilt * h))


def camera_flows(camera: CameraSpec, size: tuple[int, int], num_frames: int) -> Iterator[FlowPair]:
    """Flows of the camera moves, played in order, for ``num_frames - 1`` transitions."""
    still = torch.zeros(2, *size)
    pairs: dict[int, FlowPair] = {}  # a move's flows are the same on every frame it lasts
    for t in range(num_frames - 1):
        move = _active_move(camera.moves, t)
        if move is None:
            yield still, still
            continue
        if id(move) not in pairs:
            pairs[id(move)] = _affine_pair(camera_step(move, size), size)
        yield pairs[id(move)]


# ----------------------------------------------------------------------------------------------
# Drags (cut-and-drag)
# ----------------------------------------------------------------------------------------------


def _to_pixels(points, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.array([[p.x * w - 0.5, p.y * h - 0.5] for p in points], dtype=np.float64)


def _along_path(path: np.ndarray, u: float) -> np.ndarray:
    """The point at fraction ``u`` of the polyline's arc length."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    total = float(seg.sum())
    if total == 0.0:
        return path[0]
    target = u * total
    ends = np.cumsum(seg)
    i = min(int(np.searchsorted(ends, target)), len(seg) - 1)
    before = ends[i] - seg[i]
    frac = 0.0 if seg[i] == 0 else (target - before) / seg[i]
    return path[i] + frac * (path[i + 1] - path[i])


def drag_transform(drag: DragSpec, t: int, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """2x3 affine map from the region on frame 0 to the region on frame ``t``.

    ``p -> g(u) + scale^u R(u * rotate) (p - g(0))`` where ``g`` is the grab point moving at constant
    speed along the path and ``u`` the progress between ``start_frame`` and ``end_frame``.
    """
    path = _to_pixels(drag.path, size)
    end = drag.end_frame if drag.end_frame is not None else num_frames - 1
    u = 0.0 if end <= drag.start_frame else min(max((t - drag.start_frame) / (end - drag.start_frame), 0.0), 1.0)
    grab = path[0]
    point = _along_path(path, u)
    return _similarity(drag.scale**u, drag.rotate * u, (grab[0], grab[1]), (point - grab).tolist())


def _region_mask(polygon: np.ndarray, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Pixels whose centres lie inside ``polygon`` (even-odd crossing rule, half-open edges)."""
    inside = torch.zeros(xs.shape, dtype=torch.bool)
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if y1 == y2:
            continue
        spans = (ys >= min(y1, y2)) & (ys < max(y1, y2))
        crossing = x1 + (ys - y1) * ((x2 - x1) / (y2 - y1))
        inside ^= spans & (xs < crossing)
    return inside


def _transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _layers(drags: list[DragSpec], polygons: list[np.ndarray], t: int, num_frames: int, xs, ys):
    """Top layer index per pixel on frame ``t`` (-1 = background) and each drag's frame-0 -> t map."""
    size = tuple(xs.shape)
    top = torch.full(size, -1, dtype=torch.long)
    maps = []
    for i, (drag, polygon) in enumerate(zip(drags, polygons, strict=True)):
        maps.append(drag_transform(drag, t, num_frames, size))
        top[_region_mask(_transform_points(maps[-1], polygon), xs, ys)] = i
    return top, maps


def _hide_covered(flow: torch.Tensor, own: torch.Tensor, other: torch.Tensor, xs, ys) -> torch.Tensor:
    """Set ``flow`` to :data:`OFF_FRAME` where it lands under a layer above the pixel's own layer."""
    h, w = own.shape
    tx = (xs + flow[0]).round().clamp(0, w - 1).long()
    ty = (ys + flow[1]).round().clamp(0, h - 1).long()
    covered = other[ty, tx] > own
    return torch.where(covered, torch.full_like(flow, OFF_FRAME), flow)


def drag_flows(drags: list[DragSpec], size: tuple[int, int], num_frames: int) -> Iterator[FlowPair]:
    """Flows of regions dragged over a still background, for ``num_frames - 1`` transitions.

    Layers: the background (still) and one per drag, later drags on top. A pixel of drag ``i`` on
    frame ``t`` moves by ``A_{t+1} A_t^{-1} p - p`` (``A_t`` from :func:`drag_transform`) and one on
    frame ``t+1`` came from ``A_t A_{t+1}^{-1} p - p``. Where a pixel lands under a higher layer it
    is occluded, and where it comes from under a higher layer it is revealed: both get
    :data:`OFF_FRAME`, so occluded noise vanishes and revealed pixels get fresh noise, while the noise
    of each dragged region travels with it intact.
    """
    xs, ys = _pixel_grid(size)
    polygons = [_to_pixels(d.polygon, size) for d in drags]
    top_now, maps_now = _layers(drags, polygons, 0, num_frames, xs, ys)
    for t in range(num_frames - 1):
        top_next, maps_next = _layers(drags, polygons, t + 1, num_frames, xs, ys)
        forward = torch.zeros(2, *size)
        backward = torch.zeros(2, *size)
        for i, (now, nxt) in enumerate(zip(maps_now, maps_next, strict=True)):
            step = _compose(nxt, _invert_affine(now))
            forward = torch.where(top_now == i, _apply_affine(step, xs, ys), forward)
            backward = torch.where(top_next == i, _apply_affine(_invert_affine(step), xs, ys), backward)
        yield _hide_covered(forward, top_now, top_next, xs, ys), _hide_covered(backward, top_next, top_now, xs, ys)
        top_now, maps_now = top_next, maps_next


# ----------------------------------------------------------------------------------------------
# Driving video through OpenCV optical flow
# ----------------------------------------------------------------------------------------------


def cover_resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale ``frame`` (H, W, C) to cover ``size`` = (height, width), then centre-crop to it."""
    h, w = frame.shape[:2]
    th, tw = size
    scale = max(th / h, tw / w)
    ch, cw = min(h, round(th / scale)), min(w, round(tw / scale))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = frame[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(crop, (tw, th), interpolation=interp)


def flow_resolution(size: tuple[int, int], video_size: tuple[int, int]) -> tuple[int, int]:
    """Where optical flow is computed: ``size`` scaled up so its short side reaches 256 pixels, but
    never beyond the video's own resolution (after cover-cropping), and never below ``size``."""
    h, w = size
    vh, vw = video_size
    native = 1.0 / max(h / vh, w / vw)
    factor = max(1.0, min(_MIN_FLOW_SIDE / min(h, w), native))
    return round(h * factor), round(w * factor)


def _optical_flow(method: str):
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda a, b: dis.calc(a, b, None)
    if method == "farneback":
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise MediaError(f"unknown optical flow method {method!r}; use 'dis' or 'farneback'")


def video_flows(video: VideoFlowSpec, size: tuple[int, int], num_frames: int) -> Iterator[FlowPair]:
    """Optical flow between consecutive frames of ``video.path`` from ``video.start_frame`` on.

    Frames are cover-cropped to the grid's aspect at :func:`flow_resolution`, turned grey, and the
    flow is computed both ways (``calc(prev, next)`` and ``calc(next, prev)``) and resized to
    ``size``. Yields at most ``num_frames - 1`` pairs; fewer when the video ends first.
    """
    info = probe(video.path)
    work = flow_resolution(size, (info.height, info.width))
    flow = _optical_flow(video.method)
    frames = iter_frames(video.path, max_frames=num_frames, start=video.start_frame, backend=video.backend)
    previous = None
    for frame in frames:
        grey = cv2.cvtColor(cover_resize(frame, work), cv2.COLOR_RGB2GRAY)
        if previous is not None:
            yield _flow_tensor(flow(previous, grey), size), _flow_tensor(flow(grey, previous), size)
        previous = grey


def _flow_tensor(flow_hw2: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    return resize_flow(torch.from_numpy(np.ascontiguousarray(flow_hw2.transpose(2, 0, 1))), size)


# ----------------------------------------------------------------------------------------------
# Flow files
# ----------------------------------------------------------------------------------------------


def invert_flow(forward: torch.Tensor) -> torch.Tensor:
    """Backward flow of a forward flow by the fixed point ``b(p) = -f(p + b(p))`` (bilinear lookups).

    Exact for translations; for smooth flows it converges in a few iterations. Used only for flow
    files that hold forward flow alone.
    """
    _, h, w = forward.shape
    xs, ys = _pixel_grid((h, w))
    base = torch.stack([xs, ys]).float()
    norm = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])[:, None, None]
    backward = -forward.float()
    for _ in range(_INVERT_ITERATIONS):
        where = ((base + backward) * norm - 1.0).permute(1, 2, 0)[None]
        sampled = F.grid_sample(
            forward[None].float(), where, mode="bilinear", padding_mode="border", align_corners=True
        )
        backward = -sampled[0]
    return backward


class _FlowFile:
    """Per-frame access to the flows of a .npy or .safetensors file without loading it whole.

    .npy: float array (N, 2, H, W) of forward flows, or (N, 2, 2, H, W) with [:, 0] forward and
    [:, 1] backward. .safetensors: tensor ``forward`` (N, 2, H, W) and optionally ``backward``
    (same shape). Flows are (dx, dy) in pixels of the file's own (H, W).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise MediaError(f"flow file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            self._open_npy()
        elif suffix == ".safetensors":
            self._open_safetensors()
        else:
            raise MediaError(f"{path}: flow files must be .npy or .safetensors")

    def _open_npy(self) -> None:
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise MediaError(f"{self.path}: not a readable .npy array ({exc})") from exc
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
            raise MediaError(f"{self.path}: expected a numeric array")
        if array.ndim == 4 and array.shape[1] == 2:
            self._forward, self._backward = array, None
        elif array.ndim == 5 and array.shape[1:3] == (2, 2):
            self._forward, self._backward = array[:, 0], array[:, 1]
        else:
            raise FlowError(f"{self.path}: flow array must be (N, 2, H, W) or (N, 2, 2, H, W), got {array.shape}")

    def _open_safetensors(self) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(self.path), framework="numpy")
            keys = set(handle.keys())
        except (SafetensorError, OSError) as exc:
            raise MediaError(f"{self.path}: not a readable safetensors file ({exc})") from exc
        if "forward" not in keys:
            raise FlowError(f"{self.path}: needs a tensor named 'forward' (N, 2, H, W); has {sorted(keys)}")
        self._forward = handle.get_slice("forward")
        self._backward = handle.get_slice("backward") if "backward" in keys else None
        shape = tuple(self._forward.get_shape())
        if len(shape) != 4 or shape[1] != 2:
            raise FlowError(f"{self.path}: 'forward' must be (N, 2, H, W), got {shape}")
        back = None if self._backward is None else tuple(self._backward.get_shape())
        if back is not None and back != shape:
            raise FlowError(f"{self.path}: 'backward' {back} is not shaped like 'forward' {shape}")

    def __len__(self) -> int:
        return int(self._forward.shape[0]) if isinstance(self._forward, np.ndarray) else self._forward.get_shape()[0]

    def frame(self, i: int) -> FlowPair:
        forward = self._read(self._forward, i, "forward")
        backward = invert_flow(forward) if self._backward is None else self._read(self._backward, i, "backward")
        return forward, backward

    def _read(self, source, i: int, name: str) -> torch.Tensor:
        flow = torch.from_numpy(np.array(source[i], dtype=np.float32))
        if not bool(torch.isfinite(flow).all()):
            raise FlowError(f"{self.path}: {name} flow of transition {i} contains NaN or infinite values")
        return flow


def file_flows(path: str | Path, size: tuple[int, int], num_frames: int) -> Iterator[FlowPair]:
    """Flows read from a .npy / .safetensors file, resized to ``size`` (and rescaled), one at a time.

    Yields ``num_frames - 1`` pairs; a file with fewer transitions is an error before the first.
    """
    flows = _FlowFile(Path(path))
    if len(flows) < num_frames - 1:
        raise MediaError(f"{path}: holds {len(flows)} flow transitions; {num_frames} frames need {num_frames - 1}")
    for i in range(num_frames - 1):
        forward, backward = flows.frame(i)
        yield resize_flow(forward, size), resize_flow(backward, size)


# ----------------------------------------------------------------------------------------------
# Dispatch and display
# ----------------------------------------------------------------------------------------------


def flows_from_spec(spec: WarpedNoiseSpec, size: tuple[int, int], num_frames: int) -> Iterator[FlowPair]:
    """The flow source chosen by ``spec.source`` on an (H, W) grid, for ``num_frames`` motion frames."""
    if spec.source == "camera":
        return camera_flows(spec.camera, size, num_frames)
    if spec.source == "drag":
        return drag_flows(spec.drags, size, num_frames)
    if spec.source == "video":
        return video_flows(spec.video, size, num_frames)
    return file_flows(spec.flow_file, size, num_frames)


def flow_to_rgb(flow: torch.Tensor, speed: float = 0.5) -> np.ndarray:
    """Colour a (2, H, W) flow: hue = direction, brightness = ``1 - exp(-|f| / speed)`` (uint8 RGB)."""
    dx, dy = flow[0].double().numpy(), flow[1].double().numpy()
    angle = np.mod(np.arctan2(dy, dx), 2.0 * np.pi)
    hsv = np.empty((*dx.shape, 3), dtype=np.uint8)
    hsv[..., 0] = np.round(angle / (2.0 * np.pi) * 179.0).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.round(255.0 * (1.0 - np.exp(-np.hypot(dx, dy) / speed))).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
