"""`videogen plan` of Stable Video Diffusion jobs: the bytes each worker receives, predicted without weights
through the family's own UNet call, equal what the workers record on every axis (clip on uneven clips,
synchronous patches, cfg, step, clip x patch) and in the clip-split temporal decode; traffic the planner
has no rule for is named, not guessed."""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest

from parallel.job_plan import clip_config, patch_config, plan_of, step_config
from parallel.launch import run_local
from parallel.plan import measured_traffic, plan_render
from parallel.render import render_worker
from parallel.testing import mesh_latents_worker, step_latents_worker
from videogen import cli
from videogen.config import JobConfig, load_job
from videogen.models import family as families
from videogen.models.families.svd import SvdFamily

FRAMES = 9  # two clips of 5 and 4 frames
SYNC = {"parallel.patch_options.mode": "sync", "parallel.patch_options.groupnorm": "exact"}
DUAL = {
    "parallel.clip_mode": "dual_scope",
    "parallel.dual_scope.local_radius": 2,
    "parallel.dual_scope.global_frames": 3,
}


def _job(folder, svd_dir, first_frame, **overrides) -> JobConfig:
    """A 32x32, 3-step SVD job of ``FRAMES`` frames on local workers, with ``key=value`` overrides."""
    keys = {
        "model.path": svd_dir,
        "model.family": "svd",
        "image.path": first_frame,
        "video.width": 32,
        "video.height": 32,
        "video.num_frames": FRAMES,
        "sampler.steps": 3,
        "noise.seed": 3,
        "parallel.launcher": "local",
        "output.path": folder / "out.mp4",
        **overrides,
    }
    return load_job(None, [f"{key}={value}" for key, value in keys.items()]).config


def _nested(report: dict) -> dict:
    """A :class:`~parallel.render.WorkerReport`'s ``axis.kind`` traffic as ``{axis: {kind: ...}}``."""
    out: dict = {}
    for name, traffic in report["traffic"].items():
        axis, kind = name.split(".", 1)
        out.setdefault(axis, {})[kind] = traffic
    return out


def _render(rank: int, world_size: int, job: JobConfig) -> dict:
    report = asdict(render_worker(rank, world_size, job, resume=False, progress=False))
    return {"traffic": _nested(report), "evaluations": report["model_evaluations"], "decoded": report["decoded"]}


def _mesh(rank: int, world_size: int, job: JobConfig) -> dict:
    part = mesh_latents_worker(rank, world_size, job, plan_of(job), patch_config(job), clip_config(job))
    return {"traffic": part["traffic"], "evaluations": part["evaluations"]}


def _step(rank: int, world_size: int, job: JobConfig) -> dict:
    part = step_latents_worker(rank, world_size, job, job.parallel.step, step_config(job))
    return {"traffic": part["traffic"], "evaluations": part["evaluations"]}


def _every(rank: int, world_size: int, runs: dict[str, tuple]) -> dict[str, dict]:
    return {name: run(rank, world_size, job) for name, (run, job) in runs.items()}


def _cases(tmp_path_factory, svd_dir, first_frame, cases: dict[str, tuple]) -> dict[str, tuple]:
    return {
        name: (run, _job(tmp_path_factory.mktemp(name), svd_dir, first_frame, **overrides))
        for name, (run, overrides) in cases.items()
    }


@pytest.fixture(scope="module")
def two(tmp_path_factory, svd_dir, first_frame) -> tuple[dict[str, tuple], list[dict]]:
    """Two workers: an uneven clip render with its temporal decode, synchronous patches, cfg, ParaStep with a
    split warm-up, displaced patches after one synchronous step, and clips whose image prior starts at step 1
    of 3 (``image.strength`` 0.7), each run once."""
    runs = _cases(
        tmp_path_factory,
        svd_dir,
        first_frame,
        {
            "clip_render": (_render, {"parallel.clip": 2}),
            "patch_sync": (_mesh, {"parallel.patch": 2, **SYNC}),
            "cfg": (_mesh, {"parallel.cfg": 2}),
            "step_split_warmup": (_step, {"parallel.step": 2, "parallel.step_warmup": 1}),
            "patch_displaced": (_mesh, {"parallel.patch": 2, "parallel.patch_options.warmup_steps": 1}),
            "clip_image_prior": (_mesh, {"parallel.clip": 2, "svd.image_prior": "true", "image.strength": 0.7}),
            "clip_dual_scope": (_mesh, {"parallel.clip": 2, **DUAL}),
            "clip_dual_scope_local": (_mesh, {"parallel.clip": 2, "parallel.groupnorm": "local", **DUAL}),
        },
    )
    return runs, run_local(_every, 2, runs, num_threads=1, timeout_s=300)


@pytest.fixture(scope="module")
def four(tmp_path_factory, svd_dir, first_frame) -> tuple[dict[str, tuple], list[dict]]:
    """Four workers: 2 clips x 2 synchronous patches rendered and decoded, and 4 uneven clips (5 + 4 + 4 + 4)."""
    runs = _cases(
        tmp_path_factory,
        svd_dir,
        first_frame,
        {
            "clip_x_patch_render": (_render, {"parallel.clip": 2, "parallel.patch": 2, **SYNC}),
            "clip_4_uneven": (_mesh, {"parallel.clip": 4, "video.num_frames": 17}),
        },
    )
    return runs, run_local(_every, 4, runs, num_threads=1, timeout_s=300)


def _check_prediction(runs: dict[str, tuple], parts: list[dict], name: str) -> None:
    job = runs[name][1]
    plan = plan_render(job)
    assert not plan.problems and not plan.unpredicted
    assert len(parts) == plan.world_size == len(plan.traffic)
    for rank, part in enumerate(parts):
        predicted = copy.deepcopy(plan.traffic[rank])
        if "decoded" not in part[name]:  # the latents harnesses stop before decoding
            predicted.get("clip", {}).pop("decode_halo", None)
        assert measured_traffic(part[name]["traffic"]) == predicted, f"{name}, rank {rank}"
        assert part[name]["evaluations"] == len(plan.workers[rank].calls)
        if "decoded" in part[name]:
            decoded = part[name]["decoded"]
            assert (tuple(decoded) if decoded else None) == plan.workers[rank].decodes


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "clip_render",
        "patch_sync",
        "cfg",
        "step_split_warmup",
        "patch_displaced",
        "clip_image_prior",
        "clip_dual_scope",
        "clip_dual_scope_local",
    ],
)
def test_the_plan_predicts_the_bytes_two_svd_workers_record(two, name):
    _check_prediction(*two, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip_x_patch_render", "clip_4_uneven"])
def test_the_plan_predicts_the_bytes_four_svd_workers_record(four, name):
    _check_prediction(*four, name)


@pytest.mark.slow
def test_the_recorded_kinds_are_svd_s_own(two, four):
    """The checks above compare SVD's traffic, not an empty plan with an empty record."""
    (_, parts), (_, parts4) = two, four
    clip = measured_traffic(parts[0]["clip_render"]["traffic"])
    assert set(clip["clip"]) == {"conv_halo", "groupnorm", "attn_kv", "decode_halo"}
    mixed = measured_traffic(parts4[0]["clip_x_patch_render"]["traffic"])
    assert {"groupnorm_temporal", "conv_halo", "attn_kv"} <= set(mixed["patch"])
    assert set(measured_traffic(parts[1]["step_split_warmup"]["traffic"])["step"]) == {"model_output", "warmup_branch"}
    dual = measured_traffic(parts[0]["clip_dual_scope"]["traffic"])["clip"]
    assert {"attn_scope", "groupnorm", "conv_halo"} <= set(dual) and "attn_kv" not in dual
    assert "groupnorm" not in measured_traffic(parts[0]["clip_dual_scope_local"]["traffic"])["clip"]


# -- without workers -------------------------------------------------------------------------------


def test_svd_clip_bytes_follow_the_temporal_layers_and_the_decode_halo(tmp_path, svd_dir, first_frame):
    """Per-frame guidance from 1 to 3 guides every clip (batch 2); the decode halo moves latent frames."""
    plan = plan_render(_job(tmp_path, svd_dir, first_frame, **{"parallel.clip": 2}))
    assert not plan.problems and not plan.unpredicted
    assert [[batch for batch, _ in w.calls] for w in plan.workers] == [[2, 2, 2]] * 2
    first, second = plan.traffic
    assert first["clip"]["decode_halo"] == second["clip"]["decode_halo"] == 4 * 4 * 16 * 16 * 4  # halo x C x h x w
    assert first["clip"]["conv_halo"] == second["clip"]["conv_halo"] > 0
    even = plan_render(_job(tmp_path, svd_dir, first_frame, **{"parallel.clip": 2, "video.num_frames": 8}))
    for worker in plan.traffic:  # keys and values padded to the longest clip: 5 frames of 9, 4 of 8
        assert worker["clip"]["attn_kv"] == even.traffic[0]["clip"]["attn_kv"] * 5 / 4
    no_halo = plan_render(_job(tmp_path, svd_dir, first_frame, **{"parallel.clip": 2, "svd.decode_halo": 0}))
    assert "decode_halo" not in no_halo.traffic[0]["clip"]
    unguided = _job(tmp_path, svd_dir, first_frame, **{"parallel.clip": 2, "svd.max_guidance_scale": 1.0})
    plan = plan_render(unguided)
    assert [[batch for batch, _ in w.calls] for w in plan.workers] == [[1, 1, 1]] * 2
    assert plan.traffic[0]["clip"]["conv_halo"] == first["clip"]["conv_halo"] / 2


def test_clips_whose_own_scales_differ_guide_together(tmp_path, svd_dir, first_frame):
    """Scales from 0 to 1.5 over 8 frames pass 1 in the second clip only; the video guides, so both clips do."""
    overrides = {
        "parallel.clip": 2,
        "video.num_frames": 8,
        "svd.min_guidance_scale": 0.0,
        "svd.max_guidance_scale": 1.5,
    }
    plan = plan_render(_job(tmp_path, svd_dir, first_frame, **overrides))
    assert not plan.problems
    assert [[batch for batch, _ in w.calls] for w in plan.workers] == [[2, 2, 2]] * 2


class _OwnInstallers(SvdFamily):
    name = "svd-own-installers"
    parallelize = {"clip": "elsewhere.video:apply_clip", "patch": "elsewhere.video:apply_patch"}


def test_traffic_of_installers_without_a_rule_is_named_not_guessed(tmp_path, svd_dir, first_frame, monkeypatch, capsys):
    monkeypatch.setitem(families._REGISTRY, _OwnInstallers.name, _OwnInstallers())
    overrides = {"model.family": _OwnInstallers.name, "prompts.text": "unread", "parallel.clip": 2}
    overrides.update({"parallel.patch": 2, "parallel.cfg": 2})
    job = _job(tmp_path, svd_dir, first_frame, **overrides)
    plan = plan_render(job)
    assert not plan.problems
    assert [note.split(":")[0] for note in plan.unpredicted] == ["clip", "patch"]
    assert all("patch" not in worker for worker in plan.traffic)
    clip = [worker["clip"] for worker in plan.traffic if "clip" in worker]
    assert clip and all(set(kinds) == {"decode_halo"} for kinds in clip)  # the renderer's own exchange, predicted
    plugin = copy.deepcopy(job)
    plugin.parallel.patch = 1
    plan = plan_render(plugin)
    assert [note.split(":")[0] for note in plan.unpredicted] == ["clip"]
    assert "elsewhere.video:apply_clip" in plan.unpredicted[0]
    path = tmp_path / "job.yaml"
    path.write_text(
        f"model: {{path: {svd_dir}, family: {_OwnInstallers.name}}}\nimage: {{path: {first_frame}}}\n"
        f"prompts: {{text: unread}}\noutput: {{path: {tmp_path / 'out.mp4'}}}\n"
    )
    assert cli.main(["plan", str(path), "video.width=32", "video.height=32", "parallel.clip=2"]) == 0
    text = capsys.readouterr().out
    assert "not predicted (left out of the bytes above):" in text
    assert (
        "clip: the svd-own-installers family's clip installer elsewhere.video:apply_clip has no byte rule here" in text
    )
    assert "no communication in the denoising loop" not in text
