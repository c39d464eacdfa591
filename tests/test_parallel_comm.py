"""Collectives and halo exchange over a mesh axis, and their byte/call accounting (gloo, 3 ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from parallel.comm import AxisComm, CommStats, Traffic
from parallel.launch import run_local

WORLD = 3
FRAMES = 5


def _frames(rank: int) -> torch.Tensor:
    """A [2, FRAMES, 3] float32 tensor whose entries name rank and frame: 100 * rank + frame."""
    values = 100.0 * rank + torch.arange(FRAMES, dtype=torch.float32)
    return values.view(1, FRAMES, 1).expand(2, FRAMES, 3).contiguous()


def _message(src: int, dst: int) -> torch.Tensor:
    """What rank ``src`` sends rank ``dst`` in the exchange test: a shape and a value unique to the pair."""
    return torch.full((src + 1, dst + 2), 10.0 * src + dst)


def _comm_worker(rank: int, world_size: int) -> dict:
    stats = CommStats()
    comm = AxisComm(dist.group.WORLD, "clip", stats)
    out: dict = {"rank": comm.rank, "size": comm.size}

    out["halo"] = comm.halo_exchange(_frames(rank), dim=1, width=2, kind="conv_halo")
    out["gather_uneven"] = comm.all_gather_uneven(
        torch.full((2, rank + 1), float(rank)), dim=1, sizes=[1, 2, 3], kind="attn_kv"
    )
    with_empty = [2, 0, 1]
    out["gather_with_empty"] = comm.all_gather_uneven(
        torch.full((with_empty[rank], 4), float(rank), dtype=torch.float64),
        dim=0,
        sizes=with_empty,
        kind="gather_empty",
    )
    peers = [p for p in range(world_size) if p != rank]
    outgoing = {p: _message(rank, p) for p in peers if (rank, p) != (1, 0)}
    incoming = {p: _message(p, rank).shape for p in peers if (p, rank) != (1, 0)}
    out["exchange"] = comm.exchange(outgoing, incoming, torch.zeros(()), kind="attn_scope")
    flight = comm.start_exchange(
        {p: _message(rank, p) * 1.0 for p in peers},  # temporaries: only the flight holds them
        {p: _message(p, rank).shape for p in peers},
        torch.zeros(()),
        kind="overlapped",
    )
    torch.randn(128, 128) @ torch.randn(128, 128)  # work done while the messages are in flight
    out["started"] = flight.wait()
    out["reduced"] = comm.all_reduce(torch.tensor([rank + 1.0, 10.0 * rank]), kind="groupnorm")
    out["gathered"] = comm.all_gather(torch.tensor([rank], dtype=torch.int64), kind="setup")
    out["stats"] = stats.snapshot()
    out["total"] = stats.total("clip")
    try:
        comm.halo_exchange(_frames(rank), dim=1, width=FRAMES + 1, kind="conv_halo")
    except ValueError as exc:
        out["too_wide"] = str(exc)
    stats.reset()
    out["after_reset"] = stats.snapshot()
    return out


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run_local(_comm_worker, WORLD)


@pytest.mark.slow
def test_halo_exchange_gives_each_rank_its_neighbours_boundary_frames(results):
    for rank, r in enumerate(results):
        left, right = r["halo"]
        if rank == 0:
            assert left is None
        else:
            assert torch.equal(left, _frames(rank - 1)[:, FRAMES - 2 :])
        if rank == WORLD - 1:
            assert right is None
        else:
            assert torch.equal(right, _frames(rank + 1)[:, :2])


@pytest.mark.slow
def test_halo_exchange_records_one_call_and_the_bytes_of_each_side(results):
    side = 2 * 2 * 3 * 4  # [2, width 2, 3] float32
    for rank, r in enumerate(results):
        sides = (rank > 0) + (rank < WORLD - 1)
        assert r["stats"]["clip"]["conv_halo"] == Traffic(1, sides * side, sides * side)


@pytest.mark.slow
def test_exchange_delivers_each_pairs_message_in_one_call(results):
    for rank, r in enumerate(results):
        expected = {p: _message(p, rank) for p in range(WORLD) if p != rank and (p, rank) != (1, 0)}
        assert sorted(r["exchange"]) == sorted(expected)
        assert all(torch.equal(r["exchange"][p], t) for p, t in expected.items())
        sent = sum(_message(rank, p).numel() * 4 for p in range(WORLD) if p != rank and (rank, p) != (1, 0))
        received = sum(t.numel() * 4 for t in expected.values())
        assert r["stats"]["clip"]["attn_scope"] == Traffic(1, sent, received)


@pytest.mark.slow
def test_started_exchange_delivers_after_work_in_between_and_records_one_call(results):
    for rank, r in enumerate(results):
        expected = {p: _message(p, rank) for p in range(WORLD) if p != rank}
        assert sorted(r["started"]) == sorted(expected)
        assert all(torch.equal(r["started"][p], t) for p, t in expected.items())
        sent = sum(_message(rank, p).numel() * 4 for p in expected)
        received = sum(t.numel() * 4 for t in expected.values())
        assert r["stats"]["clip"]["overlapped"] == Traffic(1, sent, received)


@pytest.mark.slow
def test_uneven_all_gather_concatenates_in_rank_order(results):
    expected = torch.cat([torch.full((2, n), float(rank)) for rank, n in enumerate([1, 2, 3])], dim=1)
    empty = torch.cat([torch.full((n, 4), float(rank), dtype=torch.float64) for rank, n in enumerate([2, 0, 1])])
    for r in results:
        assert torch.equal(r["gather_uneven"], expected)
        assert torch.equal(r["gather_with_empty"], empty)


@pytest.mark.slow
def test_all_gather_accounting_counts_the_padded_contribution(results):
    padded = 2 * 3 * 4  # every rank sends [2, 3] float32 after padding to the longest
    padded_empty = 2 * 4 * 8  # [2, 4] float64
    for r in results:
        kinds = r["stats"]["clip"]
        assert kinds["attn_kv"] == Traffic(1, padded, (WORLD - 1) * padded)
        assert kinds["gather_empty"] == Traffic(1, padded_empty, (WORLD - 1) * padded_empty)
        assert kinds["setup"] == Traffic(1, 8, (WORLD - 1) * 8)


@pytest.mark.slow
def test_all_reduce_sums_and_records_the_tensor_bytes(results):
    for r in results:
        assert torch.equal(r["reduced"], torch.tensor([6.0, 30.0]))
        assert r["stats"]["clip"]["groupnorm"] == Traffic(1, 8, 8)
        assert [int(t) for t in r["gathered"]] == [0, 1, 2]


@pytest.mark.slow
def test_totals_add_up_and_reset_clears(results):
    for r in results:
        kinds = r["stats"]["clip"]
        assert r["total"] == sum(kinds.values(), Traffic())
        assert r["total"].calls == 7
        assert r["after_reset"] == {}


@pytest.mark.slow
def test_halo_wider_than_the_clip_is_refused(results):
    assert all("does not fit" in r["too_wide"] for r in results)


def test_single_worker_axis_communicates_and_records_nothing():
    stats = CommStats()
    comm = AxisComm(None, "clip", stats)
    x = torch.randn(2, 3, 4)
    assert (comm.rank, comm.size) == (0, 1)
    assert comm.halo_exchange(x, dim=1, width=8, kind="conv_halo") == (None, None)
    assert comm.all_gather(x, kind="attn_kv")[0] is x
    assert comm.all_gather_uneven(x, dim=1, sizes=[3], kind="attn_kv") is x
    assert comm.all_reduce(x, kind="groupnorm") is x
    assert stats.snapshot() == {}
    assert comm.device == torch.device("cpu")


def test_uneven_gather_rejects_sizes_that_do_not_match_the_tensor():
    comm = AxisComm(None, "clip")
    with pytest.raises(ValueError, match="do not match"):
        comm.all_gather_uneven(torch.zeros(2, 3), dim=1, sizes=[2], kind="attn_kv")


def test_every_byte_between_render_workers_goes_through_the_accounted_communicator():
    """Only parallel/comm.py moves tensors (process-group set-up, DDP training and barriers aside), so
    the traffic every record and `videogen plan` report is complete."""
    import re
    from pathlib import Path

    moving = re.compile(
        r"dist\.(all_reduce|all_gather\w*|gather\w*|broadcast\w*|reduce\w*|scatter\w*|isend|irecv|"
        r"send|recv|P2POp|batch_isend_irecv|all_to_all\w*)\b"
    )
    root = Path(__file__).resolve().parents[1] / "parallel"
    exempt = {"comm.py", "train_ddp.py"}
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(root.glob("*.py"))
        if path.name not in exempt
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if moving.search(line)
    ]
    assert offenders == []
