"""Image-to-video benchmark: TRIP's image noise prior on the tiny model.

For one first-frame image (tools/make_first_frame.py) and one seed, renders the same frames with
the real sampler (``run_steps`` + ``Denoiser``) in these variants:

* ``t2v``: text-to-video, plain Gaussian start, no image;
* ``init``: the image latent noised to the first step (``i2v_initial_latents``), no prior;
* ``prior``: ``init`` + ``ImagePriorHook`` with the default schedule (docs/i2v.md);
* ``prior_all``: the prior on every step (``active_fraction = 1``);
* ``prior_warped``: ``prior`` with Go-with-the-Flow noise of a panning camera as the fresh noise;
* ``prior_tnf``: ``prior`` with a Temporal Noise Fusion module (untrained weights: timing only).

and measures, per variant and sampler (DDIM, the default, and DPM-Solver++):

* first-frame PSNR (dB) of the decoded frame 0 against the input image, and against the VAE's own
  reconstruction of the image ``D(z0)`` (the tiny VAE has random weights, so ``D(E(x))`` is far from
  ``x``: the second figure isolates the prior from the VAE);
* frame 0's latent error against ``z0`` and against where the sampler must put it when frame 0
  follows the prior exactly (DDIM's last step keeps ``sqrt(1 - abar_final)`` of the noise);
* frame-to-frame consistency: mean |z_{i+1} - z_i| over consecutive output latents (lower = steadier);
* seconds per sampling step, and the time spent in the prior hook per step (its extra cost).

    python tools/bench_i2v.py [--quick] [--json bench_i2v.json]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import print_table, target, write_json  # noqa: E402
from make_first_frame import first_frame  # noqa: E402

SAMPLERS = ("ddim", "dpmpp")
VARIANTS = ("t2v", "init", "prior", "prior_all", "prior_warped", "prior_tnf")


class TimedHook:
    """Wraps a StepHook and adds up the seconds spent in its ``on_model_output``."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0

    def on_model_output(self, ctx, latents, output):
        started = time.perf_counter()
        fused = self.inner.on_model_output(ctx, latents, output)
        self.seconds += time.perf_counter() - started
        return fused

    def on_step_end(self, ctx, latents):
        self.inner.on_step_end(ctx, latents)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [0, 1] images (capped at 99 dB for identical images)."""
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse <= 1e-10 else min(99.0, 10 * math.log10(1.0 / mse))


def decode_frame(vae, latent: torch.Tensor) -> torch.Tensor:
    """Latent ``(1, C, 1, h, w)`` to a [0, 1] image ``(3, H, W)``."""
    from videogen.decode import decode_chunks

    return next(decode_chunks(vae, latent, 1))[0].permute(2, 0, 1)


def warped_noise(seed: int, frames: int, channels: int, height: int, width: int) -> torch.Tensor:
    from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, WarpedNoiseSpec
    from videogen.noise.warped_latents import iter_warped_noise

    spec = WarpedNoiseSpec(source="camera", upsample=2, camera=CameraSpec(moves=[CameraMoveSpec(pan=0.03)]))
    noise = [f.noise for f in iter_warped_noise(spec, seed, frames, channels, height, width)]
    return torch.stack(noise, dim=1)[None]


def run(model_dir: str, size: int, frames: int, steps: int, repeats: int) -> tuple[list[dict], dict]:
    from videogen.config import ModelConfig, PromptsConfig
    from videogen.io.image import to_tensor
    from videogen.models.loader import load_bundle
    from videogen.models.trip_fusion import TemporalNoiseFusion
    from videogen.noise.gaussian import video_noise
    from videogen.noise.image_prior import (
        ImagePriorHook,
        PriorSchedule,
        encode_image_latent,
        i2v_initial_latents,
    )
    from videogen.prompts import build_text_context
    from videogen.sampling import Denoiser, make_scheduler, run_steps

    bundle = load_bundle(ModelConfig(path=model_dir))
    image = to_tensor(first_frame(size, size))
    target_pixels = (image + 1) / 2
    z0 = encode_image_latent(bundle.vae, image)
    recon = decode_frame(bundle.vae, z0)
    span = range(frames)
    channels, h, w = z0.shape[1], z0.shape[3], z0.shape[4]
    text = build_text_context(
        bundle.tokenizer, bundle.text_encoder, PromptsConfig(text="a red balloon over a lake"), frames, span
    )
    gaussian = video_noise(11, span, channels, h, w)
    warped = warped_noise(11, frames, channels, h, w)
    torch.manual_seed(0)
    tnf = TemporalNoiseFusion(channels=channels, dim=64, heads=4, frame_horizon=frames).eval().requires_grad_(False)
    default = PriorSchedule()

    def variant(name: str, scheduler):
        fresh = warped if name == "prior_warped" else gaussian
        if name == "t2v":
            return fresh * scheduler.init_noise_sigma, None
        latents = i2v_initial_latents(z0, fresh, scheduler)
        if name == "init":
            return latents, None
        schedule = PriorSchedule(active_fraction=1.0) if name == "prior_all" else default
        return latents, ImagePriorHook(z0, schedule, fusion=tnf if name == "prior_tnf" else None)

    rows = []
    for sampler in SAMPLERS:
        for name in VARIANTS:
            times, hook_times = [], []
            for _ in range(repeats):
                scheduler = make_scheduler(sampler, bundle.scheduler_config)
                scheduler.set_timesteps(steps)
                latents, hook = variant(name, scheduler)
                timed = [TimedHook(hook)] if hook is not None else []
                started = time.perf_counter()
                out = run_steps(Denoiser(bundle.unet, text, 7.5), scheduler, latents, span, timed)
                times.append((time.perf_counter() - started) / steps)
                hook_times.append(timed[0].seconds / steps if timed else 0.0)
            frame0 = decode_frame(bundle.vae, out[:, :, :1])
            # where frame 0 must land when it follows the prior exactly: DDIM's last step keeps
            # sqrt(1 - abar_final) of the noise (set_alpha_to_one=False); the other samplers end clean
            final = getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0))
            closed_form = (
                final.sqrt() * z0 + (1 - final).sqrt() * (warped if name == "prior_warped" else gaussian)[:, :, :1]
            )
            rows.append(
                {
                    "sampler": sampler,
                    "variant": name,
                    "psnr_vs_image_db": psnr(frame0, target_pixels),
                    "psnr_vs_vae_recon_db": psnr(frame0, recon),
                    "frame0_latent_err": float((out[:, :, :1] - z0).abs().mean()),
                    "frame0_vs_closed_form": float((out[:, :, :1] - closed_form).abs().max()),
                    "consecutive_latent_diff": float((out[:, :, 1:] - out[:, :, :-1]).abs().mean()),
                    "s_per_step": statistics.median(times),
                    "prior_ms_per_step": 1000 * statistics.median(hook_times),
                }
            )
    setup = {
        "size": size,
        "frames": frames,
        "steps": steps,
        "repeats": repeats,
        "vae_recon_psnr_db": psnr(recon, target_pixels),
        "z0_mean_abs": float(z0.abs().mean()),
    }
    return rows, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="write results and targets here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: stable timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from videogen.models.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(write_tiny_model(Path(tmp) / "tiny"))
        if args.quick:
            rows, setup = run(model_dir, size=64, frames=8, steps=8, repeats=1)
        else:
            rows, setup = run(model_dir, size=128, frames=16, steps=25, repeats=2)

    print_table(
        f"I2V on the tiny model ({setup['size']}px, {setup['frames']} frames, {setup['steps']} steps; "
        f"VAE reconstruction alone: {setup['vae_recon_psnr_db']:.2f} dB vs the image)",
        rows,
    )
    by = {(r["sampler"], r["variant"]): r for r in rows}
    ddim_prior, ddim_t2v, dpmpp_prior = by[("ddim", "prior")], by[("ddim", "t2v")], by[("dpmpp", "prior")]
    step_cost = ddim_prior["prior_ms_per_step"] / 1000 / ddim_prior["s_per_step"]
    targets = {
        "dpmpp_prior_first_frame_psnr_vs_vae_recon_db": target(dpmpp_prior["psnr_vs_vae_recon_db"], ">= 40"),
        "dpmpp_prior_first_frame_psnr_vs_image_minus_vae_ceiling_db": target(
            dpmpp_prior["psnr_vs_image_db"] - setup["vae_recon_psnr_db"], ">= -0.1"
        ),
        "ddim_prior_frame0_max_err_vs_closed_form": target(ddim_prior["frame0_vs_closed_form"], "<= 1e-4"),
        "ddim_consecutive_diff_ratio_prior_vs_t2v": target(
            ddim_prior["consecutive_latent_diff"] / ddim_t2v["consecutive_latent_diff"], "<= 1.0"
        ),
        "ddim_prior_extra_cost_fraction_of_step": target(step_cost, "<= 0.05"),
    }
    write_json(args.json, {"setup": setup, "rows": rows}, targets)


if __name__ == "__main__":
    main()
