"""Clip parallelism in exact mode equals the single-device UNet on the whole video (gloo, 2 and 4 ranks)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributed as dist
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from parallel.clip import (
    ClipParallelConfig,
    apply_clip_parallel,
    collectives_per_forward,
    min_clip_frames,
    split_frames,
)
from parallel.comm import AxisComm, CommStats, Traffic
from parallel.dual_scope import DualScopeConfig
from parallel.launch import run_local
from videogen.errors import ConfigError
from videogen.models.tiny import tiny_unet

TOL = 1e-4
T = 500
EXACT = ClipParallelConfig()


def _inputs(num_frames: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 * num_frames + batch)
    return torch.randn(batch, 4, num_frames, 16, 16, generator=gen), torch.randn(batch, 5, 16, generator=gen)


@functools.cache
def _single_device(num_frames: int, batch: int) -> torch.Tensor:
    sample, context = _inputs(num_frames, batch)
    with torch.no_grad():
        return tiny_unet(seed=0)(sample, T, context).sample


def _try_apply(unet, comm, frames, num_frames, config) -> str:
    try:
        apply_clip_parallel(unet, comm, frames, num_frames, config).remove()
    except ConfigError as exc:
        return str(exc)
    return "no error"


def _exact_worker(rank: int, world_size: int, cases: list[tuple[int, int]]) -> dict:
    unet = tiny_unet(seed=0)
    comm = AxisComm(dist.group.WORLD, "clip", CommStats())
    runs = []
    for num_frames, batch in cases:
        sample, context = _inputs(num_frames, batch)
        frames = split_frames(num_frames, world_size, min_clip_frames(EXACT))[rank]
        with torch.no_grad():
            before = unet(sample, T, context).sample
            handle = apply_clip_parallel(unet, comm, frames, num_frames, EXACT)
            comm.stats.reset()
            local = unet(sample[:, :, frames.start : frames.stop], T, context).sample
            stats = comm.stats.by_kind("clip")
            handle.remove()
            after = unet(sample, T, context).sample
        runs.append({"frames": frames, "local": local, "stats": stats, "restored": torch.equal(before, after)})
    errors = {}
    if world_size == 2:
        gap = [range(0, 5), range(6, 9)][rank]
        errors["gap"] = _try_apply(unet, comm, gap, 9, EXACT)
        errors["short"] = _try_apply(unet, comm, split_frames(6, 2)[rank], 6, EXACT)
        other = EXACT if rank == 0 else ClipParallelConfig(mode="dual_scope", dual_scope=DualScopeConfig(4, 4))
        errors["config"] = _try_apply(unet, comm, split_frames(9, 2)[rank], 9, other)
    return {"runs": runs, "errors": errors}


CASES = {2: [(9, 1), (9, 2)], 4: [(18, 2), (16, 1)]}


@pytest.fixture(scope="module")
def results() -> dict[int, list[dict]]:
    return {world: run_local(_exact_worker, world, CASES[world]) for world in CASES}


def _max_error(results, world: int, case: int) -> tuple[torch.Tensor, torch.Tensor]:
    num_frames, batch = CASES[world][case]
    runs = [r["runs"][case] for r in results[world]]
    assert [run["frames"] for run in runs] == split_frames(num_frames, world)
    return torch.cat([run["local"] for run in runs], dim=2), _single_device(num_frames, batch)


# ---------------------------------------------------------------------------------------------
# Frame splits and config (no processes)
# ---------------------------------------------------------------------------------------------


def test_split_frames_gives_contiguous_clips_longest_first():
    assert split_frames(18, 4) == [range(0, 5), range(5, 10), range(10, 14), range(14, 18)]
    assert split_frames(16, 4, min_frames=4) == [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]
    assert split_frames(3, 1, min_frames=8) == [range(0, 3)]


def test_split_with_fewer_frames_than_workers_is_a_config_error():
    with pytest.raises(ConfigError, match="fewer frames than workers"):
        split_frames(3, 4)
    with pytest.raises(ConfigError):
        split_frames(8, 0)


def test_split_with_clips_shorter_than_the_halo_is_a_config_error():
    with pytest.raises(ConfigError, match="at least 4"):
        split_frames(15, 4, min_frames=min_clip_frames(EXACT))
    dual = ClipParallelConfig(mode="dual_scope", dual_scope=DualScopeConfig(local_radius=8))
    with pytest.raises(ConfigError, match="at least 8"):
        split_frames(30, 4, min_frames=min_clip_frames(dual))


def test_config_rejects_unknown_modes_and_local_statistics_in_exact_mode():
    with pytest.raises(ConfigError):
        ClipParallelConfig(mode="ring")
    with pytest.raises(ConfigError):
        ClipParallelConfig(mode="dual_scope", groupnorm="none")
    with pytest.raises(ConfigError):
        ClipParallelConfig(mode="exact", groupnorm="local")


# ---------------------------------------------------------------------------------------------
# Exact mode against the single-device oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_exact_mode_two_workers_odd_frame_count_equals_single_device(results):
    out, expected = _max_error(results, 2, 0)
    assert (out - expected).abs().max().item() <= TOL


@pytest.mark.slow
def test_exact_mode_four_workers_uneven_split_with_cfg_batch_equals_single_device(results):
    out, expected = _max_error(results, 4, 0)  # 18 frames: clips of 5, 5, 4, 4; batch of 2
    assert (out - expected).abs().max().item() <= TOL


@pytest.mark.slow
def test_exact_mode_cfg_batch_of_two_equals_single_device(results):
    out, expected = _max_error(results, 2, 1)
    assert (out - expected).abs().max().item() <= TOL


@pytest.mark.slow
def test_exact_mode_four_workers_even_split_equals_single_device(results):
    out, expected = _max_error(results, 4, 1)
    assert (out - expected).abs().max().item() <= TOL


@pytest.mark.slow
def test_exact_mode_first_and_last_clips_equal_the_video_ends(results):
    for world in CASES:
        for case, (num_frames, batch) in enumerate(CASES[world]):
            expected = _single_device(num_frames, batch)
            for rank in (0, world - 1):
                run = results[world][rank]["runs"][case]
                ends = expected[:, :, run["frames"].start : run["frames"].stop]
                assert (run["local"] - ends).abs().max().item() <= TOL


def test_running_clips_independently_does_not_equal_the_whole_video():
    """The oracle is sensitive: without the halos and gathers the clips' outputs are far off."""
    sample, context = _inputs(18, 2)
    expected = _single_device(18, 2)
    unet = tiny_unet(seed=0)
    with torch.no_grad():
        parts = [unet(sample[:, :, c.start : c.stop], T, context).sample for c in split_frames(18, 4)]
    assert (torch.cat(parts, dim=2) - expected).abs().max().item() > 1e-2


def test_single_worker_without_a_process_group_equals_single_device():
    sample, context = _inputs(9, 2)
    unet = tiny_unet(seed=0)
    handle = apply_clip_parallel(unet, AxisComm(None, "clip"), range(0, 9), 9, EXACT)
    with torch.no_grad():
        out = unet(sample, T, context).sample
    handle.remove()
    assert (out - _single_device(9, 2)).abs().max().item() <= TOL


def test_models_clip_sharding_cannot_handle_are_config_errors():
    with pytest.raises(ConfigError, match="no temporal layers"):
        apply_clip_parallel(torch.nn.Linear(2, 2), AxisComm(None, "clip"), range(0, 8), 8, EXACT)
    motion = torch.nn.ModuleDict(
        {
            "temporal": TransformerTemporalModel(
                num_attention_heads=2,
                attention_head_dim=4,
                in_channels=8,
                norm_num_groups=4,
                positional_embeddings="sinusoidal",
                num_positional_embeddings=32,
            )
        }
    )
    with pytest.raises(ConfigError, match="positional embeddings"):
        apply_clip_parallel(motion, AxisComm(None, "clip"), range(0, 8), 8, EXACT)


# ---------------------------------------------------------------------------------------------
# Removal, symmetry of errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_removing_clip_parallel_restores_bit_identical_output(results):
    assert all(run["restored"] for world in results.values() for r in world for run in r["runs"])


def test_remove_puts_back_the_original_processors_and_forwards():
    unet = tiny_unet(seed=0)
    processors = dict(unet.attn_processors)
    handle = apply_clip_parallel(unet, AxisComm(None, "clip"), range(0, 8), 8, EXACT)
    temporal = [k for k in processors if "temp_attentions" in k or k.startswith("transformer_in")]
    assert temporal and all(type(unet.attn_processors[k]).__name__ == "ClipAttnProcessor" for k in temporal)
    assert all(unet.attn_processors[k] is processors[k] for k in processors if k not in temporal)
    with pytest.raises(RuntimeError, match="already installed"):
        apply_clip_parallel(unet, AxisComm(None, "clip"), range(0, 8), 8, EXACT)
    handle.remove()
    handle.remove()
    assert all(unet.attn_processors[k] is processors[k] for k in processors)
    for module in unet.modules():
        assert "forward" not in vars(module)


@pytest.mark.slow
def test_clips_that_do_not_tile_the_video_are_config_errors_on_every_rank(results):
    for r in results[2]:
        assert "do not tile" in r["errors"]["gap"]
        assert "shorter than the 4-frame temporal halo" in r["errors"]["short"]
        assert "disagree" in r["errors"]["config"]


# ---------------------------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------------------------


def test_collective_count_follows_the_module_structure():
    unet = tiny_unet(seed=0)
    assert collectives_per_forward(unet, EXACT) == {"conv_halo": 8, "groupnorm": 37, "attn_kv": 10}
    local = ClipParallelConfig(mode="dual_scope", groupnorm="local")
    assert collectives_per_forward(unet, local) == {"conv_halo": 8, "attn_scope": 10}


def _is_temporal(name: str) -> bool:
    return "temp_attentions" in name or name.startswith("transformer_in")


def _layer_sizes(num_frames: int, batch: int) -> dict[str, list[int]]:
    """Per temporal layer of one single-device forward, the elements of one frame it couples.

    ``conv``: one frame of a TemporalConvLayer input ``[B*F, C, H, W]``, i.e. ``B*C*H*W``;
    ``attn``: one frame of a temporal attention's keys, ``B*H*W`` rows times the inner width;
    ``groups``: the group count of every temporal GroupNorm.
    """
    unet = tiny_unet(seed=0)
    sizes: dict[str, list[int]] = {"conv": [], "attn": [], "groups": []}
    hooks = []
    for name, module in unet.named_modules():
        if isinstance(module, TemporalConvLayer):
            hooks.append(module.register_forward_pre_hook(lambda m, a: sizes["conv"].append(a[0].numel())))
            stages = (module.conv1, module.conv2, module.conv3, module.conv4)
            sizes["groups"] += [stage[0].num_groups for stage in stages]
        elif isinstance(module, Attention) and _is_temporal(name):
            hooks.append(
                module.register_forward_pre_hook(lambda m, a: sizes["attn"].append(a[0].shape[0] * m.to_k.out_features))
            )
        elif isinstance(module, torch.nn.GroupNorm) and _is_temporal(name):
            sizes["groups"].append(module.num_groups)
    sample, context = _inputs(num_frames, batch)
    with torch.no_grad():
        unet(sample, T, context)
    for hook in hooks:
        hook.remove()
    sizes["conv"] = [n // num_frames for n in sizes["conv"]]
    return sizes


@pytest.mark.slow
def test_exact_mode_records_the_calls_and_bytes_the_shapes_imply(results):
    world, case = 4, 0
    num_frames, batch = CASES[world][case]
    longest = max(len(c) for c in split_frames(num_frames, world))
    sizes = _layer_sizes(num_frames, batch)
    expected_calls = collectives_per_forward(tiny_unet(seed=0), EXACT)
    assert len(sizes["groups"]) == expected_calls["groupnorm"]
    for rank, r in enumerate(results[world]):
        stats = r["runs"][case]["stats"]
        assert {kind: t.calls for kind, t in stats.items()} == expected_calls
        sides = (rank > 0) + (rank < world - 1)
        conv = sum(sides * 4 * frame * 4 for frame in sizes["conv"])  # 4 frames a side, float32
        assert stats["conv_halo"] == Traffic(len(sizes["conv"]), conv, conv)
        kv = sum(2 * frame * longest * 4 for frame in sizes["attn"])  # K and V, padded to the longest clip
        assert stats["attn_kv"] == Traffic(len(sizes["attn"]), kv, (world - 1) * kv)
        gn = sum(3 * batch * groups * 8 for groups in sizes["groups"])  # (count, mean, M2) in float64
        assert stats["groupnorm"] == Traffic(len(sizes["groups"]), gn, (world - 1) * gn)
