"""The nginx export: it passes ``nginx -t`` and real nginx splits real traffic with it."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from routing import services
from routing.exporters import MapBlock, comment, map_key, quote
from tests.conftest import wait_for
from tests.routing.conftest import CANARY, STABLE, fetch_many, free_port, http_get

pytestmark = pytest.mark.django_db

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

MAIN_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/canary.conf;
}}
"""


@pytest.fixture
def client(engineer) -> APIClient:
    client = APIClient()
    client.force_authenticate(engineer)
    return client


def export(client: APIClient, tmp_path: Path, service: str, listen: str) -> Path:
    response = client.get(f"/api/v1/routing/services/{service}/nginx.conf", {"listen": listen})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    (tmp_path / "canary.conf").write_text(response.content.decode())
    main = tmp_path / "nginx.conf"
    main.write_text(MAIN_CONF.format(tmp=tmp_path))
    return main


def nginx_test(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            NGINX,
            "-t",
            "-p",
            str(conf.parent),
            "-c",
            str(conf),
            "-e",
            str(conf.parent / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_nginx_export__of_every_kind_of_rule__passes_nginx_t(client, tmp_path):
    service = services.service_create(name="checkout", stable_version="1.4.0")
    for name, endpoint, version, healthy in [
        ("stable-1", "http://127.0.0.1:9001", "1.4.0", True),
        ("stable-2", "http://stable-2.internal:9001", "1.4.0", False),
        ("canary-1", "https://10.0.0.9:8443", "1.5.0", True),
    ]:
        services.target_create(
            service=service, name=name, endpoint=endpoint, version=version, healthy=healthy
        )
    services.rule_create(
        service=service,
        name="internal",
        priority=1,
        conditions=[
            {"source": "client_ip", "operator": "cidr", "values": ["10.0.0.0/8", "fd00::/8"]},
            {"source": "path", "operator": "regex", "values": [r'^/api/v[12]/"\d+$']},
            {"source": "method", "operator": "in", "values": ["GET", "HEAD"]},
        ],
        targets={"canary-1": 100},
        rate_limit={"rps": 0.5, "burst": 2},
    )
    services.rule_create(
        service=service,
        name="pinned",
        priority=2,
        strategy="header",
        strategy_key="x-target",
        conditions=[{"source": "cookie", "name": "beta", "operator": "prefix", "values": ["y"]}],
        targets={"stable-1": 50, "canary-1": 50},
    )
    services.rule_create(
        service=service,
        name="pool",
        priority=3,
        strategy="least_connections",
        conditions=[
            {"source": "query", "name": "pool", "operator": "contains", "values": ["1"]},
            {
                "source": "header",
                "name": "x-no",
                "operator": "equals",
                "values": ["1"],
                "negate": True,
            },
        ],
        targets={"stable-1": 0, "stable-2": 0},
    )
    services.rule_create(
        service=service,
        name="split",
        priority=10,
        targets={"stable-1": 87.5, "canary-1": 12.5},
        affinity={"type": "cookie", "name": "canary_session", "ttl_s": 3600, "secure": True},
        failover={"retries": 2, "fallback_target_ids": ["stable-2"], "fail_open": False},
        circuit_breaker={"failure_threshold": 3, "recovery_timeout_s": 30},
        rate_limit={"rps": 200, "burst": 50},
    )

    conf = export(client, tmp_path, "checkout", f"127.0.0.1:{free_port()}")
    result = nginx_test(conf)

    assert result.returncode == 0, result.stderr + (tmp_path / "canary.conf").read_text()
    text = (tmp_path / "canary.conf").read_text()
    assert "split_clients" in text and "least_conn;" in text and "limit_req_zone" in text
    assert "12.50%" in text


def test_nginx_export__real_nginx_splits_traffic_within_3_percent__and_honours_rules(
    client, tmp_path, backends, spawn
):
    stable, canary = backends
    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    services.target_create(service=service, name="canary", endpoint=canary.url, version=CANARY)
    services.rule_create(
        service=service,
        name="beta",
        priority=1,
        conditions=[{"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]}],
        targets={"canary": 100},
    )
    services.rule_create(
        service=service,
        name="sticky",
        priority=2,
        conditions=[{"source": "path", "operator": "prefix", "values": ["/app"]}],
        targets={"stable": 50, "canary": 50},
        affinity={"type": "cookie", "name": "shop_session", "ttl_s": 600},
    )
    services.rule_create(
        service=service, name="split", priority=3, targets={"stable": 70, "canary": 30}
    )
    port = free_port()
    conf = export(client, tmp_path, "shop", f"127.0.0.1:{port}")
    assert nginx_test(conf).returncode == 0
    nginx = spawn(
        "nginx",
        [
            NGINX,
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            "daemon off;",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: http_get(f"{url}/", timeout=1), timeout=20), nginx.output()

    answers = fetch_many(url, [{}] * 4000)

    assert all(answer.status == 200 for answer in answers)
    assert all(answer.body.decode() == answer.version for answer in answers)
    share = sum(answer.version == CANARY for answer in answers) / len(answers)
    assert abs(share - 0.30) <= 0.03
    beta = fetch_many(url, [{"headers": {"X-Beta": "1"}}] * 50)
    assert {answer.version for answer in beta} == {CANARY}

    first = fetch_many(url, [{"path": "/app"}] * 10)
    for answer in first:
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("shop_session=") and "Max-Age=600" in cookie
        again = fetch_many(
            url, [{"path": "/app", "headers": {"Cookie": cookie.split(";", 1)[0]}}] * 10
        )
        assert {later.version for later in again} == {answer.version}
        assert all(not later.headers.get("set-cookie") for later in again)


# -- values that are awkward for nginx but valid ------------------------------------------------

# Everything nginx's parser gives a meaning to: quotes, backslashes, variables, blocks, the end of
# a directive, comments, spaces; and text outside ASCII.
AWKWARD = 'a"b\\c$d${e}{f};g#h i'
UNICODE = "é✓ ünï 中文"
# A rule name that would be configuration anywhere but inside a comment of one line.
NAME = "odd } server { listen 1; location / { return 200; } } # " + UNICODE


@dataclass(frozen=True)
class Directive:
    blocks: tuple[str, ...]  # the blocks around it, outermost first
    words: tuple[str, ...]
    opens_block: bool


def directives(text: str) -> list[Directive]:
    """Every directive in ``text`` as nginx's parser reads it.

    Comments run from a ``#`` at the start of a token to the end of the line; quotes (with
    backslash escapes) and ``${...}`` keep what they hold in one token."""
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif char in "{};":
            tokens.append(("special", char))
            i += 1
        elif char in "\"'":
            j = i + 1
            while text[j] != char:
                j += 2 if text[j] == "\\" else 1
            tokens.append(("word", text[i + 1 : j]))
            i = j + 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "{};":
                if text.startswith("${", j):
                    j = text.index("}", j)
                j += 2 if text[j] == "\\" else 1
            tokens.append(("word", text[i:j]))
            i = j
    found: list[Directive] = []
    blocks: list[str] = []
    words: list[str] = []
    for kind, value in tokens:
        if kind == "word":
            words.append(value)
        elif value == "}":
            blocks.pop()
        else:
            found.append(Directive(tuple(blocks), tuple(words), opens_block=value == "{"))
            if value == "{":
                blocks.append(words[0])
            words = []
    return found


def nginx_dump(conf: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -T``: test the configuration and print every file as nginx read it."""
    return subprocess.run(
        [
            NGINX,
            "-T",
            "-p",
            str(conf.parent),
            "-c",
            str(conf),
            "-e",
            str(conf.parent / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def file_in_dump(dump: str, name: str) -> str:
    parts = re.split(r"^# configuration file (.+):$", dump, flags=re.MULTILINE)
    files = dict(zip(parts[1::2], parts[2::2], strict=True))
    return next(text for path, text in files.items() if path.endswith(name))


def test_directives__see_the_block_a_line_break_lets_out_of_a_comment():
    broken = '# rule 1 "x\nserver { listen 9998; }\n#": stable\nmap $uri $x { default 0; }\n'

    assert Directive((), ("server",), True) in directives(broken)
    assert directives(broken.replace("\n", " ", 2)) == [
        Directive((), ("map", "$uri", "$x"), True),
        Directive(("map",), ("default", "0"), False),
    ]


def awkward_service() -> None:
    service = services.service_create(name="odd", stable_version="1.4.0")
    services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9001", version="1.4.0"
    )
    # "default" and "include" are keywords of nginx's map; as target names they are pin keys.
    services.target_create(
        service=service, name="default", endpoint="http://[::1]:9002", version="1.5.0+b.1"
    )
    services.target_create(
        service=service, name="include", endpoint="http://10.0.0.9:9003", version="1.5.0"
    )
    regex = '^/r/a"b\\\\c\\$d\\{e\\};g#h ' + UNICODE
    services.rule_create(
        service=service,
        name=NAME,
        priority=1,
        conditions=[
            {"source": "header", "name": "x-odd", "operator": "equals", "values": [AWKWARD]},
            {"source": "path", "operator": "prefix", "values": ["/" + AWKWARD + UNICODE]},
            {"source": "query", "name": "q", "operator": "in", "values": [AWKWARD, UNICODE]},
            {"source": "cookie", "name": "c", "operator": "contains", "values": [AWKWARD]},
            {"source": "path", "operator": "regex", "values": [regex]},
            {"source": "header", "name": 'x-"odd" {$}', "operator": "equals", "values": ["1"]},
            {"source": "method", "operator": "in", "values": ["GET", AWKWARD]},
        ],
        targets={"stable": 50, "default": 50},
        affinity={"type": "cookie", "name": "s_id", "path": '/p$x{y}"z\\#'},
    )
    services.rule_create(
        service=service,
        name=AWKWARD,
        priority=2,
        strategy="header",
        strategy_key="x-pin",
        targets={"stable": 40, "default": 30, "include": 30},
    )
    services.rule_create(
        service=service,
        name=UNICODE,
        priority=3,
        strategy="cookie",
        strategy_key='pin "me" {$}',
        targets={"stable": 90, "include": 10},
        rate_limit={"rps": 5, "burst": 10},
    )


def test_nginx_export__of_awkward_values__passes_nginx_t__and_holds_only_the_blocks_it_writes(
    client, tmp_path
):
    awkward_service()
    listen = f"127.0.0.1:{free_port()}"
    conf = export(client, tmp_path, "odd", listen)

    tested = nginx_test(conf)
    dumped = nginx_dump(conf)

    text = (tmp_path / "canary.conf").read_text()
    assert tested.returncode == 0, tested.stderr + text
    assert dumped.returncode == 0, dumped.stderr
    found = directives(file_in_dump(dumped.stdout, "canary.conf"))
    blocks = [(item.blocks, item.words[0]) for item in found if item.opens_block]
    assert [block for block in blocks if block[1] in ("server", "location", "if")] == [
        ((), "server"),
        (("server",), "location"),
        (("server", "location"), "if"),
    ]
    assert {name for outer, name in blocks} <= {
        "upstream",
        "geo",
        "map",
        "split_clients",
        "server",
        "location",
        "if",
    }
    assert {item.words[0] for item in found if not item.blocks} <= {
        "upstream",
        "geo",
        "map",
        "split_clients",
        "server",
        "limit_req_zone",
    }
    assert [item.words for item in found if item.words[0] == "listen"] == [("listen", listen)]
    assert not [item for item in found if item.words[0] == "include"]
    # The name stays inside its one-line comment; map keywords and $ are escaped.
    assert re.search(r"^# rule \d+ 'odd \} server \{ listen 1; .* 中文': ", text, re.MULTILINE)
    assert '"\\\\default" canary_odd_u' in text and '"\\\\include" canary_odd_u' in text
    assert "${canary_odd_dollar}" in text


def test_nginx_export__real_nginx_matches_awkward_values_as_they_are(
    client, tmp_path, backends, spawn
):
    stable, canary = backends
    service = services.service_create(name="odd", stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    services.target_create(service=service, name="default", endpoint=canary.url, version=CANARY)
    services.rule_create(
        service=service,
        name=NAME,
        priority=1,
        conditions=[
            {"source": "header", "name": "x-odd", "operator": "equals", "values": [AWKWARD]}
        ],
        targets={"default": 100},
    )
    services.rule_create(
        service=service,
        name="pin",
        priority=2,
        strategy="header",
        strategy_key="x-pin",
        conditions=[{"source": "path", "operator": "prefix", "values": ["/pin"]}],
        targets={"stable": 100, "default": 0},
    )
    services.rule_create(
        service=service,
        name="sticky",
        priority=3,
        conditions=[{"source": "path", "operator": "prefix", "values": ["/app"]}],
        targets={"stable": 50, "default": 50},
        affinity={"type": "cookie", "name": "s_id", "path": '/app$x{y}"z\\#'},
    )
    port = free_port()
    conf = export(client, tmp_path, "odd", f"127.0.0.1:{port}")
    assert nginx_test(conf).returncode == 0
    nginx = spawn(
        "nginx",
        [
            NGINX,
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            "daemon off;",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: http_get(f"{url}/", timeout=1), timeout=20), nginx.output()

    odd, near, upper, pinned, unpinned, sticky = (
        fetch_many(url, [request])[0]
        for request in [
            {"headers": {"X-Odd": AWKWARD}},
            {"headers": {"X-Odd": AWKWARD + "x"}},
            {"headers": {"X-Odd": AWKWARD.upper()}},
            {"path": "/pin", "headers": {"X-Pin": "default"}},
            {"path": "/pin"},
            {"path": "/app"},
        ]
    )

    assert odd.version == CANARY and upper.version == CANARY
    assert near.version == STABLE
    assert pinned.version == CANARY and unpinned.version == STABLE
    assert 'Path=/app$x{y}"z\\#;' in sticky.headers["set-cookie"]


def test_export_blocks__escape_their_comments__and_quote_escapes_what_ends_a_string():
    block = MapBlock("$uri", "$x", [], "0", comment='path starts with "/a\nserver { }\r\x00\u2028"')

    assert block.comment == 'path starts with "/a\\x0aserver { }\\x0d\\x00\\u2028"'
    assert "\n" not in comment("a\nb") and comment("a\\x0ab") == "a\\\\x0ab"
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert map_key("default") == '"\\\\default"' and map_key("~x") == '"\\\\~x"'
