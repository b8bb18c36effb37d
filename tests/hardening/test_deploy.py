"""Production settings (I7, W6, goal G9): `manage.py check --deploy` is clean with the production
environment of README, and a server, worker or command refuses to start, with one line naming the
variable and no traceback, when SECRET_KEY, FIELD_ENCRYPTION_KEY or ALLOWED_HOSTS is missing or
unfit. Each case runs in a fresh Python process with only the environment it names."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hardening.figures import record

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DEV_FIELD_KEY = "ZGV2LW9ubHktZmllbGQtZW5jcnlwdGlvbi1rZXktMDA="  # dashboard/settings.py
GOOD_SECRET = secrets.token_urlsafe(64)
GOOD_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()
OLD_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()


def production_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    """README's production environment (without the servers it names: the checks need none)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DEBUG": "false",
        "SECRET_KEY": GOOD_SECRET,
        "FIELD_ENCRYPTION_KEY": f"{GOOD_KEY},{OLD_KEY}",  # mid-rotation: new first, old after
        "ALLOWED_HOSTS": "gateway.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://gateway.example.com",
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_check_deploy_is_clean_in_production(tmp_path: Path):
    result = run(
        [PYTHON, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        production_env(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNING" not in result.stdout + result.stderr
    settings = run(
        [
            PYTHON,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.SILENCED_SYSTEM_CHECKS, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, "
            "s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.X_FRAME_OPTIONS)",
        ],
        production_env(tmp_path),
    )
    assert settings.returncode == 0, settings.stderr
    assert settings.stdout.split() == ["[]", "True", "True", "True", "31536000", "DENY"]
    record("G9", deploy_warnings=0, silenced=[])


def test_check_deploy_would_report_a_weakened_setting(tmp_path: Path):
    """The clean result above means something: switching HSTS off is reported (security.W004)."""
    result = run(
        [PYTHON, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        production_env(tmp_path, SECURE_HSTS_SECONDS="0"),
    )
    assert result.returncode != 0
    assert "security.W004" in result.stdout + result.stderr


REFUSALS = [
    ("SECRET_KEY", None, "is not set"),
    ("SECRET_KEY", "", "is not set"),
    ("SECRET_KEY", "short-secret-0123456789", "too short"),
    ("SECRET_KEY", "ab" * 40, "not random"),
    ("SECRET_KEY", "django-insecure-" + secrets.token_urlsafe(50), "insecure development key"),
    (
        "SECRET_KEY",
        "dev-insecure-secret-key-change-me-0123456789abcdefghijklmnopqrstuvwxyz",
        "insecure development key",
    ),
    ("FIELD_ENCRYPTION_KEY", None, "is not set"),
    ("FIELD_ENCRYPTION_KEY", " , ", "is not set"),
    ("FIELD_ENCRYPTION_KEY", "not-a-fernet-key-but-a-secret-5f1c", "key 1 of 1 is not"),
    ("FIELD_ENCRYPTION_KEY", f"{GOOD_KEY},{GOOD_KEY[:-4]}", "key 2 of 2 is not"),
    ("FIELD_ENCRYPTION_KEY", secrets.token_hex(32), "key 1 of 1 is not"),
    ("FIELD_ENCRYPTION_KEY", f"{GOOD_KEY},{DEV_FIELD_KEY}", "development key"),
    ("ALLOWED_HOSTS", None, "is not set"),
    ("ALLOWED_HOSTS", ",", "is not set"),
]


@pytest.mark.parametrize(("name", "value", "says"), REFUSALS)
def test_the_server_refuses_to_start_with_a_bad_secret(
    tmp_path: Path, name: str, value: str | None, says: str
):
    result = run(
        [PYTHON, "-c", "import django; django.setup()"],
        production_env(tmp_path, **{name: value}),
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith(f"Configuration error: {name} "), lines[0]
    assert says in lines[0]
    assert "Traceback" not in result.stderr
    if value and name != "ALLOWED_HOSTS":
        for part in value.split(","):  # a secret is never echoed, not even a broken one
            if len(part.strip()) > 8:
                assert part.strip() not in result.stderr


def test_every_entry_point_refuses_alike(tmp_path: Path):
    """manage.py (migrate, check) and the ASGI server of README's production section stop with
    the same line, without a traceback, and before touching anything."""
    env = production_env(tmp_path, FIELD_ENCRYPTION_KEY="nope")
    commands = [
        [PYTHON, "manage.py", "migrate", "--noinput"],
        [PYTHON, "manage.py", "check", "--deploy"],
        [
            str(Path(PYTHON).parent / "uvicorn"),
            "dashboard.asgi:application",
            "--port",
            "0",
            "--no-access-log",
        ],
    ]
    for command in commands:
        result = run(command, env)
        assert result.returncode == 1, command
        assert "Traceback" not in result.stderr
        assert re.search(
            r"^Configuration error: FIELD_ENCRYPTION_KEY is not a valid list of Fernet keys",
            result.stderr,
            re.M,
        ), result.stderr
    assert not (tmp_path / "var" / "db.sqlite3").exists()  # migrate never ran


def test_development_needs_no_secret(tmp_path: Path):
    """With DEBUG on, the development defaults apply (the keys are refused only in production)."""
    env = production_env(
        tmp_path, DEBUG=None, SECRET_KEY=None, FIELD_ENCRYPTION_KEY=None, ALLOWED_HOSTS=None
    )
    result = run([PYTHON, "-c", "import django; django.setup()"], env)
    assert result.returncode == 0, result.stderr
    invalid = run(
        [PYTHON, "-c", "import django; django.setup()"],
        {**env, "FIELD_ENCRYPTION_KEY": "typo"},
    )
    assert invalid.returncode == 1  # a key that is set must be valid, also in development
    assert "FIELD_ENCRYPTION_KEY is not a valid list of Fernet keys" in invalid.stderr
