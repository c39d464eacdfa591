"""Batches of renders: a manifest of jobs (``videogen batch``, ``python -m jobs.batch``).

:func:`~videogen.batch.manifest.load_manifest` reads a manifest, :func:`~videogen.batch.manifest.plan_batch`
expands and checks its jobs, :func:`~videogen.batch.runner.run_batch` renders the ones not yet complete.
See docs/batch.md.
"""
