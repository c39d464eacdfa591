"""The parallel plan and its named DeviceMesh (gloo, 4 ranks as cfg=2 x clip=2)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from parallel.comm import AxisComm, CommStats
from parallel.launch import run_local
from parallel.mesh import AXES, ParallelPlan, build_mesh
from videogen.errors import ConfigError


def test_axes_are_ordered_with_the_chattiest_innermost():
    assert AXES == ("step", "cfg", "clip", "patch")
    assert ParallelPlan(clip=3, patch=2, step=1, cfg=2).shape == (1, 2, 3, 2)


def test_world_size_is_the_product_of_the_axes():
    assert ParallelPlan().world_size == 1
    assert ParallelPlan(clip=4, cfg=2, step=3, patch=2).world_size == 48


def test_coords_and_rank_of_are_inverse_row_major():
    plan = ParallelPlan(clip=3, patch=2, step=2, cfg=2)
    seen = set()
    for rank in range(plan.world_size):
        coords = plan.coords(rank)
        assert plan.rank_of(**coords) == rank
        seen.add(tuple(coords.values()))
    assert len(seen) == plan.world_size
    assert plan.coords(1) == {"step": 0, "cfg": 0, "clip": 0, "patch": 1}
    assert plan.coords(2) == {"step": 0, "cfg": 0, "clip": 1, "patch": 0}


@pytest.mark.parametrize("sizes", [{"clip": 0}, {"patch": -1}, {"step": 1.5}, {"cfg": 3}, {"clip": True}])
def test_bad_axis_sizes_are_config_errors(sizes):
    with pytest.raises(ConfigError):
        ParallelPlan(**sizes)


def test_world_size_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="needs 4 workers, not 3"):
        ParallelPlan(clip=2, cfg=2).check_world_size(3)


def test_coords_reject_ranks_outside_the_world():
    with pytest.raises(ValueError):
        ParallelPlan(clip=2).coords(2)
    with pytest.raises(ValueError):
        ParallelPlan(clip=2).rank_of(clip=2)
    with pytest.raises(ValueError):
        ParallelPlan(clip=2).rank_of(time=0)


def _mesh_worker(rank: int, world_size: int) -> dict:
    plan = ParallelPlan(clip=2, cfg=2)
    mesh = build_mesh(plan)
    stats = CommStats()
    out = {"coords": {axis: mesh.get_local_rank(axis) for axis in AXES}}
    for axis in ("clip", "cfg", "patch"):
        comm = AxisComm.from_mesh(mesh, axis, stats)
        members = comm.all_gather(torch.tensor([rank]), kind="probe")
        out[axis] = (comm.rank, comm.size, sorted(int(m) for m in members))
    out["stats"] = stats.snapshot()
    try:
        build_mesh(ParallelPlan(clip=3))
    except ConfigError as exc:
        out["mismatch"] = str(exc)
    dist.barrier()
    return out


@pytest.mark.slow
def test_mesh_axes_group_the_ranks_the_plan_says():
    plan = ParallelPlan(clip=2, cfg=2)
    results = run_local(_mesh_worker, 4)
    for rank, r in enumerate(results):
        coords = plan.coords(rank)
        assert r["coords"] == coords
        clip_peers = sorted(plan.rank_of(cfg=coords["cfg"], clip=c) for c in range(2))
        cfg_peers = sorted(plan.rank_of(cfg=c, clip=coords["clip"]) for c in range(2))
        assert r["clip"] == (coords["clip"], 2, clip_peers)
        assert r["cfg"] == (coords["cfg"], 2, cfg_peers)
        assert r["patch"] == (0, 1, [rank])
        # only the axes with more than one rank communicate, and each records under its own name
        assert set(r["stats"]) == {"clip", "cfg"}
        assert r["stats"]["clip"]["probe"].calls == 1
        assert "needs 3 workers, not 4" in r["mismatch"]
