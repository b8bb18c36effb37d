"""Encryption at rest for provider secrets (Fernet, keys from FIELD_ENCRYPTION_KEY).

FIELD_ENCRYPTION_KEY holds one or more comma-separated Fernet keys: the first encrypts, every one
decrypts. To rotate, put a new key first, keep the old one after it, run
`python manage.py rotate_encryption_key`, then drop the old key.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEY must be comma-separated Fernet keys "
            "(32 url-safe base64-encoded bytes each)"
        ) from None


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "a stored secret cannot be decrypted with FIELD_ENCRYPTION_KEY (wrong or removed key)"
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt under the first key (ImproperlyConfigured if no key decrypts `token`)."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "a stored secret cannot be decrypted with FIELD_ENCRYPTION_KEY (wrong or removed key)"
        ) from None
