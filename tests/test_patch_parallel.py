"""Patch parallelism against single-device oracles: the UNet, the pipeline, the VAE (gloo, 2 and 4 ranks)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from parallel.clip import ClipParallelConfig
from parallel.comm import AxisComm, CommStats, Traffic
from parallel.launch import run_local
from parallel.mesh import ParallelPlan
from parallel.patch import (
    DEFAULT_PORTION,
    PatchParallelConfig,
    PatchState,
    apply_patch_parallel,
    band_rows,
    install_spatial,
    split_rows,
    traffic_per_step,
    unet_spatial_modules,
)
from parallel.patch_vae import decode_method, decode_patch_chunks, frame_share
from parallel.testing import mesh_latents_worker
from videogen.config import load_job
from videogen.decode import decode_chunks
from videogen.errors import ConfigError
from videogen.models.layers import find_spatial_modules
from videogen.models.loader import load_bundle
from videogen.models.tiny import tiny_unet, tiny_vae
from videogen.pipeline import WorkerSlot, denoise

TOL = 1e-4
T = 500
SYNC = PatchParallelConfig(mode="sync", groupnorm="exact")


def _inputs(hw: tuple[int, int], batch: int = 2, frames: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
    return torch.randn(batch, 4, frames, *hw, generator=gen), torch.randn(batch, 5, 16, generator=gen)


@functools.cache
def _single_device(hw: tuple[int, int]) -> torch.Tensor:
    sample, context = _inputs(hw)
    with torch.no_grad():
        return tiny_unet(seed=0)(sample, T, context).sample


# ---------------------------------------------------------------------------------------------
# UNet-level runs: each case calls the UNet `calls` times with the same inputs
# ---------------------------------------------------------------------------------------------

CASES = {
    2: [
        ("h", (16, 8), SYNC, 1),
        ("w", (6, 16), SYNC, 1),
        ("displaced_full", (16, 8), PatchParallelConfig(portion="all", warmup_steps=1), 3),
    ],
    4: [
        ("h", (16, 16), SYNC, 1),
        ("displaced_full", (16, 16), PatchParallelConfig(portion="all", warmup_steps=2), 3),
        ("pcpp", (16, 16), PatchParallelConfig(portion=0.25, warmup_steps=1, groupnorm="exact"), 2),
    ],
}
BLOCK_PORTIONS = (0.25, 0.5)


def _try_apply(unet, comm, split, config) -> str:
    try:
        apply_patch_parallel(unet, comm, split, config).remove()
    except ConfigError as exc:
        return str(exc)
    return "no error"


def _vae_bands(rank: int, split: str) -> torch.Tensor | None:
    comm = AxisComm(dist.group.WORLD, "patch", CommStats())
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    frames = list(decode_patch_chunks(tiny_vae(), latents, comm, chunk=2, split=split))
    return torch.cat(frames) if rank == 0 else None


def _block() -> tuple[Transformer2DModel, torch.Tensor, torch.Tensor]:
    """A spatial transformer (GroupNorm, self-attention, cross-attention) and its inputs, 16x16 tokens."""
    torch.manual_seed(4)
    block = Transformer2DModel(2, 8, in_channels=16, norm_num_groups=4, cross_attention_dim=16).eval()
    gen = torch.Generator().manual_seed(5)
    return block, torch.randn(6, 16, 16, 16, generator=gen), torch.randn(6, 5, 16, generator=gen)


def _block_run(rank: int, comm: AxisComm, portion: float) -> list[torch.Tensor]:
    """Two calls with the same input (synchronous, then displaced); only self-attention exchanges."""
    block, x, context = _block()
    split = split_rows((16, 16), comm.size, 1)
    state = PatchState(comm, split, PatchParallelConfig(portion=portion, warmup_steps=1, groupnorm="exact"))
    undo = install_spatial(find_spatial_modules(block), state)
    outs = []
    with torch.no_grad():
        for _ in range(2):
            state.begin_call()
            outs.append(block(split.take(x, rank), encoder_hidden_states=context, return_dict=False)[0])
    state.drain()
    for fn in reversed(undo):
        fn()
    return outs


def _unet_worker(rank: int, world_size: int, cases: list) -> dict:
    comm = AxisComm(dist.group.WORLD, "patch", CommStats())
    runs = {}
    for name, hw, config, calls in cases:
        unet = tiny_unet(seed=0)
        sample, context = _inputs(hw)
        split = split_rows(hw, world_size, 2, config.split)
        with torch.no_grad():
            before = unet(sample, T, context).sample
            handle = apply_patch_parallel(unet, comm, split, config)
            outs, stats, sync = [], [], []
            for _ in range(calls):
                comm.stats.reset()
                outs.append(unet(split.take(sample, rank), T, context).sample)
                stats.append(comm.stats.by_kind("patch"))
                sync.append(handle.synchronous)
            handle.remove()
            after = unet(sample, T, context).sample
        runs[name] = {
            "dim": split.dim,
            "outs": outs,
            "stats": stats,
            "sync": sync,
            "restored": torch.equal(before, after),
        }
    if world_size == 4:
        for portion in BLOCK_PORTIONS:
            runs[f"block_{portion}"] = _block_run(rank, comm, portion)
    errors = {}
    if world_size == 2:
        unet, split = tiny_unet(seed=0), split_rows((16, 8), 2, 2)
        other = SYNC if rank == 0 else PatchParallelConfig(portion=0.5)
        errors["config"] = _try_apply(unet, comm, split, other)
        errors["parts"] = _try_apply(unet, comm, split_rows((16, 8), 4, 2), SYNC)
        with torch.no_grad(), pytest.raises(ValueError, match="expects its band"):
            handle = apply_patch_parallel(unet, comm, split, SYNC)
            try:
                sample, context = _inputs((16, 8))
                unet(sample, T, context)
            finally:
                handle.remove()
        errors["whole_frame"] = "raised"
        runs["vae_h"] = _vae_bands(rank, "h")
        runs["vae_w"] = _vae_bands(rank, "w")
    return {"runs": runs, "errors": errors}


@pytest.fixture(scope="module")
def unet_results() -> dict[int, list[dict]]:
    return {world: run_local(_unet_worker, world, CASES[world]) for world in CASES}


def _joined(results, world: int, name: str, call: int = 0) -> torch.Tensor:
    runs = [r["runs"][name] for r in results[world]]
    axis = -2 if runs[0]["dim"] == "h" else -1
    return torch.cat([run["outs"][call] for run in runs], dim=axis)


def _case(world: int, name: str):
    return next(c for c in CASES[world] if c[0] == name)


@pytest.mark.slow
@pytest.mark.parametrize(("world", "name"), [(2, "h"), (2, "w"), (4, "h")])
def test_synchronous_patch_unet_equals_single_device(unet_results, world, name):
    hw = _case(world, name)[1]
    assert unet_results[world][0]["runs"][name]["dim"] == name
    assert (_joined(unet_results, world, name) - _single_device(hw)).abs().max().item() <= TOL


@pytest.mark.slow
@pytest.mark.parametrize(("world", "name"), [(2, "displaced_full"), (4, "displaced_full")])
def test_displaced_full_conditioning_with_unchanged_inputs_equals_single_device(unet_results, world, name):
    """Stale K/V, halos and corrected GroupNorm statistics equal fresh ones when the inputs do not change."""
    hw, config, calls = _case(world, name)[1:]
    assert unet_results[world][0]["runs"][name]["sync"] == [i < config.warmup_steps for i in range(calls)]
    for call in range(calls):
        assert (_joined(unet_results, world, name, call) - _single_device(hw)).abs().max().item() <= TOL


class _BandedAttention:
    """Single-device PCPP reference: a query in row band ``i`` sees it plus ``band_rows`` rows of each neighbour."""

    def __init__(self, height: int, parts: int, portion: float):
        self.height, self.parts, self.portion = height, parts, portion

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        b, tokens, _ = hidden_states.shape
        local = self.height // self.parts
        extra = max(1, min(local, math.ceil(self.portion * local)))
        rows = torch.arange(tokens) // (tokens // self.height)
        band = rows // local
        lo, hi = band * local - extra, (band + 1) * local + extra
        visible = (rows[None, :] >= lo[:, None]) & (rows[None, :] < hi[:, None])
        mask = torch.zeros(tokens, tokens).masked_fill(~visible, -math.inf)

        def heads(x):
            return x.view(b, tokens, attn.heads, -1).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, tokens, -1)))
        return out / attn.rescale_output_factor


@pytest.mark.slow
@pytest.mark.parametrize("portion", BLOCK_PORTIONS)
def test_pcpp_self_attention_equals_banded_attention_reference(unet_results, portion):
    """With an unchanged input the stale neighbour bands are the fresh ones: PCPP is banded attention."""
    block, x, context = _block()
    with torch.no_grad():
        exact = block(x, encoder_hidden_states=context, return_dict=False)[0]
        block.transformer_blocks[0].attn1.set_processor(_BandedAttention(16, 4, portion))
        banded = block(x, encoder_hidden_states=context, return_dict=False)[0]
    calls = [torch.cat([r["runs"][f"block_{portion}"][i] for r in unet_results[4]], dim=-2) for i in range(2)]
    assert (calls[0] - exact).abs().max().item() <= TOL
    assert (calls[1] - banded).abs().max().item() <= TOL
    assert (banded - exact).abs().max().item() > 1e-2  # the band is a real restriction


@pytest.mark.slow
def test_pcpp_unet_is_exact_while_synchronous_and_close_after(unet_results):
    hw = _case(4, "pcpp")[1]
    assert (_joined(unet_results, 4, "pcpp", 0) - _single_device(hw)).abs().max().item() <= TOL
    error = (_joined(unet_results, 4, "pcpp", 1) - _single_device(hw)).abs().max().item()
    assert 1e-3 < error < 0.5


@pytest.mark.slow
def test_removing_patch_parallel_restores_bit_identical_output(unet_results):
    runs = [
        run
        for world in unet_results.values()
        for r in world
        for k, run in r["runs"].items()
        if k.startswith(("h", "w", "displaced", "pcpp"))
    ]
    assert runs and all(run["restored"] for run in runs)


def test_remove_puts_back_the_original_processors_and_forwards():
    unet = tiny_unet(seed=0)
    processors = dict(unet.attn_processors)
    handle = apply_patch_parallel(unet, AxisComm(None, "patch"), split_rows((16, 8), 1, 2), SYNC)
    spatial = {f"{path}.processor" for path, _ in handle.modules.attentions}
    assert spatial == {k for k in processors if ".attentions." in k and k.endswith("attn1.processor")}
    assert all(type(unet.attn_processors[k]).__name__ == "PatchAttnProcessor" for k in spatial)
    assert all(unet.attn_processors[k] is processors[k] for k in processors if k not in spatial)
    with pytest.raises(RuntimeError, match="already installed"):
        apply_patch_parallel(unet, AxisComm(None, "patch"), split_rows((16, 8), 1, 2), SYNC)
    handle.remove()
    handle.remove()
    assert all(unet.attn_processors[k] is processors[k] for k in processors)
    assert all("forward" not in vars(module) for module in unet.modules())


def test_calls_are_counted_and_reset_restarts_the_warm_up():
    unet = tiny_unet(seed=0)
    config = PatchParallelConfig(warmup_steps=2)
    handle = apply_patch_parallel(unet, AxisComm(None, "patch"), split_rows((16, 8), 1, 2), config)
    sample, context = _inputs((16, 8))
    seen = []
    with torch.no_grad():
        for _ in range(3):
            out = unet(sample, T, context).sample
            seen.append((handle.calls, handle.synchronous))
        handle.reset()
        unet(sample, T, context)
        seen.append((handle.calls, handle.synchronous))
    handle.remove()
    assert seen == [(1, True), (2, True), (3, False), (1, True)]
    assert (out - _single_device((16, 8))).abs().max().item() <= TOL  # one worker: nothing is stale


def test_temporal_attention_is_never_wrapped():
    modules = unet_spatial_modules(tiny_unet(seed=0))
    paths = [p for p, _ in modules.attentions]
    assert len(paths) == 4 and not any("temp_attentions" in p or p.startswith("transformer_in") for p in paths)
    assert all(not attn.is_cross_attention for _, attn in modules.attentions)
    norms = [p for p, _ in modules.norms]
    assert "down_blocks.0.temp_convs.0.conv1.0" in norms and "transformer_in.norm" in norms


@pytest.mark.slow
def test_mismatched_configs_and_splits_are_config_errors_on_every_rank(unet_results):
    for r in unet_results[2]:
        assert "disagree" in r["errors"]["config"]
        assert "4 bands but the patch axis has 2 workers" in r["errors"]["parts"]
        assert r["errors"]["whole_frame"] == "raised"


# ---------------------------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------------------------


def _layer_shapes(hw: tuple[int, int]) -> dict[str, list]:
    """Input shapes of every 3x3 conv (with its stride), GroupNorm (with groups) and spatial self-attention."""
    unet = tiny_unet(seed=0)
    shapes: dict[str, list] = {"conv": [], "norm": [], "attn": []}
    hooks = []
    for _, module in unet.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
            hooks.append(module.register_forward_pre_hook(lambda m, a: shapes["conv"].append((a[0].shape, m.stride))))
        elif isinstance(module, torch.nn.GroupNorm):
            hooks.append(
                module.register_forward_pre_hook(lambda m, a: shapes["norm"].append((a[0].shape, m.num_groups)))
            )
    for _, attn in unet_spatial_modules(unet).attentions:
        hooks.append(
            attn.register_forward_pre_hook(lambda m, a: shapes["attn"].append((a[0].shape, m.to_k.out_features)))
        )
    sample, context = _inputs(hw)
    with torch.no_grad():
        unet(sample, T, context)
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.slow
def test_synchronous_call_records_the_bytes_the_shapes_imply(unet_results):
    """Two workers split rows: each 3x3 conv sends one row across the cut (a stride-2 conv only downward)."""
    shapes = _layer_shapes((16, 8))
    row = [(s[0] * s[1] * s[3] * 4, stride[0]) for s, stride in shapes["conv"]]
    all_rows, stride1_rows = sum(b for b, _ in row), sum(b for b, s in row if s == 1)
    gn = sum(2 * s[0] * groups * 8 for s, groups in shapes["norm"])
    kv = sum(2 * s[0] * (s[1] // 2) * inner * 4 for s, inner in shapes["attn"])
    for rank, r in enumerate(unet_results[2]):
        stats = r["runs"]["h"]["stats"][0]
        sent, received = (all_rows, stride1_rows) if rank == 0 else (stride1_rows, all_rows)
        assert stats["conv_halo"] == Traffic(len(row), sent, received)
        assert stats["groupnorm"] == Traffic(len(shapes["norm"]), gn, gn)
        assert stats["attn_kv"] == Traffic(len(shapes["attn"]), kv, kv)
        assert set(stats) == {"conv_halo", "groupnorm", "attn_kv"}


@pytest.mark.slow
def test_pcpp_sends_only_the_neighbour_bands(unet_results):
    """Displaced PCPP: per self-attention, ``band_rows`` rows of K and V to each neighbour, nothing else."""
    hw, config = _case(4, "pcpp")[1:3]  # a square latent: every level is square too
    shapes = _layer_shapes(hw)
    per_side = 0
    for s, inner in shapes["attn"]:
        side = math.isqrt(s[1])
        per_side += 2 * s[0] * band_rows(config.portion, side // 4) * side * inner * 4
    for rank, r in enumerate(unet_results[4]):
        stats = r["runs"]["pcpp"]["stats"][1]
        sides = (rank > 0) + (rank < 3)
        assert "attn_kv" not in stats
        assert stats["attn_band"] == Traffic(len(shapes["attn"]), sides * per_side, sides * per_side)


# ---------------------------------------------------------------------------------------------
# Splits and config (no processes)
# ---------------------------------------------------------------------------------------------


def test_split_prefers_rows_and_falls_back_to_columns():
    assert split_rows((64, 40), 8, 4).dim == "h"
    split = split_rows((40, 64), 8, 4)
    assert split.dim == "w" and split.local_hw(0) == (40, 8) and split.local_hw(3) == (5, 1)
    assert [split.band(r) for r in (0, 7)] == [range(0, 8), range(56, 64)]
    x = torch.arange(40 * 64).view(40, 64)
    assert torch.equal(split.take(x, 1), x[:, 8:16])


def test_a_split_that_does_not_divide_names_the_resolution_level():
    with pytest.raises(ConfigError, match=r"resolution level 3 \(after 3 downsamplings, the mid block\) has 5 rows"):
        split_rows((40, 64), 2, 4, "h")
    with pytest.raises(ConfigError) as error:
        split_rows((40, 72), 2, 4)  # zeroscope 576x320: 5 rows and 9 columns at the bottleneck
    assert "along H: resolution level 3" in str(error.value) and "along W: resolution level 3" in str(error.value)
    assert "9 columns" in str(error.value)
    with pytest.raises(ConfigError, match="resolution level 1 .* has 6 rows, not a multiple of 4"):
        split_rows((12, 16), 4, 2, "h")


def test_config_rejects_bad_values():
    for bad in (
        {"mode": "async"},
        {"portion": 0},
        {"portion": 1.5},
        {"portion": "half"},
        {"portion": True},
        {"warmup_steps": 0},
        {"groupnorm": "local"},
        {"mode": "sync", "groupnorm": "stale"},
        {"split": "diagonal"},
        {"decode": "tiles"},
    ):
        with pytest.raises(ConfigError):
            PatchParallelConfig(**bad)
    assert PatchParallelConfig().portion == DEFAULT_PORTION and PatchParallelConfig(portion="all").full_conditioning


def test_band_rows_is_a_ceiling_between_one_row_and_the_band():
    assert [band_rows(0.25, n) for n in (1, 2, 4, 5, 8)] == [1, 1, 1, 2, 2]
    assert band_rows(1.0, 6) == 6 and band_rows(0.3, 10) == 3


def test_decode_shares_frames_when_there_are_enough():
    assert decode_method(PatchParallelConfig(), 8, 4) == "frames"
    assert decode_method(PatchParallelConfig(), 2, 4) == "patch"
    assert decode_method(PatchParallelConfig(decode="patch"), 8, 4) == "patch"
    assert [frame_share(range(10, 18), 3, i) for i in range(3)] == [range(10, 13), range(13, 16), range(16, 18)]
    with pytest.raises(ConfigError, match="at least one frame per patch worker"):
        frame_share(range(0, 2), 3, 1)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["h", "w"])
def test_patch_parallel_vae_decode_equals_chunked_decode(unet_results, split):
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    expected = torch.cat(list(decode_chunks(tiny_vae(), latents, 2)))
    assert unet_results[2][1]["runs"][f"vae_{split}"] is None
    assert (unet_results[2][0]["runs"][f"vae_{split}"] - expected).abs().max().item() <= TOL


# ---------------------------------------------------------------------------------------------
# The pipeline: oracles against the one-worker render
# ---------------------------------------------------------------------------------------------


def _job(make_job, width=32, height=32, frames=8, steps=3):
    return load_job(
        make_job(
            video={"width": width, "height": height, "num_frames": frames},
            sampler={"steps": steps},
            parallel={"launcher": "local"},
        )
    ).config


def _single(job) -> torch.Tensor:
    latents, _, _ = denoise(job, load_bundle(job.model), job.noise.seed, WorkerSlot(), progress=False)
    return latents


def _runs(rank: int, world_size: int, runs: list) -> list[dict]:
    return [mesh_latents_worker(rank, world_size, *run) for run in runs]


def _video(parts: list[dict]) -> torch.Tensor:
    """The clips' latents joined in frame order; every replica of a clip must hold the same latents."""
    clips: dict[int, torch.Tensor] = {}
    for part in parts:
        start = part["frames"].start
        assert start not in clips or torch.equal(clips[start], part["latents"])
        clips[start] = part["latents"]
    return torch.cat([clips[s] for s in sorted(clips)], dim=2)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir) -> dict:
    import yaml

    folder = tmp_path_factory.mktemp("patch_jobs")

    def make_job(**sections):
        job = {
            "model": {"path": str(tiny_model_dir)},
            "prompts": {"text": "a red balloon", "negative": "blurry"},
            "sampler": {"name": "ddim", "guidance_scale": 7.5},
            "noise": {"seed": 3},
            "output": {"path": str(folder / "out.mp4")},
        }
        for section, values in sections.items():
            job.setdefault(section, {}).update(values)
        path = folder / f"job{len(list(folder.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(job))
        return str(path)

    jobs = {"square": _job(make_job), "tall": _job(make_job, width=16, height=64), "long": _job(make_job, steps=5)}
    jobs["bf16"] = load_job(
        make_job(
            model={"dtype": "bf16"},
            video={"width": 32, "height": 32, "num_frames": 8},
            sampler={"steps": 3},
            parallel={"launcher": "local"},
        )
    ).config
    displaced = PatchParallelConfig(warmup_steps=2)
    two = {
        "patch2": (jobs["square"], ParallelPlan(patch=2), SYNC),
        "patch2_w": (
            jobs["tall"],
            ParallelPlan(patch=2),
            PatchParallelConfig(mode="sync", groupnorm="exact", split="w"),
        ),
        "pcpp2": (jobs["long"], ParallelPlan(patch=2), displaced),
        "patch2_bf16": (jobs["bf16"], ParallelPlan(patch=2), SYNC),
    }
    four = {
        "patch4": (jobs["square"], ParallelPlan(patch=4), SYNC),
        "clip2_patch2": (jobs["square"], ParallelPlan(clip=2, patch=2), SYNC, ClipParallelConfig(mode="exact")),
        "full4": (jobs["long"], ParallelPlan(patch=4), PatchParallelConfig(portion="all", warmup_steps=2)),
    }
    out = {"jobs": jobs, "configs": {name: run[2] for name, run in {**two, **four}.items()}}
    for table in (two, four):
        world = next(iter(table.values()))[1].world_size
        results = run_local(_runs, world, list(table.values()))
        for i, name in enumerate(table):
            out[name] = [r[i] for r in results]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("name", "job"), [("patch2", "square"), ("patch2_w", "tall"), ("patch4", "square")])
def test_synchronous_patch_render_equals_the_single_worker_render(pipeline, name, job):
    parts = pipeline[name]
    assert parts[0]["split"].dim == ("w" if name == "patch2_w" else "h")
    assert (_video(parts) - _single(pipeline["jobs"][job])).abs().max().item() <= TOL
    assert all(p["evaluations"] == 3 for p in parts)


@pytest.mark.slow
def test_clip_by_patch_mesh_in_exact_mode_equals_the_single_worker_render(pipeline):
    parts = pipeline["clip2_patch2"]
    assert sorted((p["coords"]["clip"], p["coords"]["patch"]) for p in parts) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (_video(parts) - _single(pipeline["jobs"]["square"])).abs().max().item() <= TOL
    clip_traffic = parts[0]["traffic"]["clip"]
    patch_traffic = parts[0]["traffic"]["patch"]
    assert {"conv_halo", "attn_kv", "groupnorm"} <= set(clip_traffic)
    assert {"conv_halo", "attn_kv", "groupnorm", "groupnorm_temporal", "output"} <= set(patch_traffic)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pcpp2", "full4"])
def test_displaced_renders_run_end_to_end_and_their_error_is_reported(pipeline, name, record_property):
    parts = pipeline[name]
    video = _video(parts)
    exact = _single(pipeline["jobs"]["long"])
    error = (video - exact).abs().max().item()
    record_property(f"{name}_max_abs_vs_exact", error)
    print(f"\n{name}: max abs latent difference from the exact render {error:.4f}")
    assert torch.isfinite(video).all() and 0 < error < 1.0
    first_steps = [step["patch"] for step in parts[1]["steps"]]
    kind = "attn_band" if name == "pcpp2" else "attn_kv"
    assert [kind in step for step in first_steps] == [name == "full4"] * 2 + [True] * 3


@pytest.mark.slow
def test_each_step_gathers_the_guided_output_once(pipeline):
    parts = pipeline["patch4"]
    band = 1 * 4 * 8 * 2 * 8 * 4  # one guided output band: B, C, frames, 2 of 8 rows, 8 columns, fp32
    for part in parts:
        for step in part["steps"]:
            assert step["patch"]["output"] == {"calls": 1, "bytes_sent": band, "bytes_received": 3 * band}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "step", "synchronous", "element_size"),
    [("patch4", 1, True, 4), ("full4", 3, False, 4), ("pcpp2", 3, False, 4), ("patch2_bf16", 1, True, 2)],
)
def test_recorded_traffic_equals_the_module_structure_model(pipeline, name, step, synchronous, element_size):
    """Mean bytes received per worker in one step, per kind, as :func:`traffic_per_step` derives them
    (in bf16 too, where activations travel at 2 bytes and the gathered output at float32's 4)."""
    parts = pipeline[name]
    expected = traffic_per_step(
        tiny_unet(),
        parts[0]["split"],
        pipeline["configs"][name],
        batch=2,
        frames=8,
        synchronous=synchronous,
        element_size=element_size,
    )
    kinds = {kind for p in parts for kind in p["steps"][step]["patch"]}
    measured = {k: sum(p["steps"][step]["patch"].get(k, {}).get("bytes_received", 0) for p in parts) for k in kinds}
    assert kinds == set(expected)
    assert all(measured[k] / len(parts) == pytest.approx(expected[k], rel=1e-9) for k in kinds)
