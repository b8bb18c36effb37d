"""Every environment variable the code reads is documented: in README's configuration table and
in `.env.example` (issue: "all listed in .env.example and README")."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dashboard", "orgs", "registry", "gateway", "batches")
# env_str("NAME"...), env_int(...), os.environ.get("NAME"), os.environ["NAME"], os.getenv("NAME")
READ = re.compile(
    r"""(?:env_\w+\(|os\.environ\.get\(|os\.environ\[|os\.getenv\()\s*["']([A-Z][A-Z0-9_]+)["']"""
)
# Read by the code but not configuration: a crash point for the fault tests (README "Tests").
TEST_ONLY = {"BATCH_FAILPOINT"}


def _read_by_code() -> set[str]:
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names |= set(READ.findall(path.read_text()))
    return names


def test_the_scan_finds_the_variables_it_should() -> None:
    names = _read_by_code()
    assert {"DATABASE_URL", "REDIS_URL", "FIELD_ENCRYPTION_KEY", "BATCH_FAILPOINT"} <= names
    assert len(names) > 30


def test_every_variable_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    missing = sorted(n for n in _read_by_code() - TEST_ONLY if f"`{n}`" not in table)
    assert not missing, f"add to README's configuration table: {missing}"
    assert "`BATCH_FAILPOINT`" in readme  # explained in "Tests"


def test_every_variable_is_in_env_example() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    missing = sorted(_read_by_code() - TEST_ONLY - listed)
    assert not missing, f"add to .env.example: {missing}"
