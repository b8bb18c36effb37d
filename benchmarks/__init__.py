"""Benchmarks: scripts that print numbers (not tests)."""

from __future__ import annotations
