"""``videogen info``: versions, devices, and which optional backends actually work here."""

from __future__ import annotations

import importlib

import torch

from videogen.pipeline import package_versions


def _xformers_status() -> str:
    try:
        importlib.import_module("xformers.ops")
    except ImportError:
        return "not installed (pip install 'videogen[xformers]'; CUDA only)"
    if not torch.cuda.is_available():
        return "installed, unusable here (needs a CUDA device)"
    from videogen.errors import ConfigError
    from videogen.models.attention import _xformers_trial

    try:
        _xformers_trial(torch.device("cuda"), torch.float16)
    except ConfigError as error:
        return f"installed, trial failed: {error}"
    return "usable (model.attention: xformers)"


def _module_status(name: str, absent: str) -> str:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return absent
    return f"usable ({getattr(module, '__version__', 'version unknown')})"


def describe() -> str:
    lines = ["videogen environment", ""]
    lines += [f"  {name:<13}{version}" for name, version in package_versions().items()]
    lines.append("")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"  cuda:{i}       {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("  devices      cpu only (no CUDA device visible)")
    lines.append(f"  cpu threads  {torch.get_num_threads()}")
    lines.append("")
    lines.append(f"  attention    sdpa: usable; xformers: {_xformers_status()}")
    lines.append(
        f"  video read   pyav: {_module_status('av', 'missing')}; decord: "
        f"{_module_status('decord', 'not installed (optional, x86-64 only)')}"
    )
    lines.append(
        f"  distributed  gloo: {'usable' if torch.distributed.is_gloo_available() else 'missing'}; "
        f"nccl: {'usable' if torch.cuda.is_available() and torch.distributed.is_nccl_available() else 'no'}"
    )
    lines.append(f"  ray          {_module_status('ray', 'not installed')}")
    return "\n".join(lines)
