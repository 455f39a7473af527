"""Traffic providers: the data planes outside Canary that serve a service's traffic (HAProxy
through its Runtime API, nginx by reload), told every change of weights by the control loop
(``sync.py``). ``base.py`` says what a provider does."""

from __future__ import annotations

from routing.choices import ProviderKind
from routing.providers.base import Provider, ProviderError
from routing.providers.haproxy import HaproxyProvider
from routing.providers.nginx import NginxProvider

PROVIDERS: dict[str, Provider] = {
    ProviderKind.HAPROXY: HaproxyProvider(),
    ProviderKind.NGINX: NginxProvider(),
}


def provider_for(kind: str) -> Provider | None:
    """The provider of ``kind``; None for the built-in proxy, which needs no telling."""
    return PROVIDERS.get(kind)


__all__ = ["PROVIDERS", "Provider", "ProviderError", "provider_for"]
