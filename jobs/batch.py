"""Ray job entrypoint: render a batch manifest on the cluster the job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \\
        -- python -m jobs.batch configs/batch_shapes.yaml out=/shared/batch [--no-progress]

Inside a submitted job Ray sets ``RAY_ADDRESS``, so the replicas run on the cluster that runs the
job; the arguments are those of ``videogen batch``, with ``launcher=ray``.
"""

from __future__ import annotations

import sys

from videogen.cli import main as videogen_main


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args.insert(1, "launcher=ray")  # right after the manifest, before any flag
    return videogen_main(["batch", *args])


if __name__ == "__main__":
    sys.exit(main())
