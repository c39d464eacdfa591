"""``videogen batch MANIFEST.yaml [key=value ...] [--no-progress]``: render a manifest of jobs.

Built only when ``batch`` is the command given (:data:`videogen.cli.LAZY_COMMANDS`).
"""

from __future__ import annotations

import argparse

BATCH_EPILOG = """\
overrides are key=value pairs merged over the manifest, e.g.
  videogen batch configs/batch_shapes.yaml seeds=4 out=out/more base.sampler.steps=10

manifest keys (see configs/batch_shapes.yaml and docs/batch.md):
  job           a render-job file: the base job (optional)
  base          render-job keys over it, dotted or nested: {video.width: 64, sampler.steps: 10}
                (or a list of "section.key=value")
  prompts       a list of prompts: one job per prompt (empty: the base job's prompt)
  seeds         a count n (seeds 0 .. n-1) or a list of seeds (null: the base job's seed)
  overrides     a list of variants, each render-job keys over base (empty: one variant, the base)
  grid          {section.key: [values]}: every combination, crossed with overrides
  jobs          jobs listed by hand after the product: {overrides: {render-job keys}, name: template}
  out           the folder for outputs and batch.json (default out/batch)
  name          the output name template, relative to out (default {index:03d}_{prompt_slug}_s{seed}.mp4);
                fields: index, variant, seed, prompt_slug, or a render-job key such as {video.width};
                .mp4, .gif, or no suffix for a folder of PNG frames
  launcher      ray (replicas on a Ray cluster, as many at once as it holds) or local (one after
                another in this process)
  max_parallel  at most this many replicas at once (0: as many as the cluster holds)

The product is overrides x grid x prompts x seeds, numbered in that order; listed jobs follow.
output.path is never set in a manifest (out and name decide it); ray.address only in base.
A job whose output is complete by its records (OUTPUT.job.yaml equal to the job, OUTPUT.meta.json
with its frame count) is skipped. Prints a table of every job (done, skipped or failed) and writes
OUT/batch.json; the exit status is 1 when a job failed.
"""


def cmd_batch(args: argparse.Namespace) -> int:
    from videogen.batch.manifest import load_manifest, plan_batch
    from videogen.batch.runner import run_batch, summary_table

    plan = plan_batch(load_manifest(args.manifest, args.overrides))
    report = run_batch(plan, progress=not args.no_progress)
    print(summary_table(report))
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items() if n)
    print(f"{len(report.rows)} jobs ({counts}) in {report.seconds:.1f} s; wrote {report.summary}")
    return 1 if report.failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``batch`` subcommand; its handler is ``args.handler(args) -> int``."""
    parser = subparsers.add_parser(
        "batch",
        help="render a manifest of many jobs (prompts x seeds x overrides), skipping complete outputs",
        description=(
            "Render every job of a batch manifest: a base job multiplied by prompts, seeds and variants, "
            "and jobs listed by hand. Every job is checked before anything renders; complete outputs are "
            "skipped; a failed job is recorded and the others go on."
        ),
        epilog=BATCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", help="batch manifest YAML (configs/batch_shapes.yaml is a starting point)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides merged over the manifest")
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    parser.set_defaults(handler=cmd_batch)
