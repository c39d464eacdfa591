"""Dual-scope attention: its masks and schedule, its single-process reference, and clip-parallel
dual-scope mode against that reference (gloo, 2 and 3 ranks, both GroupNorm variants)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.distributed as dist
from diffusers.models.attention_processor import Attention

from parallel.clip import (
    ClipParallelConfig,
    apply_clip_parallel,
    collectives_per_forward,
    min_clip_frames,
    split_frames,
)
from parallel.comm import AxisComm, CommStats, Traffic
from parallel.dual_scope import (
    DualScopeConfig,
    apply_dual_scope_reference,
    dual_scope_mask,
    global_frame_indices,
    scope_biases,
)
from parallel.launch import run_local
from videogen.errors import ConfigError
from videogen.models.tiny import tiny_unet

TOL = 1e-4
EARLY, LATE = 900, 500  # either side of the default switch at t = 800


def _inputs(num_frames: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 * num_frames + batch)
    return torch.randn(batch, 4, num_frames, 16, 16, generator=gen), torch.randn(batch, 5, 16, generator=gen)


@functools.cache
def _reference(num_frames: int, batch: int, config: ClipParallelConfig, world: int, t: int) -> torch.Tensor:
    sample, context = _inputs(num_frames, batch)
    unet = tiny_unet(seed=0)
    clips = split_frames(num_frames, world) if config.groupnorm == "local" else None
    handle = apply_dual_scope_reference(unet, config.dual_scope, clips)
    with torch.no_grad():
        out = unet(sample, t, context).sample
    handle.remove()
    return out


# ---------------------------------------------------------------------------------------------
# The mathematics (no processes)
# ---------------------------------------------------------------------------------------------


def test_global_frames_are_spread_uniformly_over_the_whole_video():
    assert global_frame_indices(48, 16) == list(range(1, 48, 3))
    assert global_frame_indices(20, 5) == [2, 6, 10, 14, 18]
    assert global_frame_indices(10, 16) == list(range(10))
    for frames, count in [(17, 16), (100, 7), (33, 5)]:
        picked = global_frame_indices(frames, count)
        gaps = {b - a for a, b in zip(picked, picked[1:], strict=False)}
        assert len(picked) == count and len(set(picked)) == count
        assert max(gaps) - min(gaps) <= 1
        assert picked[0] + picked[-1] in (frames - 1, frames)  # centred: as far from both ends


def test_scope_bias_favours_global_frames_early_and_the_local_window_late():
    config = DualScopeConfig()
    assert scope_biases(config, 999) == (0.0, 10.0)
    assert scope_biases(config, 800) == (0.0, 10.0)
    assert scope_biases(config, 799) == (10.0, 0.0)
    assert scope_biases(DualScopeConfig(switch_timestep=500, scope_bias=3.0), 600) == (0.0, 3.0)


def test_mask_is_a_band_that_stops_at_the_video_ends():
    mask = dual_scope_mask(range(0, 3), range(0, 5), [1, 7], radius=2, local_bias=1.0, global_bias=5.0)
    inf = -math.inf
    assert mask.tolist() == [
        [1, 1, 1, inf, inf, 5, 5],
        [1, 1, 1, 1, inf, 5, 5],
        [1, 1, 1, 1, 1, 5, 5],
    ]
    interior = dual_scope_mask(range(10, 12), range(6, 16), [], radius=2, local_bias=0.0, global_bias=0.0)
    assert (interior[0] == 0).nonzero().flatten().tolist() == [2, 3, 4, 5, 6]  # frames 8..12
    assert (interior[1] == 0).nonzero().flatten().tolist() == [3, 4, 5, 6, 7]  # frames 9..13


def test_config_rejects_empty_scopes():
    with pytest.raises(ConfigError):
        DualScopeConfig(local_radius=0)
    with pytest.raises(ConfigError):
        DualScopeConfig(global_frames=0)
    with pytest.raises(ConfigError):
        DualScopeConfig(scope_bias=math.inf)


def test_reference_attention_equals_a_per_query_softmax_over_the_two_scopes():
    """The oracle's oracle: one temporal attention against an explicit loop over queries."""
    config = DualScopeConfig(local_radius=3, global_frames=4, scope_bias=2.0)
    unet = tiny_unet(seed=0)
    name = "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1"
    attn = unet.get_submodule(name)
    seen = {}
    hook = attn.register_forward_hook(lambda m, a, out: seen.update(x=a[0], out=out))
    handle = apply_dual_scope_reference(unet, config)
    sample, context = _inputs(11, 1)
    with torch.no_grad():
        unet(sample, LATE, context)
        x = seen["x"]
        frames = x.shape[1]
        local_bias, global_bias = scope_biases(config, LATE)
        glob = global_frame_indices(frames, config.global_frames)
        heads, d = attn.heads, attn.to_q.out_features // attn.heads
        q, k, v = (p(x).view(x.shape[0], frames, heads, d) for p in (attn.to_q, attn.to_k, attn.to_v))
        out = torch.zeros_like(q)
        for i in range(frames):
            keys = [j for j in range(frames) if abs(i - j) <= config.local_radius] + glob
            bias = torch.tensor([local_bias] * (len(keys) - len(glob)) + [global_bias] * len(glob))
            logits = torch.einsum("nhd,nkhd->nhk", q[:, i], k[:, keys]) / math.sqrt(d) + bias
            out[:, i] = torch.einsum("nhk,nkhd->nhd", logits.softmax(-1), v[:, keys])
        expected = attn.to_out[0](out.reshape(x.shape[0], frames, heads * d))
    hook.remove()
    handle.remove()
    assert (seen["out"] - expected).abs().max().item() <= 1e-5


def test_dual_scope_differs_from_full_attention_and_between_phases():
    config = ClipParallelConfig(mode="dual_scope", dual_scope=DualScopeConfig(local_radius=2, global_frames=3))
    sample, context = _inputs(12, 1)
    with torch.no_grad():
        full = tiny_unet(seed=0)(sample, LATE, context).sample
    early, late = _reference(12, 1, config, 1, EARLY), _reference(12, 1, config, 1, LATE)
    assert (late - full).abs().max().item() > 1e-2
    assert (early - late).abs().max().item() > 1e-2


def test_reference_with_one_clip_has_the_same_local_and_whole_video_statistics():
    exact = ClipParallelConfig(mode="dual_scope", dual_scope=DualScopeConfig(local_radius=4, global_frames=5))
    local = ClipParallelConfig(mode="dual_scope", groupnorm="local", dual_scope=exact.dual_scope)
    assert (_reference(14, 2, local, 1, LATE) - _reference(14, 2, exact, 1, LATE)).abs().max().item() <= 1e-5
    assert (_reference(14, 2, local, 2, LATE) - _reference(14, 2, exact, 2, LATE)).abs().max().item() > 1e-3


def test_timestep_is_read_from_the_unet_call_and_must_be_shared_by_the_batch():
    config = ClipParallelConfig(mode="dual_scope", dual_scope=DualScopeConfig(local_radius=4, global_frames=4))
    unet = tiny_unet(seed=0)
    handle = apply_clip_parallel(unet, AxisComm(None, "clip"), range(0, 8), 8, config)
    sample, context = _inputs(8, 2)
    with torch.no_grad():
        unet(sample, torch.tensor(EARLY), context)
        assert handle.timestep == EARLY
        unet(sample, timestep=torch.tensor([LATE, LATE]), encoder_hidden_states=context)
        assert handle.timestep == LATE
        with pytest.raises(ValueError, match="one timestep"):
            unet(sample, torch.tensor([EARLY, LATE]), context)
    handle.remove()


def test_single_worker_dual_scope_equals_the_reference():
    config = ClipParallelConfig(mode="dual_scope", dual_scope=DualScopeConfig(local_radius=3, global_frames=4))
    sample, context = _inputs(10, 2)
    unet = tiny_unet(seed=0)
    handle = apply_clip_parallel(unet, AxisComm(None, "clip"), range(0, 10), 10, config)
    with torch.no_grad():
        out = unet(sample, EARLY, context).sample
    handle.remove()
    assert (out - _reference(10, 2, config, 1, EARLY)).abs().max().item() <= TOL


# ---------------------------------------------------------------------------------------------
# Clip-parallel dual-scope mode against the reference
# ---------------------------------------------------------------------------------------------

SMALL = DualScopeConfig(local_radius=4, global_frames=5)
CASES = {
    # world: [(frames, batch, config)]; 20 frames over 3 is 7, 7, 6
    3: [
        (20, 2, ClipParallelConfig(mode="dual_scope", groupnorm="exact", dual_scope=SMALL)),
        (20, 2, ClipParallelConfig(mode="dual_scope", groupnorm="local", dual_scope=SMALL)),
    ],
    # the paper's defaults: radius 8, 16 global frames; 17 frames over 2 is 9, 8
    2: [
        (17, 1, ClipParallelConfig(mode="dual_scope", groupnorm="exact")),
        (17, 1, ClipParallelConfig(mode="dual_scope", groupnorm="local")),
    ],
}


def _dual_worker(rank: int, world_size: int, cases: list) -> list[dict]:
    unet = tiny_unet(seed=0)
    comm = AxisComm(dist.group.WORLD, "clip", CommStats())
    runs = []
    for num_frames, batch, config in cases:
        sample, context = _inputs(num_frames, batch)
        frames = split_frames(num_frames, world_size, min_clip_frames(config))[rank]
        handle = apply_clip_parallel(unet, comm, frames, num_frames, config)
        outputs, stats = {}, {}
        for t in (EARLY, LATE):
            comm.stats.reset()
            with torch.no_grad():
                outputs[t] = unet(sample[:, :, frames.start : frames.stop], t, context).sample
            stats[t] = comm.stats.by_kind("clip")
        handle.remove()
        runs.append({"frames": frames, "out": outputs, "stats": stats})
    return runs


@pytest.fixture(scope="module")
def results() -> dict[int, list[list[dict]]]:
    return {world: run_local(_dual_worker, world, CASES[world]) for world in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("world", sorted(CASES))
@pytest.mark.parametrize("case", [0, 1], ids=["exact_groupnorm", "local_groupnorm"])
@pytest.mark.parametrize("t", [EARLY, LATE], ids=["global_phase", "local_phase"])
def test_dual_scope_mode_equals_the_single_process_reference(results, world, case, t):
    num_frames, batch, config = CASES[world][case]
    runs = [r[case] for r in results[world]]
    assert [run["frames"] for run in runs] == split_frames(num_frames, world)
    out = torch.cat([run["out"][t] for run in runs], dim=2)
    assert (out - _reference(num_frames, batch, config, world, t)).abs().max().item() <= TOL


@pytest.mark.slow
def test_dual_scope_mode_makes_one_exchange_per_attention_with_the_expected_bytes(results):
    world, (num_frames, batch, config) = 3, CASES[3][1]
    unet = tiny_unet(seed=0)
    clips = split_frames(num_frames, world)
    glob = global_frame_indices(num_frames, config.dual_scope.global_frames)
    owned = [sum(1 for g in glob if g in c) for c in clips]
    rows = _temporal_attention_rows(unet, num_frames, batch)
    radius = config.dual_scope.local_radius
    for rank, r in enumerate(results[world]):
        for t in (EARLY, LATE):
            stats = r[1]["stats"][t]
            assert {kind: s.calls for kind, s in stats.items()} == collectives_per_forward(unet, config)
            sides = (rank > 0) + (rank < world - 1)
            others = sum(owned) - owned[rank]
            # keys and values, float32: radius frames to/from each neighbour, own global frames to every peer
            sent = sum(2 * n * 4 * (radius * sides + owned[rank] * (world - 1)) for n in rows)
            received = sum(2 * n * 4 * (radius * sides + others) for n in rows)
            assert stats["attn_scope"] == Traffic(len(rows), sent, received)
            assert "groupnorm" not in stats


def _temporal_attention_rows(unet, num_frames: int, batch: int) -> list[int]:
    """For every temporal attention, ``B*H*W`` token rows times the key width: one frame of keys."""
    rows: list[int] = []
    hooks = [
        module.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0] * m.to_k.out_features))
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and ("temp_attentions" in name or name.startswith("transformer_in"))
    ]
    sample, context = _inputs(num_frames, batch)
    with torch.no_grad():
        unet(sample, LATE, context)
    for hook in hooks:
        hook.remove()
    return rows
