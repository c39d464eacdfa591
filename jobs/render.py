"""Ray job entrypoint: render a YAML job on the cluster the job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \\
        -- python -m jobs.render configs/long_video.yaml model.unet=/models/vc2_unet [--resume]

Inside a submitted job Ray sets ``RAY_ADDRESS``, so the workers join the cluster that runs the
job; the arguments are those of ``videogen render``.
"""

from __future__ import annotations

import sys

from videogen.cli import main as videogen_main


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args.insert(1, "parallel.launcher=ray")  # right after the job file, before any flag
    return videogen_main(["render", *args])


if __name__ == "__main__":
    sys.exit(main())
