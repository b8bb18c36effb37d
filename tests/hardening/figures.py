"""Figures behind the reliability goals G1–G10 (../README.md, "Reliability"): hardening tests
record the numbers they measured here, and `benchmarks/reliability.py` prints them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from django.conf import settings


def figures_dir() -> Path:
    default = Path(settings.VAR_DIR) / "reliability"
    return Path(os.environ.get("RELIABILITY_FIGURES_DIR", default))


def record(goal: str, **numbers: Any) -> None:
    """Merge `numbers` into the figures of `goal` (such as "G3"); later values win."""
    path = figures_dir() / f"{goal}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, Any] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except ValueError:
            current = {}
    current.update(numbers)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def load_all() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(figures_dir().glob("G*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue
    return out
