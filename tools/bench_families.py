"""Model-family benchmark: each family against its diffusers pipeline, its clip speedup, and AnimateDiff's
long videos by dual-scope attention against diffusers' FreeNoise.

1. Per family (UNet3D, VideoCrafter2, AnimateDiff), on a random-weight model wide enough that compute
   dominates (its parameter count is printed): wall time of our single-worker loop (text encoding +
   sampling) against the family's diffusers pipeline on the same weights, latents, DDIM scheduler and
   guidance (``TextToVideoSDPipeline``, or ``AnimateDiffPipeline``; ``output_type="latent"``),
   alternated and repeated, median ratio (target <= 1.05), with the largest latent difference and
   ``ours_fixed_s``, the job fingerprint our loop computes once per render whatever the model
   (``videogen.checkpoint.job_fingerprint``), which a model this small makes visible; and the
   speedup of 2 exact clip workers (gloo, 1 thread each) over 1 worker (1 thread), timed around the
   sampling loop, best of the repeats, 1- and 2-worker runs interleaved.
2. AnimateDiff past its frame-position limit ``L``: dual-scope attention with positions per window
   (``parallel.dual_scope``; rendered on 2 clip workers and checked against its single-process
   reference) against diffusers' own long-video answer, FreeNoise context windows
   (``pipe.enable_free_noise``: windows of ``L`` frames, stride ``L/4``, pyramid weights), on the same
   model, prompt and initial latents: PSNR of the decoded videos against each other; temporal
   consistency as the mean and lowest PSNR between consecutive decoded frames; and the seam ratio of
   the dual-scope render (mean latent change across its position-window boundaries over the mean
   change inside windows; 1 is seamless). Within the limit (``F = L``) both are compared with the
   full-attention render, FreeNoise with windows of ``L/2``.

The weights are random: the figures measure how far the methods agree with each other and with full
attention, not how good the videos look.

    python tools/bench_families.py [--quick] [--json bench_families.json]
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import decode_frames, print_table, psnr, target, write_json  # noqa: E402

FAMILIES = ("unet3d", "videocrafter2", "animatediff")
PROMPT, NEGATIVE, GUIDANCE = "a sailboat on a calm sea", "blurry", 7.5


def writers() -> tuple[dict[str, Callable[..., Path]], dict[str, str]]:
    """Each family's tiny-model writer taking a ``TinySpec``; families that cannot be imported, with why."""
    from videogen.models.families.animatediff import write_tiny_animatediff
    from videogen.models.tiny import write_tiny_model

    found: dict[str, Callable[..., Path]] = {"unet3d": write_tiny_model, "animatediff": write_tiny_animatediff}
    missing: dict[str, str] = {}
    try:
        from videogen.models.families.videocrafter2 import write_tiny_videocrafter2

        found["videocrafter2"] = write_tiny_videocrafter2
    except ImportError as error:
        missing["videocrafter2"] = f"not importable ({error})"
    return found, missing


def make_job(model_dir: str, frames: int, size: int, steps: int, *overrides: str):
    from videogen.config import load_job

    return load_job(
        None,
        [
            f"model.path={model_dir}",
            f"prompts.text={PROMPT}",
            f"prompts.negative={NEGATIVE}",
            f"video.width={size}",
            f"video.height={size}",
            f"video.num_frames={frames}",
            f"sampler.steps={steps}",
            "sampler.name=ddim",
            f"sampler.guidance_scale={GUIDANCE}",
            "parallel.launcher=local",
            *overrides,
        ],
    ).config


def diffusers_pipeline(bundle, model_dir: str, job):
    """The family's diffusers pipeline on ``bundle``'s components (the same weights) with DDIM."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, TextToVideoSDPipeline

    scheduler = DDIMScheduler.from_config(bundle.scheduler_config)
    parts = {"vae": bundle.vae, "text_encoder": bundle.text_encoder, "tokenizer": bundle.tokenizer}
    if bundle.family.name == "animatediff":
        adapter = MotionAdapter.from_pretrained(f"{model_dir}/motion_adapter")
        pipe = AnimateDiffPipeline(unet=bundle.unet, motion_adapter=adapter, scheduler=scheduler, **parts)
    else:
        if hasattr(bundle.unet, "fps"):  # VideoCrafter2: the pipeline passes no rate, the UNet's own is used
            bundle.unet.fps = job.video.fps
        pipe = TextToVideoSDPipeline(unet=bundle.unet, scheduler=scheduler, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_latents(pipe, job, latents: torch.Tensor) -> torch.Tensor:
    v = job.video
    return pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=job.sampler.steps,
        num_frames=v.num_frames,
        height=v.height,
        width=v.width,
        guidance_scale=GUIDANCE,
        latents=latents.clone(),
        output_type="latent",
    ).frames


def ours_latents(job, bundle, install=None) -> torch.Tensor:
    from videogen.pipeline import WorkerSlot, denoise

    latents, _, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(install=install), progress=False)
    return latents


def initial(job, bundle) -> torch.Tensor:
    from videogen.noise.gaussian import video_noise

    f = bundle.vae_scale_factor
    v = job.video
    return video_noise(job.noise.seed, range(v.num_frames), bundle.latent_channels, v.height // f, v.width // f)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def clip_worker(rank: int, world_size: int, tasks: list[tuple[str, object, object]]) -> dict:
    """Inside a clip worker: each task ``(name, job, clip config)`` set up, then its sampling loop timed."""
    import torch.distributed as dist

    from parallel.compose import denoise_mesh, setup_mesh_worker
    from parallel.mesh import ParallelPlan
    from parallel.patch import PatchParallelConfig

    out = {}
    for name, job, clip in tasks:
        patch = PatchParallelConfig()
        worker = setup_mesh_worker(world_size, job, ParallelPlan(clip=world_size), clip, patch)
        warm = copy.deepcopy(job)
        warm.sampler.steps = 1
        denoise_mesh(worker, warm, clip, patch)  # the first call of a process pays one-time costs
        dist.barrier()
        start = time.perf_counter()
        latents, _ = denoise_mesh(worker, job, clip, patch)
        out[name] = {"seconds": time.perf_counter() - start, "latents": latents.cpu(), "frames": worker.frames}
    return out


def consecutive_psnr(frames: torch.Tensor) -> tuple[float, float]:
    """Mean and lowest PSNR (dB) between consecutive decoded frames ``(F, H, W, 3)``."""
    values = [psnr(frames[i + 1], frames[i]) for i in range(frames.shape[0] - 1)]
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite), min(finite)


def seam_ratio(latents: torch.Tensor, windows: list[range]) -> float:
    """Mean latent change across window boundaries over the mean change between other consecutive frames."""
    change = (latents[:, :, 1:] - latents[:, :, :-1]).pow(2).mean(dim=(0, 1, 3, 4)).sqrt()
    edges = {w.start - 1 for w in windows[1:]}
    across = [change[i].item() for i in edges]
    inside = [change[i].item() for i in range(change.shape[0]) if i not in edges]
    return statistics.fmean(across) / statistics.fmean(inside)


def family_rows(model_dirs: dict[str, str], settings: dict, repeats: int) -> tuple[list[dict], dict[str, dict]]:
    """Our loop vs diffusers per family, and the exact 2-clip-worker speedup, interleaved over ``repeats``.

    The 1-worker time is our loop's own (1 thread, in this process), the 2-worker time the slower worker's.
    """
    from parallel.clip import ClipParallelConfig
    from parallel.launch import run_local
    from videogen.models.loader import load_bundle

    frames, size, steps = settings["frames"], settings["size"], settings["steps"]
    jobs = {name: make_job(d, frames, size, steps) for name, d in model_dirs.items()}
    bundles = {name: load_bundle(job.model) for name, job in jobs.items()}
    pipes = {name: diffusers_pipeline(bundles[name], model_dirs[name], jobs[name]) for name in jobs}
    starts = {name: initial(jobs[name], bundles[name]) for name in jobs}
    times: dict[str, dict[str, list[float]]] = {n: {"ours": [], "theirs": [], "two": []} for n in jobs}
    results: dict[str, dict] = {}
    for name in jobs:  # warm up both, and keep one output of each for the difference
        results[name] = {
            "ours": ours_latents(jobs[name], bundles[name]),
            "theirs": pipeline_latents(pipes[name], jobs[name], starts[name]),
        }
    tasks = [(name, job, ClipParallelConfig(mode="exact")) for name, job in jobs.items()]
    for _ in range(repeats):
        for name in jobs:
            times[name]["ours"].append(timed(lambda n=name: ours_latents(jobs[n], bundles[n]))[0])
            times[name]["theirs"].append(timed(lambda n=name: pipeline_latents(pipes[n], jobs[n], starts[n]))[0])
        parts = run_local(clip_worker, 2, tasks, num_threads=1)
        for name in jobs:
            times[name]["two"].append(max(p[name]["seconds"] for p in parts))
            results[name]["two"] = torch.cat([p[name]["latents"] for p in parts], dim=2)
    from videogen.checkpoint import job_fingerprint

    fixed = min(timed(functools.partial(job_fingerprint, job))[0] for job in jobs.values() for _ in range(3))
    rows = []
    for name in jobs:
        t = times[name]
        unet = bundles[name].unet
        ours, theirs = statistics.median(t["ours"]), statistics.median(t["theirs"])
        rows.append(
            {
                "family": name,
                "UNet_M_params": sum(p.numel() for p in unet.parameters()) / 1e6,
                "frames": frames,
                "ours_s": ours,
                "diffusers_s": theirs,
                "ratio": ours / theirs,
                "ours_fixed_s": fixed,
                "max_abs_vs_diffusers": (results[name]["ours"] - results[name]["theirs"]).abs().max().item(),
                "t_1worker_s": min(t["ours"]),
                "t_2workers_s": min(t["two"]),
                "clip_speedup": min(t["ours"]) / min(t["two"]),
                "clip_max_abs_vs_1worker": (results[name]["two"] - results[name]["ours"]).abs().max().item(),
            }
        )
    return rows, times


def long_video(model_dir: str, settings: dict) -> tuple[list[dict], dict]:
    """AnimateDiff past and within its limit: dual-scope (positions per window) vs FreeNoise vs full attention."""
    from diffusers import AnimateDiffPipeline

    from parallel.clip import ClipParallelConfig
    from parallel.dual_scope import DualScopeConfig, apply_dual_scope_reference, position_windows
    from parallel.launch import run_local
    from videogen.models.loader import load_bundle

    limit, size, steps = settings["limit"], settings["long_size"], settings["steps"]
    radius, count = settings["radius"], settings["global_frames"]
    scope = DualScopeConfig(local_radius=radius, global_frames=count)
    dual_keys = (f"parallel.dual_scope.local_radius={radius}", f"parallel.dual_scope.global_frames={count}")
    long_frames = settings["long_frames"]
    long_job = make_job(model_dir, long_frames, size, steps, "parallel.clip_mode=dual_scope", *dual_keys)
    within_job = make_job(model_dir, limit, size, steps)
    bundle = load_bundle(long_job.model)
    pipe = AnimateDiffPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def reference_install(unet, denoiser):
        return apply_dual_scope_reference(unet, scope, modules=bundle.family.temporal_modules(unet)).remove

    def free_noise(job, context: int) -> tuple[float, torch.Tensor]:
        pipe.enable_free_noise(context_length=context, context_stride=max(1, context // 4), weighting_scheme="pyramid")
        try:
            return timed(lambda: pipeline_latents(pipe, job, initial(job, bundle)))
        finally:
            pipe.disable_free_noise()

    clip = ClipParallelConfig(mode="dual_scope", groupnorm="exact", dual_scope=scope)
    parts = run_local(clip_worker, 2, [("dual_scope", long_job, clip)], num_threads=1)
    dual = torch.cat([p["dual_scope"]["latents"] for p in parts], dim=2)
    t_dual_2 = max(p["dual_scope"]["seconds"] for p in parts)
    t_dual_1, dual_ref = timed(lambda: ours_latents(long_job, bundle, reference_install))
    t_free, free = free_noise(long_job, limit)
    windows = position_windows(long_frames, scope, limit)
    video = {"dual_scope": decode_frames(bundle.vae, dual), "free_noise": decode_frames(bundle.vae, free)}

    full = ours_latents(within_job, bundle)
    dual_within = ours_latents(within_job, bundle, reference_install)
    _, free_within = free_noise(within_job, limit // 2)
    within = {
        "full_attention": decode_frames(bundle.vae, full),
        "dual_scope": decode_frames(bundle.vae, dual_within),
        "free_noise": decode_frames(bundle.vae, free_within),
    }
    rows = []
    for method, latents, seconds in (("dual_scope", dual, t_dual_1), ("free_noise", free, t_free)):
        mean, low = consecutive_psnr(video[method])
        other = "free_noise" if method == "dual_scope" else "dual_scope"
        rows.append(
            {
                "method": method,
                "frames": long_frames,
                "limit": limit,
                "seconds_1_process": seconds,
                "psnr_vs_other_db": psnr(video[method], video[other]),
                "consecutive_psnr_mean_db": mean,
                "consecutive_psnr_min_db": low,
                "seam_ratio": seam_ratio(latents, windows) if method == "dual_scope" else None,
                f"psnr_vs_full_at_{limit}f_db": psnr(within[method], within["full_attention"]),
            }
        )
    full_mean, full_low = consecutive_psnr(within["full_attention"])
    extra = {
        "dual_scope_windows": [[w.start, w.stop] for w in windows],
        "dual_scope_2_workers_s": t_dual_2,
        "dual_scope_2_workers_max_abs_vs_reference": (dual - dual_ref).abs().max().item(),
        "full_attention_consecutive_psnr_at_limit_db": {"mean": full_mean, "min": full_low},
        "settings": {"radius": radius, "global_frames": count, "free_noise_stride": max(1, limit // 4)},
    }
    return rows, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="write results and targets here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each clip worker; the diffusers pipelines run on the same thread

    from videogen.models.tiny import TinySpec

    if args.quick:
        spec, repeats = TinySpec((32, 64), 8, 32, 8), 2
        settings = {"frames": 8, "size": 64, "steps": 4, "limit": 16, "long_frames": 48, "long_size": 32}
    else:
        spec, repeats = TinySpec((64, 128), 16, 64, 16), 3
        settings = {"frames": 16, "size": 64, "steps": 4, "limit": 16, "long_frames": 96, "long_size": 64}
    settings.update(radius=2, global_frames=4)
    found, missing = writers()
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {}
        for name in FAMILIES:
            if name not in found:
                continue
            extra = {"frame_limit": settings["limit"]} if name == "animatediff" else {}
            model_dirs[name] = str(found[name](Path(tmp) / name, seed=0, spec=spec, **extra))
        rows, times = family_rows(model_dirs, settings, repeats)
        long_rows, long_extra = long_video(model_dirs["animatediff"], settings)

    rows += [{"family": name, "note": f"skipped: {why}"} for name, why in missing.items()]
    print(f"\nmodels: TinySpec {spec.unet_channels}, {settings['size']}x{settings['size']}, CFG on, DDIM, 1 thread")
    print_table(f"our loop vs the family's diffusers pipeline; 2 exact clip workers vs 1 (best of {repeats})", rows)
    print_table(
        f"AnimateDiff past its {settings['limit']} frame positions: dual-scope (radius {settings['radius']}, "
        f"{settings['global_frames']} global frames, positions per window) vs diffusers FreeNoise "
        f"(windows of {settings['limit']}, stride {settings['limit'] // 4}); within the limit FreeNoise windows "
        f"are {settings['limit'] // 2}",
        long_rows,
    )
    print(
        f"\ndual-scope on 2 clip workers: {long_extra['dual_scope_2_workers_s']:.3g} s, max |diff| vs its "
        f"single-process reference {long_extra['dual_scope_2_workers_max_abs_vs_reference']:.3g}; "
        f"position windows {long_extra['dual_scope_windows']}"
    )
    print("note: random weights, so PSNR and seam figures measure agreement between methods, not video quality")
    measured = [r for r in rows if "ratio" in r]
    targets = {}
    for r in measured:
        targets[f"{r['family']}_time_ratio_vs_diffusers"] = target(r["ratio"], "<= 1.05")
        targets[f"{r['family']}_max_abs_vs_diffusers"] = target(r["max_abs_vs_diffusers"], "<= 1e-4")
        targets[f"{r['family']}_clip_speedup_2_workers"] = target(r["clip_speedup"], ">= 1.0")
        targets[f"{r['family']}_clip_max_abs_vs_1_worker"] = target(r["clip_max_abs_vs_1worker"], "<= 1e-4")
    targets["animatediff_dual_scope_2_workers_vs_reference"] = target(
        long_extra["dual_scope_2_workers_max_abs_vs_reference"], "<= 1e-4"
    )
    results = {
        "model_channels": list(spec.unet_channels),
        "settings": settings,
        "repeats": repeats,
        "families": rows,
        "all_seconds": times,
        "skipped": missing,
        "long_video": long_rows,
        "long_video_details": long_extra,
        "note": "random weights: PSNR and seam figures measure agreement between methods, not video quality",
    }
    write_json(args.json, results, targets)


if __name__ == "__main__":
    main()
