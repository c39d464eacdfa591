"""``videogen train TRAIN.yaml [key=value ...] [--resume]``."""

from __future__ import annotations

import argparse

TRAIN_EPILOG = """\
overrides are key=value pairs merged over the training file, e.g.
  videogen train configs/train_shapes.yaml out=out/my_model unet.steps=500 ray.workers=2

sections and keys (see configs/train_shapes.yaml and docs/training.md for every default):
  out, stages (list of vae|image|unet|trip|layout), seed, device, threads, log_every, save_dtype (fp32|fp16)
  data      source (shapes|videos), videos (files/folders), manifest, backend (auto|pyav|decord),
            width, height, frames, frame_stride, seed, caption_dropout,
            world.{size_range,two_objects,still,textured,pan,fit_path}
  model     init (a diffusers-format folder to fine-tune), prediction_type (auto|epsilon|v_prediction),
            architecture.{vae_channels,unet_channels,latent_channels,unet_layers_per_block,
            vae_layers_per_block,attention_head_dim,norm_groups,text_dim,text_layers,text_heads,
            max_tokens,words,zero_init_cross_attention,pooled_text}
  vae       steps, batch_size, lr, warmup_steps, weight_decay, grad_clip, ema_decay, checkpoint_every, kl_weight
  image     the same, and train_text_encoder, dropout (the UNet on single frames, before unet)
  unet      the same, and train_text_encoder, dropout, warped_fraction, warp_upsample,
            degradation [low, high], timestep_range [low, high], motion_weight
  trip      the same, and dim, heads, patch_size
  layout    the same, and kind (mean|objects), clips, hidden, frequencies, slots (the text-to-layout prior,
            docs/layout.md)
  ray       workers (>1: DDP on Ray Train workers), address, use_gpu, cpus_per_worker
"""


def cmd_train(args: argparse.Namespace) -> int:
    from videogen.train.config import load_train_job

    job = load_train_job(args.job, args.overrides).config
    if job.ray.workers > 1:
        from parallel.train_ddp import train_on_ray

        result = train_on_ray(job, resume=args.resume, progress=not args.no_progress)
    else:
        from videogen.train.run import train_job

        result = train_job(job, resume=args.resume, progress=not args.no_progress)
    for name, stage in result.stages.items():
        last = f"last loss {stage.losses[-1]:.4f}" if stage.losses else "nothing to do"
        print(f"{name}: {len(stage.losses)} steps, {last}, {stage.seconds:.0f} s")
    print(f"wrote {result.out} ({result.seconds:.0f} s); render it with model.path={result.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a text-to-video model (VAE, text encoder + UNet on stills and clips, TRIP fusion)",
        description="Train the stages of a YAML training job into a diffusers-format model folder.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job", help="training YAML file (configs/train_shapes.yaml is the bundled model's)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides merged over the file")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT/train/")
    parser.add_argument("--no-progress", action="store_true", help="log loss lines instead of a progress bar")
    parser.set_defaults(handler=cmd_train)
