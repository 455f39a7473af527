"""DRF authentication by personal API token: ``Authorization: Bearer <token>`` (or ``Token``)."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions

from canary_site import selectors, services

SCHEMES = (b"bearer", b"token")


class ApiTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() not in SCHEMES:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            secret = header[1].decode()
        except UnicodeError as error:
            raise exceptions.AuthenticationFailed("Token contains invalid characters.") from error
        token = selectors.api_token_for_secret(secret=secret)
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        services.api_token_touch(token=token)
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="api"'
