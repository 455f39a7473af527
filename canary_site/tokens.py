"""Secrets that are shown once and stored as digests: personal API tokens and, later, evaluation
keys. A SHA-256 digest is enough because the secrets are long random strings, not passwords."""

from __future__ import annotations

import hashlib
import secrets


def new_secret(prefix: str) -> str:
    """A fresh secret like ``cnry_3q9…``; the prefix tells a reader what kind of secret it is."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
