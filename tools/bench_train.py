"""Training benchmark: throughput of each `videogen train` stage, and what the bundled model renders.

1. Throughput: the stages of ``configs/train_shapes.yaml`` (the bundled model's architecture and
   batch sizes) for a few steps each in a temporary folder, in samples per second (VAE and image
   stage: frames; UNet and TRIP: clips of ``data.frames`` frames), the first step included.
2. Prompt adherence of the bundled ``shapes`` model, measured with the synthetic world's own tools
   (``videogen.data.measure.score_video``: palette segmentation, shape templates, centroid tracks),
   never by eye: ``N`` renders of single-object captions that cycle through the palette, the shapes
   and the eight directions (``videogen.eval``, seed 1000), as a user renders them (from the model's
   text-to-layout prior, ``layout.prior: auto``, docs/layout.md) and with the UNet alone
   (``layout.prior: off``). Figures, from the first: the share of videos whose main object has the
   prompted colour and shape (``colour_shape``), and whose motion is the prompted direction within
   22.5 degrees (``direction``).
3. Caption sensitivity (:mod:`videogen.train.probe`): the model's denoising loss with each clip's true
   caption against the caption with its colour changed (the control: a model that draws the
   prompted colour must predict worse with another) and with its direction reversed. A gap of about
   zero, with the altered caption worse in half the samples, means the word does not reach the
   prediction at all: a training problem, not a sampling one. Beside it, the same gaps for the best
   predictions at the highest noise, from the world alone (``caption_oracle``): with each frame's
   index known, and averaged over frames (the best a predictor that treats frames alike can do).
4. The splice test (:mod:`videogen.train.splice`; not with ``--quick``): the same single-object renders of
   the UNet alone, with the sampling steps at timesteps >= 700 taken from the caption's mean clip (redrawn
   from the world) instead of the model, frame by frame or averaged over the frames; what placing each
   frame as the caption says at high noise is worth, which the layout prior learns.

    python tools/bench_train.py [--quick] [--json bench_train.json] [--model shapes]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from benchlib import machine, print_table, target, write_json  # noqa: E402

from videogen.config import ModelConfig  # noqa: E402
from videogen.eval import EvalJob, SuiteSection, run_eval, single_object_prompts  # noqa: E402
from videogen.train.config import load_train_job  # noqa: E402
from videogen.train.run import train_job  # noqa: E402

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_shapes.yaml"
LAYOUT_POOL = 32
"""Clips the layout stage's throughput row encodes (the recipe's pool of 1500 takes minutes alone)."""


def throughput(steps: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("vae", "image", "unet", "trip", "layout"):
            overrides = [f"out={tmp}/model", f"stages=[{stage}]", f"{stage}.steps={steps}"]
            overrides.append(f"{stage}.checkpoint_every=0")
            if stage == "layout":
                overrides.append(f"layout.clips={LAYOUT_POOL}")
            job = load_train_job(TRAIN_CONFIG, overrides).config
            result = train_job(job, progress=False, log=lambda _: None).stages[stage]
            section = getattr(job, stage)
            unit = "frames" if stage in ("vae", "image") else f"clips of {job.data.frames}"
            if stage == "layout":
                unit = f"frames (the first step encodes a pool of {LAYOUT_POOL} clips)"
            rows.append(
                {
                    "stage": stage,
                    "batch": section.batch_size,
                    "steps": steps,
                    "s/step": result.seconds / steps,
                    "samples/s": result.samples / result.seconds,
                    "unit": unit,
                }
            )
    return rows


def adherence(model: str, count: int, steps: int, frames: int, guidance: float, layout: str = "auto") -> list[dict]:
    """``count`` single-object renders (``videogen.eval.single_object_prompts``), one seed, scored by
    ``videogen eval``'s runner; nothing is written. ``layout`` is the renders' ``layout.prior``."""
    job = EvalJob(
        model=ModelConfig(path=model),
        base={
            "video.width": 64,
            "video.height": 64,
            "video.num_frames": frames,
            "sampler.steps": steps,
            "sampler.guidance_scale": guidance,
            "layout.prior": layout,
        },
        seeds=[1000],
        suites=[SuiteSection(name="adherence", prompts=single_object_prompts(count))],
        out=None,
    )
    report = run_eval(job, progress=False)
    return [
        {
            "caption": row.prompt,
            "colour": row.colour_ok,
            "shape": row.shape_ok,
            "direction": row.direction_ok,
            "near": row.direction_near,
            "velocity": f"({row.velocity_x:+.2f}, {row.velocity_y:+.2f})",
            "s": row.seconds,
        }
        for row in report.rows
    ]


def caption_rows(model: str, clips: int) -> list[dict]:
    """Loss gaps of :func:`videogen.train.probe.caption_sensitivity`, one row per altered attribute."""
    from videogen.models.loader import load_bundle
    from videogen.train.probe import caption_sensitivity

    found = caption_sensitivity(load_bundle(ModelConfig(path=model)), clips=clips)
    return [
        {
            "altered": attribute,
            "samples": found.samples,
            "loss_true": found.loss_true,
            "loss_altered": found.loss_altered[attribute],
            "relative_gap": found.gap(attribute),
            "altered_worse": found.altered_worse[attribute],
        }
        for attribute in ("colour", "direction")
    ]


def oracle_rows(clips: int, draws: int) -> list[dict]:
    """Gaps of :func:`videogen.train.probe.caption_oracle`, one row per altered attribute."""
    from videogen.train.probe import caption_oracle

    found = caption_oracle(clips=clips, draws=draws)
    return [
        {
            "altered": attribute,
            "clips": found.samples,
            "draws": draws,
            "frame_aware_gap": found.frame_aware[attribute],
            "frame_blind_gap": found.frame_blind[attribute],
        }
        for attribute in ("colour", "direction")
    ]


def splice_rows(model: str, prompts: int, draws: int, steps: int, until: int = 700) -> list[dict]:
    """:func:`videogen.train.splice.spliced_directions`: the model alone, then a frame-blind and a
    frame-aware caption mean standing in for it at timesteps ``>= until``."""
    from videogen.models.loader import load_bundle
    from videogen.train.splice import spliced_directions

    bundle = load_bundle(ModelConfig(path=model))
    runs = [
        ("model alone", 1000, True),
        (f"frame-blind mean, t >= {until}", until, False),
        (f"frame-aware mean, t >= {until}", until, True),
    ]
    rows = []
    for name, start, aware in runs:
        found = spliced_directions(bundle, start, frame_aware=aware, prompts=prompts, draws=draws, steps=steps)
        rows.append(
            {
                "first steps": name,
                "renders": found.renders,
                "direction": found.direction,
                "near": found.near,
                "colour": found.colour,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and renders (under a minute on 2 cores)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--model", default="shapes", help="model to score (default: the bundled shapes model)")
    parser.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance scale of the renders")
    args = parser.parse_args()
    torch.manual_seed(0)
    stage_rows = throughput(steps=2 if args.quick else 5)
    print_table("training throughput (configs/train_shapes.yaml sizes)", stage_rows)
    count, steps, frames = (6, 12, 16) if args.quick else (20, 25, 16)
    render_rows = adherence(args.model, count, steps, frames, args.guidance)
    print_table(f"{args.model}: {count} renders, {frames} frames 64x64, {steps} DDIM steps", render_rows)
    unet_rows = adherence(args.model, count, steps, frames, args.guidance, layout="off")
    print_table(f"{args.model}, the UNet alone (layout.prior: off): the same renders", unet_rows)
    colour_shape = sum(r["colour"] and r["shape"] for r in render_rows) / count
    direction = sum(r["direction"] for r in render_rows) / count
    near = sum(r["near"] for r in render_rows) / count
    unet_direction = sum(r["direction"] for r in unet_rows) / count
    unet_colour_shape = sum(r["colour"] and r["shape"] for r in unet_rows) / count
    print(f"\ncolour and shape as prompted: {colour_shape:.0%}; direction: {direction:.0%} (within 45 deg: {near:.0%})")
    print(f"the UNet alone: colour and shape {unet_colour_shape:.0%}; direction {unet_direction:.0%}")
    sensitivity = caption_rows(args.model, clips=4 if args.quick else 12)
    print_table(f"{args.model}: denoising loss with the true caption vs an altered one", sensitivity)
    oracle = oracle_rows(clips=4 if args.quick else 12, draws=100 if args.quick else 150)
    print_table("the same gaps for the best predictions from pure noise (pixels, no model)", oracle)
    splice = [] if args.quick else splice_rows(args.model, prompts=20, draws=48, steps=steps)
    if splice:
        title = f"{args.model}, the UNet alone: directions when the first steps take the caption's mean clip"
        print_table(title, splice)
    targets = {
        "colour_shape_rate": target(colour_shape, ">= 0.9"),
        "direction_rate": target(direction, ">= 0.8"),
    }
    results = {
        "machine": machine(),
        "quick": args.quick,
        "model": args.model,
        "guidance": args.guidance,
        "stages": stage_rows,
        "renders": render_rows,
        "direction_within_45": near,
        "unet_alone": {"renders": unet_rows, "colour_shape_rate": unet_colour_shape, "direction_rate": unet_direction},
        "caption_sensitivity": sensitivity,
        "caption_oracle": oracle,
        "splice": splice,
    }
    write_json(args.json, results, targets)


if __name__ == "__main__":
    main()
