"""Render-job keys written inside other files: ``videogen eval``'s ``base`` and suite overrides, and a
batch manifest's ``base``, variants and listed jobs.

Such a value is a mapping with dotted (``video.width: 64``) or nested (``video: {width: 64}``) keys,
or a list of ``"section.key=value"`` strings read as YAML like command-line overrides. Within one
mapping a key written dotted gives way to the same key written nested; a command-line override
(``base.video.width=32``) arrives nested, so it wins over the file's key in either form. Only
OmegaConf is imported here, so the command line stays quick.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

Problem = tuple[str, str]
"""(key as the file spells it, what is wrong)."""


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def plain(value: Any) -> Any:
    """``value`` with OmegaConf containers turned into plain dicts and lists."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _flatten(mapping: dict, prefix: str = "", dots: int = 0) -> list[tuple[str, Any, int]]:
    """``(dotted key, value, dots written inside the mapping's own keys)`` for every leaf."""
    items: list[tuple[str, Any, int]] = []
    for name, value in mapping.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        written = dots + str(name).count(".")
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, key, written))
        else:
            items.append((key, value, written))
    return items


def mapping_items(mapping: dict) -> list[tuple[str, Any]]:
    """A mapping's render-job keys in merge order: a key written dotted before one written nested, else
    in the mapping's order, so a later item wins."""
    ordered = sorted(_flatten(mapping), key=lambda item: -item[2])  # stable: the mapping's order within a rank
    return [(key, value) for key, value, _ in ordered]


def override_items(value: Any, where: str) -> tuple[list[tuple[str, Any, str]], list[Problem]]:
    """Render-job keys of a mapping or a list of ``"section.key=value"`` as ``(job key, value, file key)``
    triples; ``where`` is the value's own key in the file."""
    value = plain(value)
    if value is None:
        return [], []
    if isinstance(value, dict):
        return [(key, item, f"{where}.{key}") for key, item in mapping_items(value)], []
    if not isinstance(value, list):
        return [], [(where, "a mapping {section.key: value} or a list of 'section.key=value'")]
    items, problems = [], []
    for j, entry in enumerate(value):
        key = f"{where}[{j}]"
        if not isinstance(entry, str) or "=" not in entry or entry.startswith("="):
            problems.append((key, f"{entry!r} does not look like section.key=value"))
            continue
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([entry]), resolve=True)
        except OmegaConfBaseException as error:
            problems.append((key, f"{entry!r}: {first_line(error)}"))
            continue
        items.extend((name, item, key) for name, item in mapping_items(parsed))
    return items, problems


def nested(key: str, value: Any) -> dict:
    """``{"a": {"b": value}}`` for ``key = "a.b"``."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def seed_problem(seeds: Any) -> str | None:
    """What is wrong with ``seeds`` (a count >= 1 or a non-empty list of distinct seeds >= 0), or None."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return None if seeds >= 1 else f"{seeds}: a count of seeds is >= 1"
    if isinstance(seeds, (list, tuple)):
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if not seeds or bad:
            return f"{list(seeds)}: a list of seeds holds integers >= 0 (and at least one)"
        if len(set(seeds)) != len(seeds):
            return f"{list(seeds)}: a seed is listed twice (two renders would be the same video)"
        return None
    return f"{seeds!r}: a count (seeds 0 .. n-1) or a list of seeds"
