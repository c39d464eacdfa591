"""The ``videogen`` command line: render jobs, evaluate a model, inspect the machine, build the tiny model.

Nothing heavy is imported before the command line is parsed: ``videogen --help`` answers at once, and
commands whose parsers live in heavy modules (``warp-noise``, ``train-trip``) are built in full only
when they are the command given.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from videogen.errors import VideogenError

RENDER_EPILOG = """\
overrides are section.key=value pairs merged over the job file, e.g.
  videogen render configs/demo.yaml video.num_frames=32 sampler.steps=10 noise.seed=7

sections and keys (see configs/ and README.md for every default):
  model     path (folder or 'tiny'), family (auto or a name), unet, vae, text_encoder, tokenizer, scheduler,
            motion_adapter (AnimateDiff), dtype (fp32|fp16|bf16), device (auto|cpu|cuda[:N]),
            attention (sdpa|xformers), prediction_type (auto|epsilon|v_prediction)
  prompts   text, negative, schedule (list of {text, start, end}; start/end a frame, a share 0.5 or 50%),
            blend_frames
  video     width, height (multiples of 8), num_frames, fps, condition_fps (the rate VideoCrafter2 is conditioned
            on; null = fps)
  sampler   name (auto = the family's usual one|ddim|euler|dpmpp|unipc|dpmpp_sde), steps, guidance_scale, eta,
            checkpoint_every
  noise     seed (-1 draws one), kind (gaussian|warped), warped (motion: see docs/warped_noise.md)
  image     path (first frame: image-to-video), resize, strength, schedule, weight_first, weight_floor,
            decay_frames, active_fraction, pin_first_frame, fusion (see docs/i2v.md)
  layout    prior (auto = the model folder's layout_prior/ for text-to-video with gaussian noise|off|a folder),
            strength (share of the steps run from the layout start), noise (warped = Gaussian job noise is
            replaced by warped noise moving with the layout|gaussian), degradation (of that warp); docs/layout.md
  parallel  clip (workers along the frame axis), clip_mode (exact|dual_scope), groupnorm (exact|local),
            dual_scope.{local_radius,global_frames,switch_timestep,scope_bias}, launcher (ray|local),
            threads_per_worker, patch, cfg (1|2), step, step_warmup, step_reuse (shared|own),
            patch_options.{mode,portion,warmup_steps,groupnorm,split,decode}
  ray       address (null = local instance), placement, cpus_per_worker, gpus_per_worker, startup_timeout_s,
            connect_timeout_s, max_restarts (re-form lost workers, resume), hang_timeout_s
  output    path (.mp4, .gif, or no suffix for PNG frames), crf, decode_chunk_frames, checkpoint_dir
"""


def _quiet_environment() -> None:
    """Before any library is imported: their log levels and progress bars, read at import."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _quiet_libraries() -> None:
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def cmd_render(args: argparse.Namespace) -> int:
    from videogen.api import render_job

    result = render_job(args.job, args.overrides, resume=args.resume, progress=not args.no_progress)
    print(result.summary())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from parallel.plan import format_plan, plan_render
    from videogen.config import load_job
    from videogen.io.atomic import write_text_atomic

    job = load_job(args.job, args.overrides).config
    plan = plan_render(job)
    print(format_plan(plan, args.job))
    if args.json:
        write_text_atomic(Path(args.json), plan.to_json() + "\n")
    return 2 if plan.problems else 0


EVAL_EPILOG = """\
overrides are key=value pairs merged over the evaluation file, e.g.
  videogen eval configs/eval_shapes.yaml model.path=out/shapes seeds=4 out=out/eval_shapes

keys (see configs/eval_shapes.yaml and docs/quality.md):
  model     the render job's model section: path (folder, 'tiny' or 'shapes'), dtype, device, ...
  base      render-job keys for every render, dotted or nested: {video.width: 64, sampler.steps: 25}
  seeds     a count n (seeds 0 .. n-1) or a list of seeds; every prompt is rendered with each
  suites    a list of {name, prompts: [captions], overrides: {render-job keys} or ["k=v", ...], repeat}
  out       the report folder (null: write nothing); videos (true: keep each render as mp4)
  sheet     every (contact sheets show every k-th frame), scale
  scoring   min_rate (share of frames a per-frame check must pass), pan_reference (measured|caption)
  threads   torch CPU threads (0 = torch's default)

writes OUT/videos.csv (one row per video), OUT/report.json (rows and per-suite summaries),
OUT/eval.yaml (the resolved evaluation) and OUT/sheets/SUITE.png (one row per video); prints
one line per render and a table of each suite's rates (%) and means.
"""


def cmd_eval(args: argparse.Namespace) -> int:
    from videogen.eval.report import report_table
    from videogen.eval.runner import run_eval
    from videogen.eval.schema import load_eval_job

    job = load_eval_job(args.job, args.overrides).config
    report = run_eval(job, progress=not args.no_progress)
    print(report_table(report))
    videos = len(report.rows)
    if job.out is not None:
        print(f"wrote {videos} rows to {job.out}/videos.csv, report.json and {len(report.sheets)} contact sheets")
    print(f"{videos} renders in {report.seconds:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from videogen.info import describe

    print(describe())
    return 0


def cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from videogen.models.family import family_named

    family = family_named(args.family, key="--family")
    path = family.build_tiny(Path(args.out), seed=args.seed)
    print(f"wrote a tiny {family.name} model to {path}")
    return 0


LAZY_COMMANDS = {
    "warp-noise": (
        "videogen.noise.warp_cli",
        "write Go-with-the-Flow warped noise and a preview mp4 from a motion spec",
    ),
    "train-trip": ("videogen.train.trip", "train TRIP's Temporal Noise Fusion module on videos"),
    "batch": (
        "videogen.batch.cli",
        "render a manifest of many jobs (prompts x seeds x overrides), skipping complete outputs",
    ),
}
"""command -> (module whose ``register(subparsers)`` builds its parser, its one-line help)."""


def _add_lazy(sub: argparse._SubParsersAction, name: str, command: str | None) -> None:
    module, summary = LAZY_COMMANDS[name]
    if command == name:
        importlib.import_module(module).register(sub)
    else:
        sub.add_parser(name, help=summary)  # listed in the help; never the command run


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (default ``sys.argv[1:]``), whose first word picks the lazy command to build."""
    words = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in words if not word.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="videogen",
        description="Render videos with latent video diffusion models (model families: see docs/model_families.md), "
        "on one or many workers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = sub.add_parser(
        "render",
        help="render a YAML job to a video",
        description="Render a YAML job. The output and its .job.yaml/.meta.json records appear only when complete.",
        epilog=RENDER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render.add_argument("job", help="job YAML file (configs/demo.yaml is a starting point)")
    render.add_argument("overrides", nargs="*", metavar="key=value", help="overrides merged over the job file")
    render.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest latent checkpoint (sampler.checkpoint_every > 0 writes them)",
    )
    render.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    render.set_defaults(handler=cmd_render)

    plan = sub.add_parser(
        "plan",
        help="show what a render would do, without loading weights: workers, shares, bytes, errors",
        description=(
            "Work out a job's render without loading weights or starting workers: the mesh, each worker's "
            "frames, latent rows and decoded frames, its UNet calls, the bytes each axis moves (per worker, "
            "predicted from the UNet's layer shapes exactly as the collectives count them), and every error "
            "the render would stop with. Exit status 2 when there is one."
        ),
    )
    plan.add_argument("job", help="job YAML file")
    plan.add_argument("overrides", nargs="*", metavar="key=value", help="overrides merged over the job file")
    plan.add_argument("--json", metavar="PATH", help="also write the plan (per-worker traffic included) as JSON")
    plan.set_defaults(handler=cmd_plan)

    evaluate = sub.add_parser(
        "eval",
        help="render prompt suites with a model of the shapes world and score them against ground truth",
        description=(
            "Render every suite x prompt x seed of an evaluation file with one model, score each video "
            "against its caption with the shapes world's measurements (colour, shape, count, direction, "
            "speed, camera pan, temporal consistency) and report per-suite rates."
        ),
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("job", help="evaluation YAML file (configs/eval_shapes.yaml is a starting point)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="overrides merged over the file")
    evaluate.add_argument("--no-progress", action="store_true", help="do not print a line per render")
    evaluate.set_defaults(handler=cmd_eval)

    info = sub.add_parser("info", help="versions, devices and which optional backends work here")
    info.set_defaults(handler=cmd_info)

    tiny = sub.add_parser("build-tiny-model", help="write a tiny random-weight diffusers-format model to a folder")
    tiny.add_argument("out", help="folder to create")
    tiny.add_argument(
        "--family",
        default="unet3d",
        help="model family: unet3d (default), videocrafter2, animatediff or svd",
    )
    tiny.add_argument("--seed", type=int, default=0, help="weights are deterministic in this seed (default 0)")
    tiny.set_defaults(handler=cmd_build_tiny_model)

    _add_lazy(sub, "warp-noise", command)
    _add_lazy(sub, "batch", command)

    from videogen.train.cli import register as register_train

    register_train(sub)
    _add_lazy(sub, "train-trip", command)
    return parser


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may also come after the flags (``--resume x.y=1``)."""
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_environment()
    args = parse_command_line(argv)  # --help and usage errors exit here, before any heavy import
    _quiet_libraries()
    try:
        return args.handler(args)
    except VideogenError as error:
        print(f"videogen: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("videogen: interrupted; no output was written under the final name", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
