"""Stable Video Diffusion benchmark: our loop against diffusers, 2-worker speedups, ParaStep error, decode seams.

1. Our single-worker loop (CLIP image embedding, image latent, Euler sampling with per-frame guidance)
   against diffusers' ``StableVideoDiffusionPipeline`` on the same weights, initial latents, image and
   augmentation noise (``output_type="latent"``, so neither decodes): median wall time of alternated
   runs, their ratio (target <= 1.05), and the largest latent difference.
2. Speedup of 2 exact clip workers and of 2 ParaStep workers over 1 worker (gloo, 1 thread each),
   timed around the sampling call, best of the repeats, on a random-weight SVD wide enough that compute
   dominates (its parameter count is printed); next to a probe of how much of 2 cores the machine gives
   right now (two independent 1-worker renders at once), and ParaStep's ideal loop speedup
   ``T / (W / 2 + ceil((T - W) / N))`` (warm-up branches split over two workers); ``of_probe`` is a run's
   speedup over the probe's, the share of what the machine gave two workers at the time.
3. ParaStep against the sequential render for N = 2, 3, 4 step workers (PSNR of the decoded frames,
   relative L2 of the latents), computed with the single-process ``SerialReferenceLoop`` the step tests
   show equal to the distributed loop, next to the ParaStep paper's SVD figures (FVD against the
   sequential output from its released scripts, and the ideal speedup of its T = 50, W = 5 setting).
4. Decoding split into 2 clips with a halo of 0, 1, 2 and 4 latent frames (the default is 4) against
   one whole-video decode: largest pixel error in the two frames at the clip boundary and elsewhere.

The weights are random: the figures measure agreement, speed and seams, not how good the videos look.

    python tools/bench_svd.py [--quick] [--json bench_svd.json]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import print_table, psnr, sequential_worker, target, write_json  # noqa: E402

PAPER_FVD = {2: 14, 3: 26, 4: 63}
"""FVD of ParaStep against the sequential SVD render by step workers (one clip, the released scripts)."""
PAPER_STEPS, PAPER_WARMUP = 50, 5
HALOS = (0, 1, 2, 4)


def timed_worker(rank: int, world_size: int, job) -> dict:
    """Inside a worker of ``job``'s mesh: set up, then time the sampling call only."""
    import torch.distributed as dist

    from parallel.comm import AxisComm
    from parallel.render import setup_worker, worker_slot
    from videogen.pipeline import denoise

    worker = setup_worker(world_size, job)
    slot = worker_slot(worker, job, AxisComm(dist.group.WORLD, "world", worker.stats))
    dist.barrier()
    start = time.perf_counter()
    latents, evaluations, _ = denoise(job, worker.bundle, job.noise.seed, slot, progress=False)
    return {"latents": latents, "seconds": time.perf_counter() - start, "evaluations": evaluations}


def make_job(model_dir: str, image: str, size: int, frames: int, steps: int, *overrides: str):
    from videogen.config import load_job

    base = [
        f"model.path={model_dir}",
        "model.family=svd",
        f"image.path={image}",
        f"video.width={size}",
        f"video.height={size}",
        f"video.num_frames={frames}",
        f"sampler.steps={steps}",
        f"output.decode_chunk_frames={frames}",
        "parallel.launcher=local",
    ]
    return load_job(None, [*base, *overrides]).config


def write_image(folder: Path, size: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    path = folder / "first.png"
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def loop_against_diffusers(job, repeats: int) -> dict:
    """Median seconds of our conditioning + sampling and of diffusers' pipeline up to the latents."""
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    from videogen.models.loader import load_bundle
    from videogen.noise.gaussian import frame_seed, video_noise
    from videogen.pipeline import WorkerSlot, denoise

    bundle = load_bundle(job.model)
    pipe = StableVideoDiffusionPipeline.from_pretrained(job.model.path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    v, seed, s = job.video, job.noise.seed, job.svd
    f = bundle.vae_scale_factor
    image = Image.open(job.image.path).convert("RGB")

    def ours() -> torch.Tensor:
        return denoise(job, bundle, seed, WorkerSlot(), progress=False)[0]

    def theirs() -> torch.Tensor:
        out = pipe(
            image,
            height=v.height,
            width=v.width,
            num_frames=v.num_frames,
            num_inference_steps=job.sampler.steps,
            min_guidance_scale=s.min_guidance_scale,
            max_guidance_scale=s.max_guidance_scale,
            fps=s.fps,
            motion_bucket_id=s.motion_bucket_id,
            noise_aug_strength=s.noise_aug_strength,
            latents=video_noise(seed, range(v.num_frames), 4, v.height // f, v.width // f).transpose(1, 2),
            generator=torch.Generator().manual_seed(frame_seed(seed, 0, "image")),
            output_type="latent",
        )
        return out.frames.transpose(1, 2)

    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    results = {}
    for _ in range(repeats + 1):  # the first round warms both up and is not counted
        for name, fn in (("ours", ours), ("diffusers", theirs)):
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(times["ours"][1:]), statistics.median(times["diffusers"][1:])
    error = (results["ours"] - results["diffusers"]).abs().max().item()
    return {"ours_s": ours_s, "diffusers_s": theirs_s, "ratio": ours_s / theirs_s, "latent_max_abs_error": error}


def speedups(model_dir: str, image: str, size: int, frames: int, steps: int, warmup: int, repeats: int) -> list[dict]:
    """Sequential, probe, 2 clip workers and 2 step workers, interleaved, best of ``repeats``."""
    from parallel.launch import run_local

    runs = {
        "sequential": (sequential_worker, 1, make_job(model_dir, image, size, frames, steps)),
        "probe: 2 sequential at once": (sequential_worker, 2, make_job(model_dir, image, size, frames, steps)),
        "2 clip workers (exact)": (timed_worker, 2, make_job(model_dir, image, size, frames, steps, "parallel.clip=2")),
        f"2 step workers (ParaStep W={warmup})": (
            timed_worker,
            2,
            make_job(model_dir, image, size, frames, steps, "parallel.step=2", f"parallel.step_warmup={warmup}"),
        ),
    }
    best: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for name, (fn, workers, job) in runs.items():
            result = run_local(fn, workers, job, num_threads=1)
            if name not in best or _wall(result) < _wall(best[name]):
                best[name] = result
    sequential, probe = _wall(best["sequential"]), "probe: 2 sequential at once"
    ideal = {"sequential": 1.0, "probe: 2 sequential at once": 2.0, "2 clip workers (exact)": 2.0}
    ideal[f"2 step workers (ParaStep W={warmup})"] = ideal_speedup(steps, warmup, 2)
    rows = []
    for name, result in best.items():
        renders = 2 if name.startswith("probe") else 1
        rows.append(
            {
                "run": name,
                "workers": len(result),
                "evaluations": max(r["evaluations"] for r in result),
                "wall_s": _wall(result),
                "speedup": renders * sequential / _wall(result),
                "ideal": ideal[name],
                "of_probe": renders * sequential / _wall(result) / (2 * sequential / _wall(best[probe])),
            }
        )
    return rows


def _wall(workers: list[dict]) -> float:
    return max(w["seconds"] for w in workers)


def ideal_speedup(steps: int, warmup: int, n: int) -> float:
    return steps / (warmup / 2 + math.ceil((steps - warmup) / n))


def parastep_errors(job, warmup: int) -> list[dict]:
    """ParaStep (single-process reference loop) against the sequential render, N = 2, 3, 4."""
    from parallel.step import SerialReferenceLoop, StepParallelConfig
    from videogen.models.loader import load_bundle
    from videogen.pipeline import WorkerSlot, decode_video, denoise

    bundle = load_bundle(job.model)

    def render(loop=None) -> torch.Tensor:
        slot = WorkerSlot() if loop is None else WorkerSlot(loop=loop)
        return denoise(job, bundle, job.noise.seed, slot, progress=False)[0]

    def frames(latents: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(decode_video(job, bundle, latents)))

    exact = render()
    exact_frames = frames(exact)
    rows = []
    for n in (2, 3, 4):
        approx = render(SerialReferenceLoop(n, StepParallelConfig(warmup=warmup)))
        rows.append(
            {
                "N": n,
                "steps": job.sampler.steps,
                "warmup": warmup,
                "psnr_db": psnr(frames(approx), exact_frames),
                "latent_rel_l2": ((approx - exact).norm() / exact.norm()).item(),
                "ideal_speedup": ideal_speedup(job.sampler.steps, warmup, n),
                "paper_fvd": PAPER_FVD[n],
                "paper_ideal_speedup": PAPER_STEPS / (PAPER_WARMUP + math.ceil((PAPER_STEPS - PAPER_WARMUP) / n)),
            }
        )
    return rows


def decode_seams(job) -> list[dict]:
    """``job``'s render decoded as two clips apart with each halo, against one whole-video decode (pixels in
    [0, 1])."""
    from videogen.decode import decode_chunks
    from videogen.models.loader import load_bundle
    from videogen.pipeline import WorkerSlot, denoise

    bundle = load_bundle(job.model)
    latents = denoise(job, bundle, job.noise.seed, WorkerSlot(), progress=False)[0]
    num_frames = latents.shape[2]
    decode = functools.partial(bundle.family.decode, bundle.vae)
    whole = torch.cat(list(decode_chunks(bundle.vae, latents, num_frames, decode)))
    cut = num_frames // 2
    rows = []
    for halo in HALOS:
        parts = []
        for clip in (range(0, cut), range(cut, num_frames)):
            lo, hi = max(0, clip.start - halo), min(num_frames, clip.stop + halo)
            context = (clip.start - lo, hi - clip.stop)
            chunks = decode_chunks(bundle.vae, latents[:, :, lo:hi], len(clip), decode, halo, context)
            parts.append(torch.cat(list(chunks)))
        error = (torch.cat(parts) - whole).abs().amax(dim=(1, 2, 3))
        inside = torch.cat([error[: cut - 1], error[cut + 1 :]])
        rows.append(
            {
                "halo": halo,
                "seam_max_error": error[cut - 1 : cut + 1].max().item(),
                "elsewhere_max_error": inside.max().item(),
                "seam_psnr_db": psnr(torch.cat(parts)[cut - 1 : cut + 1], whole[cut - 1 : cut + 1]),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="write results and targets here")
    args = parser.parse_args()

    from videogen.models.families.svd import tiny_pipeline

    torch.set_num_threads(1)
    if args.quick:
        width, size, frames, steps, repeats, seam_frames = 32, 32, 8, 4, 1, 16
        speed_width, speed_size, speed_steps, warmup, para_steps, para_warmup = 32, 32, 8, 2, 12, 2
    else:
        width, size, frames, steps, repeats, seam_frames = 64, 32, 14, 10, 5, 24
        speed_width, speed_size, speed_steps, warmup = 64, 32, 12, 2
        para_steps, para_warmup = PAPER_STEPS, PAPER_WARMUP
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = write_image(folder, max(size, speed_size))
        model = folder / "svd"
        tiny_pipeline(0, width).save_pretrained(str(model), safe_serialization=True)
        speed_model = folder / "svd-wide"
        tiny_pipeline(0, speed_width).save_pretrained(str(speed_model), safe_serialization=True)
        params = sum(p.numel() for p in tiny_pipeline(0, speed_width).unet.parameters())

        loop = loop_against_diffusers(make_job(str(model), image, size, frames, steps), repeats)
        speed = speedups(str(speed_model), image, speed_size, frames, speed_steps, warmup, repeats)
        para = parastep_errors(make_job(str(model), image, size, frames, para_steps), para_warmup)
        seams = decode_seams(make_job(str(model), image, size, seam_frames, steps))

    print(
        f"\nmodels: SVD UNet ({width}, {2 * width}) for the loop, ParaStep and seams, {size}x{size}, {frames} frames; "
        f"({speed_width}, {2 * speed_width}), {params / 1e6:.2f} M parameters, {speed_size}x{speed_size} for the "
        "speedups; Euler (Karras, v-prediction), guidance 1 -> 3 over the frames, 1 thread per worker"
    )
    print_table(f"our loop vs StableVideoDiffusionPipeline ({steps} steps, median of {repeats})", [loop])
    print_table(f"1 vs 2 workers ({speed_steps} steps, sampling call, best of {repeats})", speed)
    print_table("ParaStep vs the sequential render (paper: SVD, T = 50, W = 5)", para)
    print_table(f"decoding 2 clips apart vs one whole decode ({seam_frames} frames)", seams)

    by_run = {row["run"]: row for row in speed}
    default_halo = next(row for row in seams if row["halo"] == 4)
    targets = {
        "loop_time_ratio_ours_over_diffusers": target(loop["ratio"], "<= 1.05"),
        "oracle_latent_max_abs_error": target(loop["latent_max_abs_error"], "<= 1e-4"),
        "speedup_2_clip_workers": target(by_run["2 clip workers (exact)"]["speedup"], ">= 1.5"),
        "speedup_2_step_workers": target(by_run[f"2 step workers (ParaStep W={warmup})"]["speedup"], ">= 1.5"),
        "parastep_psnr_N2_db": target(para[0]["psnr_db"], ">= 30"),
        "decode_seam_max_error_halo4": target(default_halo["seam_max_error"], "<= 0.05"),
        "decode_seam_gain_halo4_over_halo0": target(
            seams[0]["seam_max_error"] / max(default_halo["seam_max_error"], 1e-12), ">= 2"
        ),
    }
    results = {
        "speed_model_parameters": params,
        "loop": loop,
        "speed": speed,
        "parastep": para,
        "decode_seams": seams,
    }
    write_json(args.json, results, targets)


if __name__ == "__main__":
    main()
