"""Reliability goals G1–G10: print the figures the hardening tests measured.

    python benchmarks/reliability.py            # figures of the last test run
    python benchmarks/reliability.py --run      # run the hardening tests first (a few minutes)
    python benchmarks/reliability.py --run-all  # run the whole suite first (G4 covers all of it)

The tests record their counts under var/reliability/ (or RELIABILITY_FIGURES_DIR); each goal is
judged against its target from ../shared/RELIABILITY.md section (d).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

Figures = dict[str, Any]


def _zero(*keys: str) -> Callable[[Figures], bool]:
    return lambda f: all(f.get(k, 0) in (0, None, False, []) for k in keys)


def _at_least(key: str, n: int) -> Callable[[Figures], bool]:
    return lambda f: (f.get(key) or 0) >= n


def _all(*checks: Callable[[Figures], bool]) -> Callable[[Figures], bool]:
    return lambda f: all(check(f) for check in checks)


def _zero_suffix(*suffixes: str) -> Callable[[Figures], bool]:
    """Every figure named `…<suffix>` is 0 (and there is at least one)."""

    def check(f: Figures) -> bool:
        found = [v for k, v in f.items() if k.endswith(suffixes)]
        return bool(found) and all(v == 0 for v in found)

    return check


def _equal(a: str, b: str) -> Callable[[Figures], bool]:
    return lambda f: a in f and f.get(a) == f.get(b)


def _at_most(a: str, b: str) -> Callable[[Figures], bool]:
    return lambda f: a in f and b in f and f[a] <= f[b]


GOALS: list[tuple[str, str, str, Callable[[Figures], bool]]] = [
    (
        "G1",
        "Fuzz",
        ">=5,000 generated requests; 0 5xx, 0 non-JSON errors, 0 shape violations, 0 canary hits",
        _all(
            _at_least("requests", 5000),
            _zero("server_errors", "non_json_errors", "shape_violations", "canary_hits"),
        ),
    ),
    (
        "G2",
        "Tenancy",
        ">=300 cells; 0 cross-tenant reads or writes; empty DB diff after every denied cell",
        _all(_at_least("cells", 300), _zero("cross_tenant_leaks", "db_diffs_after_denied")),
    ),
    (
        "G3",
        "SSRF",
        ">=40 URL forms x 4 entry points rejected; 0 connections at the canary listener",
        _all(
            _at_least("forms", 40),
            lambda f: f.get("rejected", 0) == f.get("cells", -1),
            _zero("canary_connections"),
        ),
    ),
    (
        "G4",
        "Secrets",
        "provider-key canary: 0 hits in HTTP bodies, logs and DB dumps over the whole suite",
        _all(lambda f: bool(f.get("whole_suite")), _zero("hits")),
    ),
    (
        "G5",
        "Streaming",
        "T1-T10: 0 hangs past deadline+1 s, 0 500s; upstream closed <=1 s after disconnect; fds back",
        _all(
            _zero_suffix("_500s", "_hangs_past_deadline_plus_1s"),
            _zero("concurrent_streams_not_200"),
            _equal("disconnect_closed_within_1s", "disconnect_trials"),
            _at_most("client_sockets_after", "client_sockets_baseline"),
        ),
    ),
    (
        "G6",
        "Batch chaos",
        "worker SIGKILLed mid-batch and in finalize: all terminal, 0 lost, 0 duplicate custom_ids",
        _all(
            _zero("lost_lines", "duplicate_custom_ids", "orphan_blobs"),
            _equal("terminal_runs", "runs"),
            _at_most("max_extra_upstream_calls_per_run", "extra_upstream_call_bound_per_run"),
        ),
    ),
    (
        "G7",
        "Rate limit",
        "rpm=N, 10N concurrent over 2 processes: admitted <= N (overshoot 0)",
        _zero_suffix("_overshoot"),
    ),
    (
        "G8",
        "Infra",
        "PostgreSQL kill / Redis stop x10: 0 HTML 500s, back to 100% within 5 s, 0 lost tasks",
        _all(_zero_suffix("html_500s"), _zero("broker_batches_lost")),
    ),
    (
        "G9",
        "Deploy",
        "check --deploy with production settings: 0 warnings (or each silenced one justified)",
        _zero("deploy_warnings"),
    ),
    (
        "G10",
        "XSS",
        ">=30 payloads in every user-controlled field + playground output: 0 executions",
        _all(_at_least("payloads", 30), _zero("executions", "dialogs", "unexpected_requests")),
    ),
]


def figures_dir() -> Path:
    var = Path(os.environ.get("VAR_DIR", ROOT / "var"))
    return Path(os.environ.get("RELIABILITY_FIGURES_DIR", var / "reliability"))


def _run(args: list[str]) -> int:
    python = ROOT / ".venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), "-m", "pytest", "-q", *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def report() -> bool:
    base = figures_dir()
    print(f"\nReliability goals (figures from {base})\n")
    all_met = True
    for goal, title, target, check in GOALS:
        path = base / f"{goal}.json"
        if not path.exists():
            print(f"{goal:<4} {title:<12} NO FIGURES  target: {target}")
            all_met = False
            continue
        figures = json.loads(path.read_text())
        met = check(figures)
        all_met &= met
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        print(f"{goal:<4} {title:<12} {'met' if met else 'NOT MET':<11} target: {target}")
        print(f"     measured {when}: " + ", ".join(f"{k}={v}" for k, v in sorted(figures.items())))
    return all_met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="store_true", help="run the hardening tests first")
    parser.add_argument("--run-all", action="store_true", help="run the whole suite first")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args()
    if args.run_all:
        _run(["-m", "", *args.pytest_args])
    elif args.run:
        _run(["-m", "", "tests/hardening", "tests/browser/test_xss.py", *args.pytest_args])
    return 0 if report() else 1


if __name__ == "__main__":
    sys.exit(main())
