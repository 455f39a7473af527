"""canaryctl: Canary's command-line client, for CI/CD pipelines and scripts.

One file, standard library only, so a pipeline can fetch it and run ``python canaryctl.py`` or
``python -m canaryctl``, or ``pip install packaging/canaryctl`` for a ``canaryctl`` command.
It speaks Canary's REST API (``/api/v1/``) with a personal API token.

Configuration: ``CANARY_URL`` (the site, e.g. ``https://canary.example.com``) and
``CANARY_TOKEN``; ``--url`` and ``--token`` override them.

Exit codes (docs/pipelines.md):

- 0: done; for ``deploy --wait`` and ``status --watch``, the deployment succeeded.
- 1: it did not go through: the deployment ended rolled back, failed or aborted; the server
  refused the action in the deployment's current state (409); a change is held for approval
  (without ``--wait``), or its approval request ended without being applied; ``--timeout``
  passed first.
- 2: bad input: a usage error, a file that cannot be read, a configuration the validator
  finds errors in, or the API's 400 (each field named), 401, 403, 404, 413 or 415.
- 3: the server could not be reached (connection refused, DNS, timeout), or answered 5xx or
  429 after the retries.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__version__ = "0.1.0"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3

TERMINAL = frozenset({"succeeded", "rolled_back", "failed", "aborted"})
# An approval request in these states will not change any more; only "applied" made the change.
REQUEST_CLOSED = frozenset(
    {"approved", "rejected", "expired", "cancelled", "applied", "superseded"}
)
# The status changes whose reason says why a deployment ended; a rollback's closing entry only
# says it finished, so the entry that began it is the one to show.
ENDING_DECISIONS = frozenset({"succeeded", "failed", "aborted", "rolling_back"})
LIFECYCLE_VERBS = ("pause", "resume", "abort", "retry")
# The longest a client waits on a Retry-After, so a server's large value cannot stall a job.
MAX_RETRY_AFTER_SECONDS = 30.0


class CtlError(Exception):
    """Ends the command with ``exit_code``; ``body`` is the API's error body, if it sent one."""

    def __init__(self, message: str, exit_code: int, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.body = body


class Held(Exception):
    """The server answered 202: an approval policy holds the change until someone signs off."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", "Held for approval."))
        self.body = body

    @property
    def request(self) -> dict[str, Any]:
        return self.body.get("approval_request") or {}


# --------------------------------------------------------------------------------- HTTP


class Client:
    """The REST API over urllib, with retries where a retry is safe.

    Every request is retried when nothing reached the server (refused, DNS) and on 429 and
    503, which say the server did nothing and when to come back. Reads are also retried on
    any other 5xx, a timeout or a dropped connection; writes are not, since the server may
    have acted and a second create or transition would not be the same request.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        retries: int = 2,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retries = max(0, retries)
        self.timeout = timeout
        self.sleep = sleep

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body if body is not None else {})

    def request(
        self, method: str, path: str, *, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        """The answer's JSON; raises `Held` on 202 and `CtlError` on any failure."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": f"canaryctl/{__version__}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        reading = method == "GET"
        attempt = 0
        while True:
            attempt += 1
            last = attempt > self.retries
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    status, payload = response.status, _decode(response.read())
            except urllib.error.HTTPError as error:
                status, payload = error.code, _decode(error.read())
                if 300 <= status < 400:
                    raise CtlError(
                        f"the server redirected {method} {path} to "
                        f"{error.headers.get('Location')}: set CANARY_URL to where it answers",
                        EXIT_BAD_INPUT,
                    ) from None
                if (status in (429, 503) or (reading and status >= 500)) and not last:
                    self.sleep(_retry_after(error.headers.get("Retry-After"), attempt))
                    continue
                raise _http_failure(method, url, status, payload) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", error)
                unsent = isinstance(reason, (ConnectionRefusedError, socket.gaierror))
                if (unsent or reading) and not last:
                    self.sleep(_retry_after(None, attempt))
                    continue
                raise CtlError(
                    f"cannot reach {self.base_url} ({_describe(reason)})", EXIT_UNREACHABLE
                ) from None
            if status == 202 and isinstance(payload, dict) and "approval_request" in payload:
                raise Held(payload)
            return payload


class _KeepWrites(urllib.request.HTTPRedirectHandler):
    """Follows redirects of reads only: urllib would turn a redirected POST into a GET without
    its body, so a write that is redirected fails and names where the server points."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if req.get_method() != "GET":
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_KeepWrites)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _retry_after(header: str | None, attempt: int) -> float:
    try:
        seconds = float(header) if header else 2.0 ** (attempt - 1)
    except ValueError:
        seconds = 2.0 ** (attempt - 1)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _describe(reason: Any) -> str:
    if isinstance(reason, socket.gaierror):
        return f"name not resolved: {reason.strerror or reason}"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return str(reason) or type(reason).__name__


def _http_failure(method: str, url: str, status: int, payload: Any) -> CtlError:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or f"HTTP {status}")
        said = f"{message} (HTTP {status})"
    else:
        message = said = f"HTTP {status} from {method} {urllib.parse.urlsplit(url).path}"
    if status >= 500 or status == 429:
        code = EXIT_UNREACHABLE
        message = f"the server failed: {said}"
    elif status == 409:
        code = EXIT_FAILED
    else:
        code = EXIT_BAD_INPUT
    return CtlError(message, code, payload if isinstance(error, dict) else None)


# --------------------------------------------------------------------------------- output


class Output:
    """People read lines; ``--output json`` prints the API's JSON, and nothing else, on
    stdout, so progress goes to stderr there."""

    def __init__(self, mode: str) -> None:
        self.json = mode == "json"

    def line(self, text: str = "") -> None:
        if not self.json:
            print(text, flush=True)

    def progress(self, text: str) -> None:
        print(text, file=sys.stderr if self.json else sys.stdout, flush=True)

    def data(self, body: Any) -> None:
        if self.json:
            print(json.dumps(body, indent=2), flush=True)

    def problem(self, text: str) -> None:
        print(f"canaryctl: {text}", file=sys.stderr, flush=True)


def _percent(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{number:.2f}".rstrip("0").rstrip(".") + "%"


def _fields(fields: Any) -> list[str]:
    """``{"phases[0].durationMs": ["must be ..."]}`` as lines ``phases[0].durationMs: must ...``"""
    lines = []
    if isinstance(fields, dict):
        for name, messages in fields.items():
            for message in messages if isinstance(messages, list) else [messages]:
                lines.append(f"{name}: {_without_field(str(message), name)}")
    return lines


def _without_field(message: str, field: str) -> str:
    # The API's messages often begin with their field ("phases[0].durationMs must not be
    # negative", "durationMs: ..."): the line names it once, in front.
    for name in (field, field.rsplit(".", 1)[-1]):
        if name and message.startswith(name) and message[len(name) : len(name) + 1] in (" ", ":"):
            return message[len(name) :].lstrip(": ")
    return message


def _issue(issue: dict[str, Any]) -> str:
    field = str(issue.get("field") or "")
    message = _without_field(str(issue.get("message", "")), field)
    return f"{field}: {message}" if field else message


def _print_failure(out: Output, error: CtlError) -> None:
    if out.json:
        body = error.body or {"error": {"code": _code(error), "message": error.message}}
        body["error"].setdefault("fields", {})
        print(json.dumps(body, indent=2), flush=True)
    out.problem(f"error: {error.message}")
    if error.body:
        for line in _fields(error.body.get("error", {}).get("fields")):
            # The headline is often the first field's message: say it once.
            if error.message not in (line, line.split(": ", 1)[-1]):
                out.problem(f"  {line}")


def _code(error: CtlError) -> str:
    return {EXIT_UNREACHABLE: "unreachable", EXIT_FAILED: "failed"}.get(error.exit_code, "invalid")


def _print_hold(out: Output, held: Held, base_url: str, *, final: bool = True) -> None:
    """The request that holds the change; its JSON too unless more output follows."""
    if final:
        out.data(held.body)
    request = held.request
    target = request.get("object") or {}
    out.progress(
        f"held for approval: request #{request.get('id')} {request.get('action', '')} of "
        f"{target.get('repr') or target.get('type', '')}, needs {request.get('quorum', 1)} "
        f"approval(s) before {request.get('expires_at', '?')}"
    )
    if held.body.get("message"):
        out.progress(f"  {held.body['message']}")
    if request.get("page"):
        out.progress(f"  {base_url}{request['page']}")


def _deployment_line(deployment: dict[str, Any], *, clock: bool = True) -> str:
    phases = deployment.get("phases") or []
    current = deployment.get("current_phase")
    phase = _current_phase(deployment)
    judgement = (phase or {}).get("judgement") or {}
    parts = [
        f"phase {current or '-'}/{len(phases)}",
        f"share {_percent(deployment.get('canary_share'))}",
        str(deployment.get("status", "?")),
    ]
    if judgement.get("reason"):
        parts.append(str(judgement["reason"]))
    line = "  ".join(parts)
    return f"{time.strftime('%H:%M:%S')}  {line}" if clock else line


def _current_phase(deployment: dict[str, Any]) -> dict[str, Any] | None:
    for phase in deployment.get("phases") or []:
        if phase.get("order") == deployment.get("current_phase"):
            return phase
    return None


def _print_deployment(out: Output, deployment: dict[str, Any]) -> None:
    out.data(deployment)
    out.line(
        f"deployment {deployment.get('id')}: {deployment.get('name')} "
        f"({deployment.get('service')} {deployment.get('stable_version')} -> "
        f"{deployment.get('canary_version')})"
    )
    out.line(
        f"  status {deployment.get('status')}, phase {deployment.get('current_phase') or '-'}/"
        f"{len(deployment.get('phases') or [])}, canary share "
        f"{_percent(deployment.get('canary_share'))}, progress {deployment.get('progress', 0)}%"
    )
    for phase in deployment.get("phases") or []:
        reason = ((phase.get("judgement") or {}).get("reason")) or ""
        marker = "*" if phase.get("order") == deployment.get("current_phase") else " "
        out.line(
            f"  {marker}{phase.get('order'):>2}  {_percent(phase.get('traffic_percentage')):>7}  "
            f"{phase.get('status', ''):<12} {reason}".rstrip()
        )
    actions = deployment.get("allowed_actions") or []
    if actions:
        out.line(f"  allowed: {', '.join(actions)}")


# --------------------------------------------------------------------------------- files


def _read_file(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise CtlError(f"cannot read {path}: {error}", EXIT_BAD_INPUT) from None


def _configuration(path: str) -> Any:
    """The configuration for the API: parsed here when JSON (so a syntax error is caught before
    anything is sent); YAML is sent as text for the server's own strict loader."""
    text = _read_file(path)
    if not text.strip():
        raise CtlError(f"{path} is empty", EXIT_BAD_INPUT)
    if path.endswith(".json") or text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError as error:
            raise CtlError(f"{path} is not valid JSON: {error}", EXIT_BAD_INPUT) from None
    return text


def _context(args: argparse.Namespace) -> dict[str, Any]:
    return {"environment": args.environment} if getattr(args, "environment", None) else {}


# --------------------------------------------------------------------------------- waiting


def _reason_shape(reason: str) -> str:
    # A judgement's sentence counts down ("12 s left"): a new line only when its words change.
    return re.sub(r"\d+(?:\.\d+)?", "#", reason)


def _watch(
    client: Client,
    out: Output,
    deployment_id: Any,
    *,
    interval: float,
    deadline: float | None,
    first: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Poll the deployment until it ends, printing a line whenever its phase, share, status or
    judgement changes; the deployment as it ended."""
    shown = None
    deployment = first
    while True:
        if deployment is None:
            deployment = client.get(f"/api/v1/deployments/{deployment_id}/")
        judgement = (_current_phase(deployment) or {}).get("judgement") or {}
        key = (
            deployment.get("status"),
            deployment.get("current_phase"),
            deployment.get("canary_share"),
            judgement.get("outcome"),
            _reason_shape(str(judgement.get("reason") or "")),
        )
        if key != shown:
            out.progress(_deployment_line(deployment))
            shown = key
        if deployment.get("status") in TERMINAL:
            return deployment
        if deadline is not None and time.monotonic() >= deadline:
            raise CtlError(
                f"timed out: deployment {deployment_id} is still {deployment.get('status')}",
                EXIT_FAILED,
            )
        time.sleep(interval)
        deployment = None


def _wait_for_approval(
    client: Client, out: Output, held: Held, *, interval: float, deadline: float | None
) -> None:
    """Poll the approval request until it closes; returns once the change is applied."""
    request_id = held.request.get("id")
    out.progress(f"waiting for approval request #{request_id}")
    while True:
        request = client.get(f"/api/v1/approvals/{request_id}/")
        state = request.get("state")
        if state == "applied":
            out.progress(f"approval request #{request_id} applied")
            return
        if state in REQUEST_CLOSED:
            outcome = request.get("outcome") or ""
            raise CtlError(
                f"approval request #{request_id} is {state}: {outcome}".rstrip(": "), EXIT_FAILED
            )
        if deadline is not None and time.monotonic() >= deadline:
            raise CtlError(
                f"timed out: approval request #{request_id} is still {state}", EXIT_FAILED
            )
        time.sleep(interval)


def _deadline(args: argparse.Namespace) -> float | None:
    timeout = getattr(args, "timeout", None)
    return None if timeout is None else time.monotonic() + timeout


def _ended(out: Output, client: Client, deployment: dict[str, Any]) -> int:
    """The exit code for a deployment that has ended, with the line that says how."""
    out.data(deployment)
    status = deployment.get("status")
    why = _ending_reason(client, deployment)
    out.progress(f"deployment {deployment.get('id')} {status}" + (f": {why}" if why else ""))
    return EXIT_OK if status == "succeeded" else EXIT_FAILED


def _ending_reason(client: Client, deployment: dict[str, Any]) -> str:
    """Why it ended: the reason of the latest status change, reaching back past the rollback's
    closing entry to the decision that began it."""
    try:
        page = client.get(f"/api/v1/deployments/{deployment.get('id')}/events/", {"page_size": 20})
    except CtlError:
        return ""
    events = page.get("results", []) if isinstance(page, dict) else []
    for event in events:
        if event.get("to_status") in ENDING_DECISIONS:
            return str(event.get("reason") or "")
    return ""


# --------------------------------------------------------------------------------- verbs


def cmd_validate(client: Client, out: Output, args: argparse.Namespace) -> int:
    report = client.post(
        "/api/v1/validate/",
        {
            "type": args.type,
            "config": _configuration(args.file),
            "context": _context(args),
            "strictMode": args.strict,
        },
    )
    out.data(report)
    _print_report(out, report)
    if not report.get("valid"):
        out.line(f"{args.file}: not valid ({len(report.get('errors') or [])} error(s))")
        return EXIT_BAD_INPUT
    out.line(f"{args.file}: valid")
    return EXIT_OK


def _print_report(out: Output, report: dict[str, Any]) -> None:
    for issue in report.get("errors") or []:
        out.line(f"error    {_issue(issue)}")
    for issue in report.get("warnings") or []:
        out.line(f"warning  {_issue(issue)}")
    for note in report.get("recommendations") or []:
        out.line(f"note     {note}")
    estimates = report.get("estimates") or {}
    full = estimates.get("timeToFullPromotionMs")
    if full:
        out.line(f"estimate full promotion in {full / 1000:g} s at the earliest")


def cmd_deploy(client: Client, out: Output, args: argparse.Namespace) -> int:
    config = _configuration(args.file)
    context = _context(args)
    # Validate first, so a configuration with errors leaves no pending deployment behind.
    report = client.post(
        "/api/v1/validate/",
        {"config": config, "context": context, "strictMode": args.strict},
    )
    if not report.get("valid"):
        if out.json:
            out.data(report)
        else:
            _print_report(out, report)
        out.problem(f"error: {args.file} is not valid; nothing was deployed")
        return EXIT_BAD_INPUT
    for issue in report.get("warnings") or []:
        out.progress(f"warning  {_issue(issue)}")
    body: dict[str, Any] = {"config": config}
    if context:
        body["context"] = context
    if args.health_policy:
        body["health_policy"] = args.health_policy
    if args.flag:
        body["linked_flags"] = args.flag
    if args.reason:
        body["reason"] = args.reason
    created = client.post("/api/v1/deployments/", body)
    deployment_id = created["id"]
    out.progress(
        f"created deployment {deployment_id}: {created.get('name')} ({created.get('service')} "
        f"{created.get('stable_version')} -> {created.get('canary_version')})"
    )
    deadline = _deadline(args)
    try:
        started = client.post(
            f"/api/v1/deployments/{deployment_id}/start/", {"reason": args.reason or ""}
        )
    except Held as held:
        _print_hold(out, held, client.base_url, final=not args.wait)
        if not args.wait:
            return EXIT_FAILED
        _wait_for_approval(client, out, held, interval=args.interval, deadline=deadline)
        started = None
    if not args.wait:
        out.data(started)
        out.line(f"deployment {deployment_id}: {_deployment_line(started, clock=False)}")
        return EXIT_OK
    ended = _watch(
        client, out, deployment_id, interval=args.interval, deadline=deadline, first=started
    )
    return _ended(out, client, ended)


def cmd_status(client: Client, out: Output, args: argparse.Namespace) -> int:
    if not args.watch:
        _print_deployment(out, client.get(f"/api/v1/deployments/{args.id}/"))
        return EXIT_OK
    ended = _watch(client, out, args.id, interval=args.interval, deadline=_deadline(args))
    return _ended(out, client, ended)


def _transition(client: Client, out: Output, args: argparse.Namespace, path: str) -> int:
    body: dict[str, Any] = {"reason": args.reason or ""}
    if args.phase is not None:
        body["phase"] = args.phase
    try:
        deployment = client.post(f"/api/v1/deployments/{args.id}/{path}/", body)
    except Held as held:
        _print_hold(out, held, client.base_url)
        return EXIT_FAILED
    out.data(deployment)
    out.line(f"deployment {deployment.get('id')}: {_deployment_line(deployment, clock=False)}")
    return EXIT_OK


def cmd_promote(client: Client, out: Output, args: argparse.Namespace) -> int:
    return _transition(client, out, args, "promote-full" if args.full else "promote")


def cmd_lifecycle(client: Client, out: Output, args: argparse.Namespace) -> int:
    return _transition(client, out, args, args.verb)


def cmd_rollback(client: Client, out: Output, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.plan is not None:
        body["plan"] = args.plan
    try:
        execution = client.post(f"/api/v1/deployments/{args.id}/rollback/", body)
    except Held as held:
        _print_hold(out, held, client.base_url)
        return EXIT_FAILED
    out.data(execution)
    out.line(
        f"deployment {args.id}: rollback execution {execution.get('id')} by the plan "
        f"'{execution.get('plan_name')}' ({execution.get('strategy')}): {execution.get('state')}"
    )
    return EXIT_OK


def _print_flag(out: Output, flag: dict[str, Any]) -> None:
    out.data(flag)
    line = (
        f"flag {flag.get('key')}: {flag.get('status')}, rollout "
        f"{_percent(flag.get('rollout_percentage'))}, version {flag.get('version')}"
    )
    if flag.get("killed_reason") and flag.get("status") == "killed":
        line += f" (killed: {flag['killed_reason']})"
    if flag.get("controlled_by"):
        line += f", driven by {flag['controlled_by']}"
    out.line(line)


def cmd_flags(client: Client, out: Output, args: argparse.Namespace) -> int:
    key = urllib.parse.quote(args.key, safe="")
    if args.flags_verb == "get":
        _print_flag(out, client.get(f"/api/v1/flags/{key}/"))
        return EXIT_OK
    body: dict[str, Any] = {"reason": args.reason or ""}
    if args.flags_verb == "rollout":
        body["percentage"] = args.percent
        if args.variant:
            body["variant"] = args.variant
    try:
        flag = client.post(f"/api/v1/flags/{key}/{args.flags_verb}/", body)
    except Held as held:
        _print_hold(out, held, client.base_url)
        return EXIT_FAILED
    _print_flag(out, flag)
    return EXIT_OK


def _print_request(out: Output, request: dict[str, Any]) -> None:
    target = request.get("object") or {}
    out.line(
        f"{request.get('id'):>5}  {request.get('state', ''):<10} {request.get('action', ''):<24} "
        f"{target.get('repr') or '':<32} {request.get('requester') or '-':<12} "
        f"{request.get('approvals', 0)}/{request.get('quorum', 1)}  {request.get('expires_at')}"
    )


def cmd_approvals(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.approvals_verb == "list":
        query: dict[str, Any] = {"page_size": 100}
        if not args.all:
            query["state"] = args.state or ["pending"]
        results: list[Any] = []
        page = 1
        while True:
            body = client.get("/api/v1/approvals/", {**query, "page": page})
            results.extend(body.get("results", []))
            if not body.get("next"):
                break
            page += 1
        out.data({"count": len(results), "next": None, "previous": None, "results": results})
        if not results:
            out.line("no approval requests")
        else:
            out.line(
                f"{'ID':>5}  {'STATE':<10} {'ACTION':<24} {'OBJECT':<32} {'REQUESTER':<12} "
                "VOTES EXPIRES"
            )
        for request in results:
            _print_request(out, request)
        return EXIT_OK
    if args.approvals_verb == "get":
        request = client.get(f"/api/v1/approvals/{args.id}/")
    else:
        request = client.post(
            f"/api/v1/approvals/{args.id}/{args.approvals_verb}/", {"comment": args.comment or ""}
        )
    out.data(request)
    _print_request(out, request)
    if request.get("outcome"):
        out.line(f"       {request['outcome']}")
    return EXIT_OK


# --------------------------------------------------------------------------------- arguments


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--url, --token, --output and --retries, accepted before or after the verb. The verbs'
    copies default to SUPPRESS so they do not overwrite what was given before the verb."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=default(os.environ.get("CANARY_URL")),
        help="Canary's address, e.g. https://canary.example.com (default: $CANARY_URL)",
    )
    group.add_argument(
        "--token",
        default=default(os.environ.get("CANARY_TOKEN")),
        help="a personal API token (default: $CANARY_TOKEN)",
    )
    group.add_argument(
        "--output",
        "-o",
        choices=("text", "json"),
        default=default("text"),
        help="text for people (default), json for scripts: the API's JSON as it is",
    )
    group.add_argument(
        "--retries",
        type=int,
        default=default(2),
        help="retries of a request the server did not take (default: 2)",
    )


def _waiting_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive,
        metavar="S",
        help="give up waiting after S seconds (exit 1); the deployment carries on",
    )
    parser.add_argument(
        "--interval",
        type=_positive,
        default=2.0,
        metavar="S",
        help="seconds between polls (default: 2)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canaryctl",
        description="Canary's command-line client: deploy, watch and steer canary "
        "deployments, flags and approvals from a pipeline.",
        epilog="Exit codes: 0 done (the deployment succeeded); 1 not done (rolled back, failed, "
        "aborted, refused now, held for approval, timed out); 2 bad input; 3 server unreachable "
        "or failing. See docs/pipelines.md.",
    )
    parser.add_argument("--version", action="version", version=f"canaryctl {__version__}")
    _connection_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, suppress=True)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=summary, description=summary, parents=[common], **kwargs)

    deploy = verb(
        "deploy",
        "Create a deployment from a configuration file and start it; with --wait, follow it "
        "to the end.",
    )
    deploy.add_argument(
        "-f", "--file", required=True, help="the configuration (YAML or JSON; - for stdin)"
    )
    deploy.add_argument(
        "--wait",
        action="store_true",
        help="follow the phases until the deployment ends; exit 0 only if it succeeded",
    )
    deploy.add_argument("--reason", help="why, kept in the deployment's timeline")
    deploy.add_argument("--environment", help="the validator's environment, e.g. production")
    deploy.add_argument("--strict", action="store_true", help="refuse warnings too")
    deploy.add_argument(
        "--health-policy", metavar="NAME", help="a health policy's name or id to judge it by"
    )
    deploy.add_argument(
        "--flag",
        action="append",
        metavar="KEY",
        help="a flag whose rollout follows the phases (repeatable)",
    )
    _waiting_options(deploy)
    deploy.set_defaults(handler=cmd_deploy)

    status = verb("status", "Show a deployment; with --watch, follow it to the end.")
    status.add_argument("id", help="the deployment's id")
    status.add_argument(
        "--watch", action="store_true", help="follow it until it ends; exit 0 only if it succeeded"
    )
    _waiting_options(status)
    status.set_defaults(handler=cmd_status)

    promote = verb("promote", "Promote a deployment to its next phase (--full: all the way).")
    promote.add_argument("id", help="the deployment's id")
    promote.add_argument(
        "--full", action="store_true", help="give the canary all traffic and make it stable"
    )
    promote.add_argument("--reason", help="why; required when the phase's criteria have not held")
    promote.add_argument(
        "--phase", type=int, help="refuse if the deployment has moved past this phase"
    )
    promote.set_defaults(handler=cmd_promote)

    summaries = {
        "pause": "Pause a running deployment: its phase holds.",
        "resume": "Resume a paused deployment.",
        "abort": "Abort a deployment: traffic returns to the stable version at once.",
        "retry": "Retry a rolled-back, failed or aborted deployment: back to pending.",
    }
    for name in LIFECYCLE_VERBS:
        lifecycle = verb(name, summaries[name])
        lifecycle.add_argument("id", help="the deployment's id")
        lifecycle.add_argument("--reason", help="why, kept in the deployment's timeline")
        lifecycle.add_argument(
            "--phase", type=int, help="refuse if the deployment has moved past this phase"
        )
        lifecycle.set_defaults(handler=cmd_lifecycle)

    rollback = verb("rollback", "Roll a running or paused deployment back by its rollback plan.")
    rollback.add_argument("id", help="the deployment's id")
    rollback.add_argument("--reason", required=True, help="why (required)")
    rollback.add_argument(
        "--plan", type=int, help="a rollback plan's id instead of the deployment's own"
    )
    rollback.set_defaults(handler=cmd_rollback)

    validate = verb("validate", "Check a configuration file without storing anything.")
    validate.add_argument(
        "-f", "--file", required=True, help="the configuration (YAML or JSON; - for stdin)"
    )
    validate.add_argument("--strict", action="store_true", help="count warnings as errors")
    validate.add_argument("--environment", help="the environment to check for, e.g. production")
    validate.add_argument(
        "--type",
        default="canary_deployment",
        help="what the file configures (default: canary_deployment)",
    )
    validate.set_defaults(handler=cmd_validate)

    flags = verb("flags", "Read and switch feature flags.")
    flag_verbs = flags.add_subparsers(dest="flags_verb", metavar="ACTION", required=True)

    def flag_verb(name: str, summary: str) -> argparse.ArgumentParser:
        sub = flag_verbs.add_parser(name, help=summary, description=summary, parents=[common])
        sub.add_argument("key", help="the flag's key")
        sub.set_defaults(handler=cmd_flags)
        return sub

    flag_verb("get", "Show a flag.")
    for name, summary in (("enable", "Enable a flag."), ("disable", "Disable a flag.")):
        flag_verb(name, summary).add_argument("--reason", help="why, kept in the audit trail")
    flag_verb("kill", "Kill a flag: it serves its off value everywhere at once.").add_argument(
        "--reason", required=True, help="why (required)"
    )
    rollout = flag_verb("rollout", "Set the share of users the flag's default rule serves.")
    rollout.add_argument("percent", help="0 to 100, two decimals at most")
    rollout.add_argument("--variant", help="the variant served to that share")
    rollout.add_argument("--reason", help="why, kept in the audit trail")

    approvals = verb("approvals", "List approval requests and decide them.")
    approval_verbs = approvals.add_subparsers(
        dest="approvals_verb", metavar="ACTION", required=True
    )
    listing = approval_verbs.add_parser(
        "list",
        help="List approval requests (pending ones by default).",
        description="List approval requests (pending ones by default).",
        parents=[common],
    )
    listing.add_argument(
        "--state", action="append", help="only requests in this state (repeatable)"
    )
    listing.add_argument("--all", action="store_true", help="requests in every state")
    listing.set_defaults(handler=cmd_approvals)
    for name, summary in (
        ("get", "Show one approval request."),
        ("approve", "Approve a request (not your own); the last approval applies the change."),
        ("reject", "Reject a request (not your own)."),
    ):
        sub = approval_verbs.add_parser(name, help=summary, description=summary, parents=[common])
        sub.add_argument("id", help="the request's id")
        if name != "get":
            sub.add_argument("--comment", help="kept with the decision")
        sub.set_defaults(handler=cmd_approvals)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(args.output)
    if not args.url:
        out.problem("error: no server: set CANARY_URL or pass --url")
        return EXIT_BAD_INPUT
    client = Client(args.url, args.token, retries=args.retries)
    try:
        return int(args.handler(client, out, args))
    except Held as held:
        _print_hold(out, held, client.base_url)
        return EXIT_FAILED
    except CtlError as error:
        _print_failure(out, error)
        return error.exit_code
    except KeyboardInterrupt:
        out.problem("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): nothing left to say, and no traceback for it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def run() -> NoReturn:
    """The console script's entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
