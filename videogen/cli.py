"""The ``videogen`` command line: render jobs, inspect the machine, build the tiny model."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from videogen.errors import VideogenError

RENDER_EPILOG = """\
overrides are section.key=value pairs merged over the job file, e.g.
  videogen render configs/demo.yaml video.num_frames=32 sampler.steps=10 noise.seed=7

sections and keys (see configs/ and README.md for every default):
  model     path (folder or 'tiny'), unet, vae, text_encoder, tokenizer, scheduler,
            dtype (fp32|fp16|bf16), device (auto|cpu|cuda[:N]), attention (sdpa|xformers),
            prediction_type (auto|epsilon|v_prediction)
  prompts   text, negative, schedule (list of {text, start, end}), blend_frames
  video     width, height (multiples of 8), num_frames, fps
  sampler   name (ddim|euler|dpmpp|unipc), steps, guidance_scale, eta, checkpoint_every
  noise     seed (-1 draws one), kind (gaussian|warped), warped (motion: see docs/warped_noise.md)
  image     path (first frame: image-to-video), resize, strength, schedule, weight_first, weight_floor,
            decay_frames, active_fraction, pin_first_frame, fusion (see docs/i2v.md)
  parallel  clip (workers along the frame axis), clip_mode (exact|dual_scope), groupnorm (exact|local),
            dual_scope.{local_radius,global_frames,switch_timestep,scope_bias}, launcher (ray|local),
            threads_per_worker, patch, cfg (1|2), step, step_warmup, step_reuse (shared|own),
            patch_options.{mode,portion,warmup_steps,groupnorm,split,decode}
  ray       address (null = local instance), placement, cpus_per_worker, gpus_per_worker, startup_timeout_s
  output    path (.mp4, .gif, or no suffix for PNG frames), crf, decode_chunk_frames, checkpoint_dir
"""


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def cmd_render(args: argparse.Namespace) -> int:
    from videogen.config import load_job
    from videogen.pipeline import render

    job = load_job(args.job, args.overrides).config
    if job.parallel.clip > 1:
        from parallel.runner import render_parallel

        result = render_parallel(job, resume=args.resume, progress=not args.no_progress)
    else:
        result = render(job, resume=args.resume, progress=not args.no_progress)
    print(
        f"wrote {result.output} ({result.frames} frames, seed {result.seed}, "
        f"{result.model_evaluations} model evaluations, {result.seconds:.1f} s)"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from videogen.info import describe

    print(describe())
    return 0


def cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from videogen.models.tiny import write_tiny_model

    path = write_tiny_model(args.out, seed=args.seed)
    print(f"wrote tiny text-to-video model to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videogen",
        description="Render videos with latent video diffusion models (UNet3D family), on one or many workers.",
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

    info = sub.add_parser("info", help="versions, devices and which optional backends work here")
    info.set_defaults(handler=cmd_info)

    tiny = sub.add_parser("build-tiny-model", help="write the tiny diffusers-format test model to a folder")
    tiny.add_argument("out", help="folder to create")
    tiny.add_argument("--seed", type=int, default=0, help="weights are deterministic in this seed (default 0)")
    tiny.set_defaults(handler=cmd_build_tiny_model)

    from videogen.noise.warp_cli import register as register_warp_noise

    register_warp_noise(sub)

    from videogen.train.cli import register as register_train
    from videogen.train.trip import register as register_train_trip

    register_train(sub)
    register_train_trip(sub)
    return parser


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may also come after the flags (``--resume x.y=1``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    args = parse_command_line(argv)
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
