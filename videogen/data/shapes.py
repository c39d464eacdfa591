"""A synthetic video world of moving shapes, with its ground truth.

Every clip shows one or two flat-coloured shapes (circle, square, triangle) from a fixed palette on a
plain or softly textured background. Each object moves with a constant velocity (one of nine
directions, still included, at one of three speeds) and bounces off the frame edges; the camera may
pan, which moves the background texture and every object by the same image-space velocity. A caption
from a small grammar names what is seen::

    a red circle moving right
    a blue square and a yellow triangle moving up
    a green triangle moving down-left quickly and a purple circle standing still, camera panning left

A clip is a pure function of ``(world seed, clip index)`` and the :class:`WorldSpec`. With the frames
come the ground truth per frame: each object's visible mask and true centre, and the true optical
flow both ways (forward: where each pixel of frame ``t`` is in frame ``t+1``; backward: where each
pixel of frame ``t+1`` was in frame ``t``), in pixels as (dx, dy).

Rendering is anti-aliased from signed distances (coverage ``clip(0.5 - d, 0, 1)`` with ``d`` in pixels),
so sub-pixel positions show in the frames and the centroid of a mask is the object's centre to a
fraction of a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 235),
    "yellow": (240, 215, 40),
    "purple": (155, 60, 205),
    "orange": (245, 135, 30),
}
"""Object colours, far apart in RGB and from every background colour."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (16, 16, 20),
    "gray": (70, 70, 74),
    "navy": (22, 28, 60),
}
"""Background base colours: dark and unsaturated, so colour segmentation of the palette is unambiguous."""

SHAPES = ("circle", "square", "triangle")

DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "still": (0.0, 0.0),
}
"""Unit image-space directions (x right, y down)."""

SPEEDS: dict[str, float] = {"slowly": 1.0, "": 2.0, "quickly": 3.0}
"""Speed adverbs and their speed in pixels per frame at a 64-pixel-wide frame (scaled with the width)."""

PAN_DIRECTIONS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class WorldSpec:
    """The distribution clips are drawn from.

    ``size_range`` is the object's radius as a fraction of the shorter frame side. ``two_objects``
    is the probability of a second object, ``still`` of an object standing still, ``textured`` of a
    soft background texture, ``pan`` of a camera pan (a textured background then). ``fit_path``
    starts an object where its whole path fits in the frame when it can, so most clips never bounce
    and the caption's direction holds throughout.
    """

    width: int = 64
    height: int = 64
    frames: int = 16
    size_range: tuple[float, float] = (0.11, 0.17)
    two_objects: float = 0.3
    still: float = 0.1
    textured: float = 0.5
    pan: float = 0.2
    pan_speed: float = 1.0
    fit_path: bool = True
    colours: tuple[str, ...] = tuple(PALETTE)
    shapes: tuple[str, ...] = SHAPES


@dataclass(frozen=True)
class ObjectSpec:
    """One object: what it is, where it starts (pixels), its velocity (pixels per frame) and its words."""

    shape: str
    colour: str
    radius: float
    start: tuple[float, float]
    velocity: tuple[float, float]
    direction: str
    speed: str = ""


@dataclass(frozen=True)
class Scene:
    """Everything that determines a clip."""

    objects: tuple[ObjectSpec, ...]
    background: str
    texture: tuple[tuple[float, float, float, float], ...] = ()
    pan: tuple[float, float] = (0.0, 0.0)
    pan_direction: str = ""
    width: int = 64
    height: int = 64
    frames: int = 16

    @property
    def caption(self) -> str:
        return caption_for(self)


@dataclass
class ShapesClip:
    """A rendered clip and its ground truth.

    ``frames`` (F, H, W, 3) uint8; ``centres`` (F, K, 2) true object centres (x, y) in pixels;
    ``masks`` (F, K, H, W) bool, each object's visible pixels (a later object occludes an earlier
    one); ``flow_forward`` / ``flow_backward`` (F-1, 2, H, W) float32 in pixels.
    """

    scene: Scene
    frames: np.ndarray
    centres: np.ndarray
    masks: np.ndarray
    flow_forward: np.ndarray
    flow_backward: np.ndarray
    caption: str = field(default="")


# -- captions -----------------------------------------------------------------------------------


def object_phrase(obj: ObjectSpec) -> str:
    article = "an" if obj.colour[0] in "aeiou" else "a"
    return f"{article} {obj.colour} {obj.shape}"


def motion_phrase(direction: str, speed: str = "") -> str:
    if direction == "still":
        return "standing still"
    return f"moving {direction} {speed}".strip()


def caption_for(scene: Scene) -> str:
    """The grammar: objects with their motion (shared when equal), then an optional camera clause."""
    objs = scene.objects
    if len(objs) == 2 and (objs[0].direction, objs[0].speed) == (objs[1].direction, objs[1].speed):
        text = (
            f"{object_phrase(objs[0])} and {object_phrase(objs[1])} {motion_phrase(objs[0].direction, objs[0].speed)}"
        )
    else:
        text = " and ".join(f"{object_phrase(o)} {motion_phrase(o.direction, o.speed)}" for o in objs)
    if scene.pan_direction:
        text += f", camera panning {scene.pan_direction}"
    return text


# -- sampling -----------------------------------------------------------------------------------


def _start_position(rng: np.random.Generator, radius: float, velocity: tuple[float, float], spec: WorldSpec):
    """A start centre inside the frame; with ``fit_path`` one whose straight path stays inside if possible."""
    start = []
    for axis, extent in enumerate((spec.width, spec.height)):
        travel = velocity[axis] * (spec.frames - 1)
        low, high = radius, extent - radius
        if spec.fit_path and high - low > abs(travel):
            low, high = (low, high - travel) if travel > 0 else (low - travel, high)
        start.append(float(rng.uniform(low, high)))
    return tuple(start)


def _sample_object(rng: np.random.Generator, spec: WorldSpec, colour: str, pan: tuple[float, float]) -> ObjectSpec:
    shape = str(rng.choice(spec.shapes))
    radius = float(rng.uniform(*spec.size_range)) * min(spec.width, spec.height)
    if rng.random() < spec.still:
        direction, speed = "still", ""
    else:
        direction = str(rng.choice([d for d in DIRECTIONS if d != "still"]))
        speed = str(rng.choice(list(SPEEDS)))
    return _placed_object(rng, spec, shape, colour, radius, direction, speed, pan)


def _placed_object(
    rng: np.random.Generator,
    spec: WorldSpec,
    shape: str,
    colour: str,
    radius: float,
    direction: str,
    speed: str,
    pan: tuple[float, float],
) -> ObjectSpec:
    unit = DIRECTIONS[direction]
    pixels = SPEEDS.get(speed, 0.0) * spec.width / 64.0 if direction != "still" else 0.0
    velocity = (unit[0] * pixels, unit[1] * pixels)
    image_velocity = (velocity[0] + pan[0], velocity[1] + pan[1])
    start = _start_position(rng, radius, image_velocity, spec)
    return ObjectSpec(shape, colour, radius, start, velocity, direction, speed)


def sample_scene(rng: np.random.Generator, spec: WorldSpec) -> Scene:
    """Draw one scene from ``spec``'s distribution."""
    pan, pan_direction = (0.0, 0.0), ""
    textured = rng.random() < spec.textured
    if rng.random() < spec.pan:
        pan_direction = str(rng.choice(PAN_DIRECTIONS))
        ux, uy = DIRECTIONS[pan_direction]
        step = spec.pan_speed * spec.width / 64.0
        pan = (-ux * step, -uy * step)  # the camera turns left: the scene moves right in the image
        textured = True
    count = 2 if rng.random() < spec.two_objects else 1
    colours = rng.choice(spec.colours, size=count, replace=False)
    objects = tuple(_sample_object(rng, spec, str(c), pan) for c in colours)
    texture = _texture(rng) if textured else ()
    background = str(rng.choice(list(BACKGROUNDS)))
    return Scene(objects, background, texture, pan, pan_direction, spec.width, spec.height, spec.frames)


def _texture(rng: np.random.Generator) -> tuple[tuple[float, float, float, float], ...]:
    return tuple(
        (
            float(rng.uniform(0.03, 0.08)),
            float(rng.uniform(0.0, 2 * math.pi)),
            float(rng.uniform(0.0, 2 * math.pi)),
            float(rng.uniform(14.0, 32.0)),
        )
        for _ in range(3)
    )


def redraw_scene(rng: np.random.Generator, spec: WorldSpec, scene: Scene) -> Scene:
    """Another scene with ``scene``'s caption: the same objects' shapes, colours, directions and speeds and
    the same camera pan, with everything the caption leaves open drawn afresh from ``spec`` (each object's
    size and start, the background colour and, where the caption allows it, the texture)."""
    textured = bool(scene.pan_direction) or rng.random() < spec.textured
    objects = tuple(
        _placed_object(
            rng,
            spec,
            obj.shape,
            obj.colour,
            float(rng.uniform(*spec.size_range)) * min(spec.width, spec.height),
            obj.direction,
            obj.speed,
            scene.pan,
        )
        for obj in scene.objects
    )
    texture = _texture(rng) if textured else ()
    background = str(rng.choice(list(BACKGROUNDS)))
    return Scene(objects, background, texture, scene.pan, scene.pan_direction, spec.width, spec.height, spec.frames)


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of world ``seed``: independent of every other clip."""
    return np.random.default_rng([seed, index])


# -- rendering ----------------------------------------------------------------------------------


def trajectory(obj: ObjectSpec, pan: tuple[float, float], scene: Scene) -> np.ndarray:
    """Centres (F, 2) of ``obj`` in image pixels, bouncing off the frame edges (reflection)."""
    t = np.arange(scene.frames, dtype=np.float64)
    out = np.empty((scene.frames, 2))
    for axis, extent in enumerate((scene.width, scene.height)):
        low, high = obj.radius, extent - obj.radius
        raw = obj.start[axis] + (obj.velocity[axis] + pan[axis]) * t
        span = max(high - low, 1e-6)
        folded = np.mod(raw - low, 2 * span)
        out[:, axis] = low + np.where(folded > span, 2 * span - folded, folded)
    return out


def signed_distance(shape: str, xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) of the shape centred at ``centre``."""
    dx, dy = xs - centre[0], ys - centre[1]
    if shape == "circle":
        return np.hypot(dx, dy) - radius
    if shape == "square":
        half = 0.9 * radius
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    if shape == "triangle":  # equilateral, apex up, circumradius 1.25 r: max of three edge distances
        inner = 1.25 * radius / 2.0
        normals = ((0.0, 1.0), (math.sqrt(3) / 2, -0.5), (-math.sqrt(3) / 2, -0.5))
        return np.max([nx * dx + ny * dy for nx, ny in normals], axis=0) - inner
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _background(scene: Scene, xs: np.ndarray, ys: np.ndarray, offset: np.ndarray) -> np.ndarray:
    base = np.asarray(BACKGROUNDS[scene.background], dtype=np.float64)
    image = np.broadcast_to(base, (*xs.shape, 3)).copy()
    for amplitude, phase, angle, period in scene.texture:
        u = (xs - offset[0]) * math.cos(angle) + (ys - offset[1]) * math.sin(angle)
        wave = amplitude * 255.0 * np.sin(2 * math.pi * u / period + phase)
        image += wave[..., None] * np.array([1.0, 0.9, 1.1])
    return image


def render_scene(scene: Scene) -> ShapesClip:
    """Render ``scene`` to frames and compute its ground truth."""
    h, w, f = scene.height, scene.width, scene.frames
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    tracks = np.stack([trajectory(o, scene.pan, scene) for o in scene.objects], axis=1)  # (F, K, 2)
    pan = np.asarray(scene.pan)
    frames = np.empty((f, h, w, 3), dtype=np.uint8)
    masks = np.zeros((f, len(scene.objects), h, w), dtype=bool)
    owner = np.full((f, h, w), -1, dtype=np.int64)
    for t in range(f):
        image = _background(scene, xs, ys, pan * t)
        for k, obj in enumerate(scene.objects):
            coverage = np.clip(0.5 - signed_distance(obj.shape, xs, ys, tracks[t, k], obj.radius), 0.0, 1.0)
            colour = np.asarray(PALETTE[obj.colour], dtype=np.float64)
            image = image * (1 - coverage[..., None]) + colour * coverage[..., None]
            inside = coverage >= 0.5
            owner[t][inside] = k
        for k in range(len(scene.objects)):
            masks[t, k] = owner[t] == k
        frames[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    forward = np.empty((max(f - 1, 0), 2, h, w), dtype=np.float32)
    backward = np.empty_like(forward)
    for t in range(f - 1):
        moves = tracks[t + 1] - tracks[t]  # (K, 2) true displacement, bounces included
        forward[t] = _flow_field(owner[t], moves, pan)
        backward[t] = -_flow_field(owner[t + 1], moves, pan)
    return ShapesClip(scene, frames, tracks.astype(np.float32), masks, forward, backward, scene.caption)


def _flow_field(owner: np.ndarray, moves: np.ndarray, pan: np.ndarray) -> np.ndarray:
    """(2, H, W): each pixel moves with the object that owns it, the background with the pan."""
    flow = np.broadcast_to(pan.astype(np.float32)[:, None, None], (2, *owner.shape)).copy()
    for k, move in enumerate(moves):
        flow[:, owner == k] = move.astype(np.float32)[:, None]
    return flow


class ShapesWorld:
    """Clip ``i`` of world ``seed`` is ``render_scene(sample_scene(clip_rng(seed, i), spec))``."""

    def __init__(self, spec: WorldSpec | None = None, seed: int = 0) -> None:
        self.spec = spec or WorldSpec()
        self.seed = seed

    def scene(self, index: int) -> Scene:
        return sample_scene(clip_rng(self.seed, index), self.spec)

    def clip(self, index: int) -> ShapesClip:
        return render_scene(self.scene(index))

    def captions(self) -> list[str]:
        """Every caption of the grammar this world's objects can produce with one object and no pan."""
        out = []
        for colour in self.spec.colours:
            for shape in self.spec.shapes:
                for direction in DIRECTIONS:
                    for speed in [""] if direction == "still" else list(SPEEDS):
                        obj = ObjectSpec(shape, colour, 1.0, (0.0, 0.0), (0.0, 0.0), direction, speed)
                        out.append(caption_for(Scene((obj,), "black")))
        return out
