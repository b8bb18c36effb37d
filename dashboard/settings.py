"""Settings for the LLM gateway admin: one file, read from the environment.

Every variable is listed in README.md and `.env.example`. Development defaults are safe and need
no server: SQLite under `var/`, a local-memory cache and a filesystem Celery broker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", default=True)

# Development-only fallbacks: refused when DEBUG is off (see the checks below).
_DEV_SECRET_KEY = "dev-insecure-secret-key-change-me-0123456789abcdefghijklmnopqrstuvwxyz"
_DEV_FIELD_KEY = "ZGV2LW9ubHktZmllbGQtZW5jcnlwdGlvbi1rZXktMDA="
_HINTS = {
    "SECRET_KEY": "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(64))'",
    "FIELD_ENCRYPTION_KEY": "generate one with: python -c 'from cryptography.fernet import "
    "Fernet; print(Fernet.generate_key().decode())'",
    "ALLOWED_HOSTS": "list the host names the server answers to, e.g. gateway.example.com",
}


def refuse_to_start(name: str, problem: str) -> NoReturn:
    """Stop the process with one line naming the variable (no traceback): a server, worker or
    management command never runs with a missing or insecure secret."""
    raise SystemExit(f"Configuration error: {name} {problem}; {_HINTS[name]}")


def secret_key_problem(value: str) -> str | None:
    """What makes `value` unfit as a production SECRET_KEY (the rules of `check --deploy`)."""
    if not value:
        return "is not set (required when DEBUG is off)"
    if value == _DEV_SECRET_KEY or value.startswith("django-insecure"):
        return "is an insecure development key"
    if len(value) < 50 or len(set(value)) < 5:
        return "is too short or not random: use at least 50 random characters"
    return None


def field_keys_problem(keys: list[str]) -> str | None:
    """What makes `keys` unfit as FIELD_ENCRYPTION_KEY (never quoting a key: they are secrets)."""
    from cryptography.fernet import Fernet

    if not keys:
        return "is not set (required when DEBUG is off)"
    for number, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            return (
                f"is not a valid list of Fernet keys: key {number} of {len(keys)} is not "
                "32 url-safe base64-encoded bytes"
            )
    return None


SECRET_KEY = env_str("SECRET_KEY") or (_DEV_SECRET_KEY if DEBUG else "")
if not DEBUG and (_problem := secret_key_problem(SECRET_KEY)):
    refuse_to_start("SECRET_KEY", _problem)

# Comma-separated Fernet keys; the first encrypts, all decrypt (for key rotation).
FIELD_ENCRYPTION_KEYS = env_list("FIELD_ENCRYPTION_KEY") or ([_DEV_FIELD_KEY] if DEBUG else [])
if _problem := field_keys_problem(FIELD_ENCRYPTION_KEYS):
    refuse_to_start("FIELD_ENCRYPTION_KEY", _problem)
if not DEBUG and _DEV_FIELD_KEY in FIELD_ENCRYPTION_KEYS:
    refuse_to_start("FIELD_ENCRYPTION_KEY", "must not contain the development key")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    refuse_to_start("ALLOWED_HOSTS", "is not set (required when DEBUG is off)")
if DEBUG:
    ALLOWED_HOSTS.append("testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "orgs",
    "registry",
    "gateway",
    "batches",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "dashboard.security.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "dashboard.middleware.ApiErrorMiddleware",
]

# The JSON API never uses trailing slashes; never redirect a POST to add one.
APPEND_SLASH = False

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"
WSGI_APPLICATION = "dashboard.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.context_processors.dashboard",
                "dashboard.security.csp_nonce",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # A file, not memory, so that a live server thread sees the test data; one per test process.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
# PostgreSQL cancels a statement (or a wait for a lock) after this many milliseconds, and the
# request answers 503 instead of hanging (0: no limit).
DATABASE_STATEMENT_TIMEOUT_MS = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 30_000)
_postgres = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if _postgres and DATABASE_STATEMENT_TIMEOUT_MS > 0:
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _timeout = f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}"
    _options["options"] = f"{_options.get('options', '')} {_timeout}".strip()

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "gw"),
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or VAR_DIR / "media")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/login"

# Request bodies: JSON bodies up to this size; larger ones get a 413 in the contract's shape.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_JSON_BODY_BYTES", 5 * 1024 * 1024)

# The operator's cluster registry (read-only through the API).
CLUSTER_REGISTRY_PATH = Path(
    env_str("CLUSTER_REGISTRY_PATH") or BASE_DIR / "config" / "cluster_registry.example.yaml"
)

# CIDRs that org-registered models may reach although private or loopback.
UPSTREAM_ALLOWED_NETWORKS = env_list("UPSTREAM_ALLOWED_NETWORKS")
UPSTREAM_CONNECT_TIMEOUT = env_float("UPSTREAM_CONNECT_TIMEOUT", 5.0)
UPSTREAM_READ_TIMEOUT = env_float("UPSTREAM_READ_TIMEOUT", 120.0)

# Chat streams (POST /chat/completions/stream): identical requests within this many seconds are
# answered from cache (0 disables), and a stream whose client disconnected keeps running this
# many seconds for a resume with x-last-chunk-index (0 cancels at once).
CHAT_STREAM_CACHE_SECONDS = env_float("CHAT_STREAM_CACHE_SECONDS", 600.0)
CHAT_STREAM_RESUME_GRACE_SECONDS = env_float("CHAT_STREAM_RESUME_GRACE_SECONDS", 60.0)

# Celery: a broker that needs no server unless CELERY_BROKER_URL says otherwise.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or "filesystem://"
if CELERY_BROKER_URL == "filesystem://":
    # kombu's filesystem transport, publishing each message atomically (dashboard/broker.py).
    CELERY_BROKER_TRANSPORT = "dashboard.broker:Transport"
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
# The queue tasks go to (lets several deployments, or test runs, share one broker).
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE") or "celery"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "sweep-health": {"task": "registry.tasks.sweep_health", "schedule": 10.0},
}
# Files and batches (api-contract.md §7, §9; README "Files and batches").
FILES_MAX_UPLOAD_BYTES = env_int("FILES_MAX_UPLOAD_BYTES", 200 * 1024 * 1024)
BATCH_MAX_LINES = env_int("BATCH_MAX_LINES", 50_000)
BATCH_CONCURRENCY = env_int("BATCH_CONCURRENCY", 16)
BATCH_COMPLETION_WINDOW_SECONDS = env_int("BATCH_COMPLETION_WINDOW_SECONDS", 86_400)
BATCH_LINE_MAX_ATTEMPTS = env_int("BATCH_LINE_MAX_ATTEMPTS", 3)
# Seconds before a batch line's first retry after an upstream error (5xx, timeout, connection
# error); each further retry waits twice as long, plus up to 25% jitter, at most 30 s. An
# upstream 429 waits its Retry-After instead (at most 60 s).
BATCH_RETRY_BASE_SECONDS = env_float("BATCH_RETRY_BASE_SECONDS", 0.5)
# A worker owns a batch while its heartbeat is younger than this; then the reconciler (on beat,
# every BATCH_RECONCILE_SECONDS) hands the batch to another worker.
BATCH_LEASE_SECONDS = env_float("BATCH_LEASE_SECONDS", 60.0)
BATCH_RECONCILE_SECONDS = env_float("BATCH_RECONCILE_SECONDS", 10.0)
# A run gives its batch back to the queue after this long, so batches take turns on workers.
BATCH_SLICE_SECONDS = env_float("BATCH_SLICE_SECONDS", 60.0)
CELERY_BEAT_SCHEDULE["reconcile-batches"] = {
    "task": "batches.tasks.reconcile_batches",
    "schedule": BATCH_RECONCILE_SECONDS,
}
# Probe results kept per model for the dashboard's history.
HEALTH_HISTORY_LENGTH = env_int("HEALTH_HISTORY_LENGTH", 50)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # httpx logs every request URL at INFO; upstream URLs stay out of the logs.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
