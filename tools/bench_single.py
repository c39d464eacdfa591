"""Single-worker renderer benchmark.

1. Wall time of our render vs diffusers' ``TextToVideoSDPipeline`` on the same tiny model,
   latents, scheduler and guidance: text encoding + sampling + VAE decode to float frames,
   alternated and repeated, median ratio (target <= 1.05). Both decode all frames in one VAE
   call for that ratio; ``ratio_chunked`` also shows our default of 8-frame decode chunks,
   which trades a little speed for memory that does not grow with the video.
2. Peak extra memory (RSS above the level just before decoding, sampled every millisecond) of
   chunked decode + libx264 writing for 128 vs 512 frames (target: within 10%), each size in a
   fresh process whose heap follows live memory (:func:`benchlib.heap_follows_live_memory`):
   with glibc's default thresholds freed chunks stay resident and single readings swing by
   +-15% whatever the length. The latents (``C x h x w`` float32 per frame) exist before the
   decode starts and are the only part that grows with the frame count; the table states them.

    python tools/bench_single.py [--quick] [--json bench_single.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PeakRSS, heap_follows_live_memory, print_table, target, write_json  # noqa: E402


def _job(model_dir: str, frames: int, size: int, steps: int, out: str):
    from videogen.config import load_job

    return load_job(
        None,
        [
            f"model.path={model_dir}",
            "prompts.text=a red balloon over a lake",
            "prompts.negative=blurry",
            f"video.width={size}",
            f"video.height={size}",
            f"video.num_frames={frames}",
            f"sampler.steps={steps}",
            "sampler.guidance_scale=7.5",
            f"output.path={out}",
        ],
    ).config


def time_vs_diffusers(model_dir: str, frames: int, size: int, steps: int, repeats: int) -> dict:
    from diffusers import TextToVideoSDPipeline

    from videogen.decode import decode_chunks
    from videogen.models.loader import load_bundle
    from videogen.noise.gaussian import video_noise
    from videogen.pipeline import WorkerSlot, denoise

    job = _job(model_dir, frames, size, steps, "unused.mp4")
    bundle = load_bundle(job.model)
    pipe = TextToVideoSDPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    latents = video_noise(job.noise.seed, range(frames), 4, size // 4, size // 4)

    def ours(chunk: int = frames):
        z, _, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(), progress=False)
        return torch.cat(list(decode_chunks(bundle.vae, z, chunk)))

    def ours_chunked():
        return ours(job.output.decode_chunk_frames)

    def theirs():
        return pipe(
            job.prompts.text,
            negative_prompt=job.prompts.negative,
            num_inference_steps=steps,
            num_frames=frames,
            height=size,
            width=size,
            guidance_scale=7.5,
            latents=latents.clone(),
            output_type="np",
        ).frames[0]

    ours(), theirs()  # warm up both
    t_ours, t_theirs, t_chunked = [], [], []
    for _ in range(repeats):
        for fn, times in ((ours, t_ours), (theirs, t_theirs), (ours_chunked, t_chunked)):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
    difference = (ours() - torch.from_numpy(theirs())).abs().max().item()
    return {
        "frames": frames,
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "ours_s": statistics.median(t_ours),
        "diffusers_s": statistics.median(t_theirs),
        "ratio": statistics.median(t_ours) / statistics.median(t_theirs),
        "max_abs_diff": difference,
        "ours_chunked_s": statistics.median(t_chunked),
        "ratio_chunked": statistics.median(t_chunked) / statistics.median(t_theirs),
        "result_shape": list(result.shape),
    }


def decode_memory_child(model_dir: str, frames: int, size: int) -> None:
    """Run in a fresh process: decode ``frames`` latents to mp4, print the extra peak RSS."""
    from videogen.models.loader import load_bundle
    from videogen.noise.gaussian import video_noise
    from videogen.pipeline import decode_to

    heap_follows_live_memory()
    with tempfile.TemporaryDirectory() as tmp:
        job = _job(model_dir, frames, size, 1, f"{tmp}/v.mp4")
        bundle = load_bundle(job.model)
        latents = video_noise(0, range(frames), 4, size // 4, size // 4)
        decode_to(job, bundle, latents[:, :, :8], Path(f"{tmp}/warm.mp4"))
        with PeakRSS() as rss:
            decode_to(job, bundle, latents, Path(job.output.path))
        print(f"{rss.extra_mib:.3f}")


def decode_memory(model_dir: str, frames: int, size: int, runs: int = 3) -> float:
    """Median over ``runs`` fresh processes: the allocator makes single readings noisy (+-15%)."""
    readings = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", model_dir, str(frames), str(size)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        readings.append(float(out.strip().splitlines()[-1]))
    return statistics.median(readings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="write results and targets here")
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "FRAMES", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        model, frames, size = args.memory_child
        decode_memory_child(model, int(frames), int(size))
        return

    from videogen.models.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(write_tiny_model(Path(tmp) / "tiny"))
        if args.quick:
            speed = time_vs_diffusers(model_dir, frames=8, size=64, steps=4, repeats=3)
            short, long, size = 32, 128, 128
        else:
            speed = time_vs_diffusers(model_dir, frames=16, size=128, steps=10, repeats=5)
            short, long, size = 128, 512, 256
        mem_short = decode_memory(model_dir, short, size)
        mem_long = decode_memory(model_dir, long, size)

    print_table("render vs diffusers TextToVideoSDPipeline (same model, latents, scheduler)", [speed])
    memory = {
        "size": size,
        f"extra_MiB_{short}f": mem_short,
        f"extra_MiB_{long}f": mem_long,
        "ratio": mem_long / mem_short,
        "latents_KiB_per_frame": 4 * (size // 4) ** 2 * 4 / 1024,
    }
    print_table("decode + mp4 write: peak RSS above the pre-decode level", [memory])
    targets = {
        "wall_time_ratio_vs_diffusers": target(speed["ratio"], "<= 1.05"),
        "decode_memory_ratio_long_vs_short": target(memory["ratio"], "<= 1.10"),
        "max_abs_diff_vs_diffusers": target(speed["max_abs_diff"], "<= 1e-4"),
    }
    write_json(args.json, {"speed": speed, "decode_memory": memory}, targets)


if __name__ == "__main__":
    main()
