"""Senders of alert notifications: email (Django mail), Slack incoming webhook, signed webhook.

Each sender either returns (delivered) or raises `DeliveryFailed`; the outbox decides about
retries. A webhook body is signed with HMAC-SHA256 under ``CANARY_WEBHOOK_SECRET`` in the
``X-Canary-Signature: sha256=<hex>`` header; ``X-Canary-Delivery`` carries the notification's
unique key, so a receiver can drop a redelivery after a lost acknowledgement.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from typing import Any

from django.core.mail import EmailMessage

from health import conf

SIGNATURE_HEADER = "X-Canary-Signature"
DELIVERY_HEADER = "X-Canary-Delivery"
EVENT_HEADER = "X-Canary-Event"
USER_AGENT = "Canary-Notifier/1"


class DeliveryFailed(Exception):
    """A notification that did not go out this time; ``permanent`` ones are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(body: bytes, header: str, secret: str) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant time)."""
    return hmac.compare_digest(sign(body, secret), header or "")


def send(*, channel: str, target: str, subject: str, payload: dict[str, Any], key: str) -> None:
    """Deliver one notification; raises DeliveryFailed when it did not go out."""
    if channel == "email":
        _send_email(target=target, subject=subject, payload=payload, key=key)
    elif channel == "slack":
        body = json.dumps({"text": payload.get("text", subject)}).encode()
        _post(target, body, {"Content-Type": "application/json"})
    elif channel == "webhook":
        secret = conf.webhook_secret()
        if not secret:
            raise DeliveryFailed(
                "CANARY_WEBHOOK_SECRET is not set, so the webhook cannot be signed"
            )
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        _post(
            target,
            body,
            {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(body, secret),
                DELIVERY_HEADER: key,
                EVENT_HEADER: str(payload.get("event", "")),
            },
        )
    else:
        raise DeliveryFailed(f"unknown channel {channel!r}", permanent=True)


def _send_email(*, target: str, subject: str, payload: dict[str, Any], key: str) -> None:
    message = EmailMessage(
        subject=subject,
        body=str(payload.get("text", subject)),
        from_email=conf.email_from(),
        to=[target],
        headers={DELIVERY_HEADER: key},
    )
    try:
        sent = message.send(fail_silently=False)
    except Exception as error:  # SMTP and socket errors alike: retry later
        raise DeliveryFailed(f"email: {error.__class__.__name__}: {error}") from error
    if sent != 1:
        raise DeliveryFailed("email: the mail backend sent nothing")


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    if not url.startswith(("http://", "https://")):
        raise DeliveryFailed(f"not an http(s) URL: {url!r}", permanent=True)
    request = urllib.request.Request(
        url, data=body, headers={**headers, "User-Agent": USER_AGENT}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=conf.notify_timeout_seconds()) as response:
            response.read(1024)
    except urllib.error.HTTPError as error:
        raise DeliveryFailed(f"HTTP {error.code} from the receiver") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DeliveryFailed(f"could not reach the receiver: {reason}") from error
