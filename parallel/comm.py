"""Collectives and neighbour halo exchange over one mesh axis, with byte and call accounting.

Every communication of the parallel modes goes through an :class:`AxisComm`. Each call records,
in a :class:`CommStats` shared by all axes of a worker, one *call* and the payload bytes under
``(axis, kind)``; ``kind`` is a label chosen by the caller (``"conv_halo"``, ``"groupnorm"``...),
so a benchmark can report communication per axis and per purpose exactly, on CPU.

Accounting counts what this rank hands to and gets from the backend, not wire traffic (which
depends on the algorithm the backend picks):

- ``all_gather``: sent = the local contribution (after padding), received = the other ranks'
  contributions;
- ``all_reduce``: sent = received = the tensor;
- ``halo_exchange`` and ``exchange``: sent = what this rank sends to its peers, received = what
  it receives.

Ranks are neighbours along the axis in group-rank order, with no wrap-around. A halo exchange is
one ``batch_isend_irecv`` with both neighbours at once (no odd/even phases); ``exchange``
generalises it to any set of peers, so several patterns can share one call. The ``start_*``
variants of the collectives and of ``exchange`` post the same communication and return an
:class:`InFlight`, so that a caller can compute while it moves and wait only when it needs the
result. An axis of size 1, including a ``group`` of ``None`` (a single worker without any
process group), communicates nothing and records nothing, so one code path serves one worker and
many.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh

__all__ = ["AxisComm", "CommStats", "InFlight", "Traffic", "combine_stats", "halo_slice", "nbytes"]


@dataclass
class Traffic:
    """Communication calls and payload bytes."""

    calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.calls + other.calls,
            self.bytes_sent + other.bytes_sent,
            self.bytes_received + other.bytes_received,
        )


class CommStats:
    """Per-axis, per-kind :class:`Traffic` of one worker."""

    def __init__(self) -> None:
        self._table: dict[tuple[str, str], Traffic] = {}

    def record(self, axis: str, kind: str, bytes_sent: int, bytes_received: int) -> None:
        entry = self._table.setdefault((axis, kind), Traffic())
        entry.calls += 1
        entry.bytes_sent += bytes_sent
        entry.bytes_received += bytes_received

    def by_kind(self, axis: str) -> dict[str, Traffic]:
        """A copy of the counters of ``axis``, keyed by kind."""
        return {k: Traffic(**vars(t)) for (a, k), t in sorted(self._table.items()) if a == axis}

    def total(self, axis: str) -> Traffic:
        return sum(self.by_kind(axis).values(), Traffic())

    def snapshot(self) -> dict[str, dict[str, Traffic]]:
        """All counters as ``{axis: {kind: Traffic}}`` (copies)."""
        return {axis: self.by_kind(axis) for axis in sorted({a for a, _ in self._table})}

    def reset(self) -> None:
        self._table.clear()


def nbytes(tensor: torch.Tensor) -> int:
    """Payload size of ``tensor`` in bytes."""
    return tensor.numel() * tensor.element_size()


class AxisComm:
    """Collectives among the ranks of one mesh axis (one process group)."""

    def __init__(self, group: ProcessGroup | None, axis: str, stats: CommStats | None = None):
        self.group = group
        self.axis = axis
        self.stats = stats if stats is not None else CommStats()
        if group is None:
            self.rank, self.size = 0, 1
        else:
            self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)

    @classmethod
    def from_mesh(cls, mesh: DeviceMesh, axis: str, stats: CommStats | None = None) -> AxisComm:
        """The communicator of the named axis of ``mesh``."""
        return cls(mesh.get_group(axis), axis, stats)

    @property
    def device(self) -> torch.device:
        """Where this axis' tensors must live: the current CUDA device for NCCL, else the CPU."""
        if self.group is not None and dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_gather(self, tensor: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape on all ranks), in group-rank order."""
        return self.start_all_gather(tensor, kind).wait()

    def start_all_gather(self, tensor: torch.Tensor, kind: str) -> InFlight:
        """:meth:`all_gather`, posted now; :meth:`InFlight.wait` completes it and returns its result."""
        if self.size == 1:
            return InFlight([], [tensor])
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.size)]
        work = dist.all_gather(out, tensor, group=self.group, async_op=True)
        self.stats.record(self.axis, kind, nbytes(tensor), (self.size - 1) * nbytes(tensor))
        return InFlight([work], out, (tensor,))

    def gather(self, tensor: torch.Tensor, kind: str, dst: int = 0) -> list[torch.Tensor] | None:
        """Every rank's ``tensor`` (same shape on all ranks) on group rank ``dst``, in rank order; None elsewhere."""
        if self.size == 1:
            return [tensor]
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.size)] if self.rank == dst else None
        dist.gather(tensor, out, group=self.group, group_dst=dst)
        if self.rank == dst:
            self.stats.record(self.axis, kind, 0, (self.size - 1) * nbytes(tensor))
        else:
            self.stats.record(self.axis, kind, nbytes(tensor), 0)
        return out

    def gather_objects(self, obj: Any, kind: str, dst: int = 0) -> list[Any] | None:
        """Every rank's picklable ``obj`` on group rank ``dst`` (in rank order), None elsewhere."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dist.get_global_rank(self.group, dst), group=self.group)
        if self.rank == dst:
            received = sum(len(pickle.dumps(o)) for rank, o in enumerate(out) if rank != dst)
            self.stats.record(self.axis, kind, 0, received)
        else:
            self.stats.record(self.axis, kind, len(pickle.dumps(obj)), 0)
        return out

    def all_gather_uneven(self, tensor: torch.Tensor, dim: int, sizes: list[int], kind: str) -> torch.Tensor:
        """Concatenate along ``dim`` every rank's ``tensor``, whose length there is ``sizes[rank]``.

        The other dimensions must agree across ranks. Contributions are zero-padded to the
        longest one for the collective and trimmed afterwards.
        """
        return self.start_all_gather_uneven(tensor, dim, sizes, kind).wait()

    def start_all_gather_uneven(self, tensor: torch.Tensor, dim: int, sizes: list[int], kind: str) -> InFlight:
        """:meth:`all_gather_uneven`, posted now; :meth:`InFlight.wait` completes it and returns its result."""
        if len(sizes) != self.size or tensor.shape[dim] != sizes[self.rank]:
            raise ValueError(f"sizes {sizes} do not match rank {self.rank}'s length {tensor.shape[dim]}")
        longest = max(sizes)
        if self.size == 1 or longest == 0:
            return InFlight([], tensor)
        if tensor.shape[dim] < longest:
            pad_shape = list(tensor.shape)
            pad_shape[dim] = longest - tensor.shape[dim]
            tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
        flight = self.start_all_gather(tensor, kind)

        def join(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True) if n > 0], dim=dim)

        flight.finish = join
        return flight

    def all_reduce(self, tensor: torch.Tensor, kind: str) -> torch.Tensor:
        """Sum ``tensor`` over the axis, in place; returns it."""
        return self.start_all_reduce(tensor, kind).wait()

    def start_all_reduce(self, tensor: torch.Tensor, kind: str) -> InFlight:
        """:meth:`all_reduce`, posted now; :meth:`InFlight.wait` completes it and returns ``tensor``."""
        if self.size == 1:
            return InFlight([], tensor)
        work = dist.all_reduce(tensor, group=self.group, async_op=True)
        self.stats.record(self.axis, kind, nbytes(tensor), nbytes(tensor))
        return InFlight([work], tensor)

    def broadcast(self, tensor: torch.Tensor, kind: str, src: int = 0) -> torch.Tensor:
        """Every rank ends with rank ``src``'s ``tensor`` (same shape and dtype on all ranks)."""
        if self.size == 1:
            return tensor
        tensor = tensor.contiguous()
        dist.broadcast(tensor, group=self.group, group_src=src)
        sent = nbytes(tensor) * (self.size - 1) if self.rank == src else 0
        self.stats.record(self.axis, kind, sent, 0 if self.rank == src else nbytes(tensor))
        return tensor

    def exchange(
        self, outgoing: dict[int, torch.Tensor], incoming: dict[int, Sequence[int]], like: torch.Tensor, kind: str
    ) -> dict[int, torch.Tensor]:
        """Point to point in one ``batch_isend_irecv``: send ``outgoing[p]`` to each peer ``p`` and
        receive from each peer ``q`` of ``incoming`` a tensor of shape ``incoming[q]`` (dtype and
        device of ``like``). Returns the received tensors by peer.

        Every message must be matched: ``p`` in this rank's ``outgoing`` exactly when this rank is in
        ``p``'s ``incoming``, with the same shape. Records one call (when anything moves).
        """
        return self.start_exchange(outgoing, incoming, like, kind).wait()

    def start_exchange(
        self,
        outgoing: dict[int, torch.Tensor],
        incoming: dict[int, Sequence[int]],
        like: torch.Tensor,
        kind: str,
        tag: int = 0,
    ) -> InFlight:
        """:meth:`exchange`, posted now; :meth:`InFlight.wait` completes it and returns its result.

        The caller may compute in between (anything but other communication on this axis), so
        a peer that reaches the exchange later costs this rank less idle time. The ``outgoing``
        tensors must not be modified before the wait. ``tag`` tells apart exchanges in flight at once
        between the same ranks.
        """
        ops, received = [], {}
        sends = tuple(tensor.contiguous() for _, tensor in sorted(outgoing.items()))
        for peer, tensor in zip(sorted(outgoing), sends, strict=True):
            ops.append(dist.P2POp(dist.isend, tensor, group=self.group, tag=tag, group_peer=peer))
        for peer, shape in sorted(incoming.items()):
            received[peer] = torch.empty(tuple(shape), dtype=like.dtype, device=like.device)
            ops.append(dist.P2POp(dist.irecv, received[peer], group=self.group, tag=tag, group_peer=peer))
        if not ops:
            return InFlight([], received)
        flight = InFlight(list(dist.batch_isend_irecv(ops)), received, sends)
        sent = sum(nbytes(t) for t in sends)
        self.stats.record(self.axis, kind, sent, sum(nbytes(t) for t in received.values()))
        return flight

    def halo_exchange(
        self, tensor: torch.Tensor, dim: int, width: int, kind: str
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The neighbours' boundary slices of width ``width`` along ``dim``: ``(left, right)``.

        This rank sends its first ``width`` entries to the left neighbour and its last ``width``
        to the right one, and receives the left neighbour's last ``width`` entries and the right
        neighbour's first ``width``. At the ends of the axis the missing side is ``None``. Every
        rank must call this with the same ``width`` and the same shape outside ``dim``.
        """
        if self.size == 1:
            return None, None
        if width < 1 or tensor.shape[dim] < width:
            raise ValueError(f"halo width {width} does not fit a length of {tensor.shape[dim]}")
        shape = list(tensor.shape)
        shape[dim] = width
        neighbours = [p for p in (self.rank - 1, self.rank + 1) if 0 <= p < self.size]
        outgoing = {p: halo_slice(tensor, dim, width, toward_right=p > self.rank) for p in neighbours}
        received = self.exchange(outgoing, {p: shape for p in neighbours}, tensor, kind)
        return received.get(self.rank - 1), received.get(self.rank + 1)


@dataclass
class InFlight:
    """Communication posted but not yet completed: :meth:`wait` returns ``result`` (passed through
    ``finish`` when given) once the works are done. ``sends`` keeps the outgoing tensors alive."""

    works: list
    result: Any
    sends: tuple = ()
    finish: Callable[[Any], Any] | None = None

    def wait(self) -> Any:
        for work in self.works:
            work.wait()
        if self.finish is not None:
            self.result = self.finish(self.result)
        self.works, self.sends, self.finish = [], (), None
        return self.result


def halo_slice(tensor: torch.Tensor, dim: int, width: int, toward_right: bool) -> torch.Tensor:
    """The ``width`` entries along ``dim`` a rank sends to its right (last ones) or left (first ones) neighbour."""
    return tensor.narrow(dim, tensor.shape[dim] - width if toward_right else 0, width)


def combine_stats(
    comm: AxisComm, mean: torch.Tensor, var: torch.Tensor, count: int | torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-(batch, group) ``(mean, var, count)`` of the union of every rank's elements (Chan et al.).

    One all-gather of ``(n, mean, M2 = n var)`` in float64; ``m = sum n_r m_r / N`` and
    ``var = (sum M2_r + sum n_r (m_r - m)^2) / N``. Returns float32 mean and variance.
    """
    n = torch.full_like(mean, float(count), dtype=torch.float64) if not torch.is_tensor(count) else count
    if comm.size == 1:
        return mean, var, n
    stats = torch.stack([n, mean.double(), var.double() * n])
    counts, means, m2 = torch.stack(comm.all_gather(stats, kind)).unbind(1)
    total = counts.sum(0)
    mean64 = (counts * means).sum(0) / total
    var64 = (m2 + counts * (means - mean64) ** 2).sum(0) / total
    return mean64.float(), var64.float(), total
