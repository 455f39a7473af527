"""A service's provider settings (``Service.provider_config``), read and checked with the path
of each field (``provider_config.runtimeApi``), the way every definition in Canary is read
(``canary_site.reading``).

- ``builtin``: no settings (``{}``).
- ``haproxy``: ``{"runtimeApi": "unix:/run/haproxy/admin.sock" | "127.0.0.1:9999",
  "backend": "be_shop", "serverPrefix": ""}``. The backend belongs to Canary: each target is
  the server ``<serverPrefix><target name>``, and a server of the backend with the prefix that
  is no target gets weight 0.
- ``nginx``: ``{"configPath": "/etc/nginx/conf.d/canary-shop.conf", "testCommand": ["nginx",
  "-t"], "reloadCommand": ["nginx", "-s", "reload"], "accessLog":
  "/var/log/nginx/canary-shop.log", "listen": "8080", "serverName": "_"}``; ``accessLog``,
  ``listen`` and ``serverName`` are optional. The paths must lie under ``CANARY_NGINX_DIRS``
  and the commands start one of ``CANARY_NGINX_COMMANDS`` (``providers.conf``): whoever may
  change a service chooses them, and the worker runs them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from canary_site.reading import Fields, index_path
from routing.choices import ProviderKind
from routing.providers import conf

FIELD = "provider_config"

# HAProxy's proxy and server names: letters, digits, '-', '_', '.' and ':'.
_HAPROXY_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
_HAPROXY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{0,30}\Z")
_TCP_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})\Z")
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]:|[0-9.]+:|[A-Za-z0-9.-]+:)?[0-9]{1,5}\Z")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_.*~^$-]{1,253}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
NGINX_CONFIG_DIRECTORY = "/etc/nginx"


class InvalidProviderConfig(ValueError):
    """A provider setting that cannot be used; ``field`` is its path from the service."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class HaproxyConfig:
    runtime_api: str
    backend: str
    server_prefix: str = ""

    def server_name(self, target: str) -> str:
        return f"{self.server_prefix}{target}"


@dataclass(frozen=True)
class NginxConfig:
    config_path: str
    reload_command: tuple[str, ...]
    test_command: tuple[str, ...]
    access_log: str | None = None
    listen: str = "8080"
    server_name: str = "_"


ProviderConfig = HaproxyConfig | NginxConfig | None


def parse_provider_config(provider: str, data: Any) -> ProviderConfig:
    """The settings of ``provider`` read from ``data``; raises `InvalidProviderConfig`."""
    if provider == ProviderKind.BUILTIN:
        if data not in (None, {}):
            raise InvalidProviderConfig(FIELD, "the built-in proxy takes no settings; send {}")
        return None
    fields = Fields(data if data is not None else {}, FIELD, InvalidProviderConfig)
    if provider == ProviderKind.HAPROXY:
        return _haproxy(fields)
    if provider == ProviderKind.NGINX:
        return _nginx(fields)
    raise InvalidProviderConfig("provider", f"must be one of {', '.join(ProviderKind.values)}")


def config_key(provider: str, data: Any) -> str:
    """A digest of the settings, so bookkeeping that belongs to one data plane (its counters,
    an access log's offset) is not carried over to another."""
    text = json.dumps([provider, data], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _unknown(fields: Fields, allowed: tuple[str, ...]) -> None:
    extra = fields.unknown(allowed)
    if extra is not None:
        fields.fail(extra, f"is not a setting of this provider (it takes {', '.join(allowed)})")


def _text(fields: Fields, key: str, default: Any = ...) -> str:
    value = fields.value(key) if default is ... else fields.value(key, default)
    if not isinstance(value, str):
        fields.fail(key, "must be a string")
    if _CONTROL.search(value):
        fields.fail(key, "must not contain control characters")
    return value


def _haproxy(fields: Fields) -> HaproxyConfig:
    _unknown(fields, ("runtimeApi", "backend", "serverPrefix"))
    api = _text(fields, "runtimeApi").strip()
    if api.startswith("unix:"):
        path = api[len("unix:") :]
        if not path.startswith("/"):
            fields.fail("runtimeApi", "a unix socket is an absolute path: unix:/run/haproxy.sock")
    else:
        match = _TCP_ADDRESS.match(api)
        if match is None or not 0 < int(match.group(2)) < 65536:
            fields.fail(
                "runtimeApi", "is unix:/path/to/admin.sock or host:port (such as 127.0.0.1:9999)"
            )
    backend = _text(fields, "backend")
    if not _HAPROXY_NAME.match(backend):
        fields.fail("backend", "is 1 to 64 letters, digits or _.:- (HAProxy's names)")
    prefix = _text(fields, "serverPrefix", "")
    if not _HAPROXY_PREFIX.match(prefix):
        fields.fail("serverPrefix", "is at most 30 letters, digits or _.:-")
    return HaproxyConfig(runtime_api=api, backend=backend, server_prefix=prefix)


def _inside_allowed(fields: Fields, key: str, path: str) -> str:
    if not path.startswith("/"):
        fields.fail(key, "must be an absolute path")
    if ".." in path.split("/"):
        fields.fail(key, "must not contain '..'")
    directories = conf.nginx_directories()
    if not _under(path, directories) or posixpath.normpath(path) in map(
        posixpath.normpath, directories
    ):
        allowed = ", ".join(directories) or "none (CANARY_NGINX_DIRS is empty)"
        fields.fail(key, f"must lie under one of {allowed} (CANARY_NGINX_DIRS)")
    return posixpath.normpath(path)


def _command(fields: Fields, key: str) -> tuple[str, ...]:
    items = fields.items(key)
    if not items:
        fields.fail(key, "is required: a list of the program and its arguments")
    words: list[str] = []
    for path, item in items:
        if not isinstance(item, str) or not item or _CONTROL.search(item):
            raise InvalidProviderConfig(path, "must be a non-empty string")
        words.append(item)
    allowed = conf.nginx_commands()
    if words[0] not in allowed:
        raise InvalidProviderConfig(
            index_path(fields.field(key), 0),
            f"must be one of {', '.join(allowed) or 'none'} (CANARY_NGINX_COMMANDS)",
        )
    # nginx's -g adds global directives (load_module among them) from the command line, and
    # -c or -p would read a main configuration from anywhere: both could load code.
    for index, word in enumerate(words):
        path = index_path(fields.field(key), index)
        if word.startswith("-g"):
            raise InvalidProviderConfig(path, "-g (global directives) is not allowed")
        if word.startswith(("-c", "-p")):
            value = word[2:] or (words[index + 1] if index + 1 < len(words) else "")
            where = path if word[2:] else index_path(fields.field(key), index + 1)
            if not _under(value, [*conf.nginx_directories(), NGINX_CONFIG_DIRECTORY]):
                raise InvalidProviderConfig(
                    where,
                    f"{word[:2]} must name a path under {NGINX_CONFIG_DIRECTORY} or "
                    "CANARY_NGINX_DIRS",
                )
    return tuple(words)


def _under(path: str, directories: list[str]) -> bool:
    if not path.startswith("/") or ".." in path.split("/"):
        return False
    normal = posixpath.normpath(path)
    return any(
        normal == posixpath.normpath(directory)
        or normal.startswith(posixpath.normpath(directory).rstrip("/") + "/")
        for directory in directories
    )


def _nginx(fields: Fields) -> NginxConfig:
    _unknown(
        fields,
        ("configPath", "reloadCommand", "testCommand", "accessLog", "listen", "serverName"),
    )
    config_path = _inside_allowed(fields, "configPath", _text(fields, "configPath"))
    access_log = fields.value("accessLog", None)
    if access_log is not None:
        access_log = _inside_allowed(fields, "accessLog", _text(fields, "accessLog"))
        if access_log == config_path:
            fields.fail("accessLog", "must not be the configuration file")
    listen = _text(fields, "listen", "8080")
    if not _LISTEN.match(listen):
        fields.fail("listen", "is a port or address:port")
    server_name = _text(fields, "serverName", "_")
    if not _SERVER_NAME.match(server_name):
        fields.fail("serverName", "is a host name")
    return NginxConfig(
        config_path=config_path,
        reload_command=_command(fields, "reloadCommand"),
        test_command=_command(fields, "testCommand"),
        access_log=access_log,
        listen=listen,
        server_name=server_name,
    )
