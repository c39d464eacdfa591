"""The parallel plan: how many workers split a video along each axis, and its torch DeviceMesh.

A job's workers form one mesh with four named axes, outermost first:

- ``step``: denoising steps (ParaStep);
- ``cfg``: the two classifier-free-guidance branches;
- ``clip``: contiguous clips of frames (Video-Infinity);
- ``patch``: rows of every frame (DistriFusion).

The axes that talk most (``patch``, then ``clip``, in every layer) are innermost, so their
groups are made of consecutive ranks, which a placement group packs onto the same node first.
A rank's coordinates are its row-major index into the mesh shape ``(step, cfg, clip, patch)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from videogen.errors import ConfigError

__all__ = ["AXES", "ParallelPlan", "build_mesh"]

AXES: tuple[str, ...] = ("step", "cfg", "clip", "patch")


@dataclass(frozen=True)
class ParallelPlan:
    """Number of workers along each axis; the world size is their product."""

    clip: int = 1
    patch: int = 1
    step: int = 1
    cfg: int = 1

    def __post_init__(self) -> None:
        for axis in AXES:
            size = getattr(self, axis)
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ConfigError(f"parallel.{axis} must be a positive integer, got {size!r}")
        if self.cfg > 2:
            raise ConfigError(f"parallel.cfg splits the two guidance branches: 1 or 2, got {self.cfg}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The mesh shape, in :data:`AXES` order."""
        return tuple(getattr(self, axis) for axis in AXES)

    @property
    def world_size(self) -> int:
        size = 1
        for n in self.shape:
            size *= n
        return size

    def coords(self, rank: int) -> dict[str, int]:
        """The position of ``rank`` along each axis."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a world of {self.world_size}")
        coords = {}
        for axis, size in reversed(list(zip(AXES, self.shape, strict=True))):
            rank, coords[axis] = divmod(rank, size)
        return {axis: coords[axis] for axis in AXES}

    def rank_of(self, **coords: int) -> int:
        """The rank at the given coordinates (missing axes are 0)."""
        unknown = set(coords) - set(AXES)
        if unknown:
            raise ValueError(f"unknown axes {sorted(unknown)}; the axes are {AXES}")
        rank = 0
        for axis, size in zip(AXES, self.shape, strict=True):
            index = coords.get(axis, 0)
            if not 0 <= index < size:
                raise ValueError(f"{axis} index {index} is outside 0..{size - 1}")
            rank = rank * size + index
        return rank

    def check_world_size(self, world_size: int) -> None:
        """Raise :class:`ConfigError` unless the plan uses exactly ``world_size`` workers."""
        if world_size != self.world_size:
            sizes = " x ".join(f"{axis}={getattr(self, axis)}" for axis in AXES)
            raise ConfigError(f"the parallel plan {sizes} needs {self.world_size} workers, not {world_size}")


def build_mesh(plan: ParallelPlan, device_type: str | None = None) -> DeviceMesh:
    """The DeviceMesh of ``plan`` over the default process group, with axes named :data:`AXES`.

    Every rank must call this (it creates one process group per axis slice). ``device_type``
    defaults to ``"cuda"`` under NCCL and ``"cpu"`` otherwise.
    """
    if not dist.is_initialized():
        raise RuntimeError("build_mesh needs an initialised default process group")
    plan.check_world_size(dist.get_world_size())
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device_type, plan.shape, mesh_dim_names=AXES)
