"""Is a batch job's output already complete? Judged from the records videogen writes beside it.

Every completed render writes ``OUTPUT``, then ``OUTPUT.job.yaml`` (the resolved job, seed included)
and ``OUTPUT.meta.json``, each atomically (:mod:`videogen.io.atomic`). An output is complete for a
job when all three exist, the job record equals the job (so a changed manifest renders that job
again), the meta record's frame count is the job's, and the output holds that many frames as far
as it can be told without decoding (a PNG folder's frame files, an mp4's frame count). What the
renderer resolves for a job is read back from the record: a drawn seed (``noise.seed: -1``) and
a checkpoint interval chosen by the launcher when the job asks for none. Anything else is
rendered again.

An output that exists with neither record beside it was not written by videogen (or its records
were removed by hand): the batch refuses to replace it (:func:`foreign_output`), as ``videogen
render`` refuses a folder that holds anything but frames.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from videogen.config import JobConfig, load_layers, output_format, to_yaml
from videogen.errors import VideogenError


@dataclass(frozen=True)
class OutputState:
    """``complete``: the output is this job's, whole. ``note``: why it is not (or what was checked)."""

    complete: bool
    note: str
    seed: int | None = None
    frames: int | None = None


def job_record(output: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output)}.job.yaml")


def meta_record(output: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output)}.meta.json")


def foreign_output(job: JobConfig) -> str | None:
    """Why ``job.output.path`` holds a file videogen did not write (it exists, without either record), or None.

    A PNG folder is left to :func:`videogen.pipeline.check_output`, which replaces a folder of frames only.
    """
    output = Path(job.output.path)
    if not output.exists() or output.is_dir():
        return None
    if job_record(output).exists() or meta_record(output).exists():
        return None
    return (
        f"{output} exists and videogen did not write it (neither {job_record(output).name} nor "
        f"{meta_record(output).name} is beside it); move it away or give the job another name"
    )


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def first_difference(recorded: JobConfig, job: JobConfig) -> str:
    """The first render-job key whose value differs between two jobs (``?`` if none is found)."""
    a = _flat(OmegaConf.to_container(OmegaConf.structured(recorded)))
    b = _flat(OmegaConf.to_container(OmegaConf.structured(job)))
    return next((key for key in b if a.get(key) != b[key]), next((key for key in a if key not in b), "?"))


def _frames_in_output(output: Path) -> int | None:
    """How many frames ``output`` holds, where that is known without decoding; None where it is not."""
    kind = output_format(str(output))
    if kind == "png":
        from videogen.io.writer import FRAME_NAME

        return sum(1 for entry in output.iterdir() if FRAME_NAME.match(entry.name)) if output.is_dir() else 0
    if kind == "mp4":
        import av

        try:
            with av.open(str(output)) as container:
                counted = container.streams.video[0].frames if container.streams.video else 0
        except (av.FFmpegError, OSError, IndexError):
            return 0
        return counted or None
    return None


def output_state(job: JobConfig) -> OutputState:
    """Whether ``job``'s output is complete, from its records (see the module's docstring)."""
    output = Path(job.output.path)
    if not output.exists():
        return OutputState(False, "no output yet")
    meta_path, record_path = meta_record(output), job_record(output)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return OutputState(False, f"no {meta_path.name}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return OutputState(False, f"{meta_path.name} is not readable JSON")
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), int) or not isinstance(meta.get("seed"), int):
        return OutputState(False, f"{meta_path.name} is not a render's record")
    if not record_path.is_file():
        return OutputState(False, f"no {record_path.name}")
    try:
        recorded: JobConfig = load_layers(JobConfig, record_path).config
    except VideogenError:
        return OutputState(False, f"{record_path.name} is not a job this version reads")
    expected = copy.deepcopy(job)
    if job.noise.seed == -1:  # a drawn seed: the record holds the one drawn
        expected.noise.seed = recorded.noise.seed
    if to_yaml(recorded) != to_yaml(expected):
        return OutputState(False, f"{record_path.name} differs at {first_difference(recorded, expected)}")
    if meta["seed"] != recorded.noise.seed:
        return OutputState(False, f"{meta_path.name} and {record_path.name} name different seeds")
    frames = job.video.num_frames
    if meta["frames"] != frames:
        return OutputState(False, f"{meta_path.name} records {meta['frames']} frames, the job asks for {frames}")
    held = _frames_in_output(output)
    if held is not None and held != frames:
        return OutputState(False, f"{output.name} holds {held} frames, not {frames}")
    return OutputState(True, "complete: records match", meta["seed"], frames)
