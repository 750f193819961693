"""``sipproxy-ctl``: the admin API from a shell (standard library only).

::

    sipproxy-ctl registrations [AOR]      sipproxy-ctl unregister AOR [CONTACT]
    sipproxy-ctl bans                     sipproxy-ctl unban IP
    sipproxy-ctl stats                    sipproxy-ctl reload
    sipproxy-ctl forward USER             sipproxy-ctl forward USER KIND TARGET
    sipproxy-ctl dnd USER on|off          sipproxy-ctl forward-reset USER
    sipproxy-ctl calls                    sipproxy-ctl cdr [--since T] [--user U]
    sipproxy-ctl subscriptions

``forward`` KIND is busy, no_answer, unavailable or unconditional; TARGET is a
user, an extension, a group number or a SIP URI, ``none`` (or ``""``) clears it;
``forward USER no_answer TARGET SECONDS`` also sets how long the phones ring.
What ``forward``/``dnd`` set is kept in the location store and wins over the
TOML until ``forward-reset``. ``calls`` lists the calls in progress; ``cdr`` the
call detail records, newest first, filtered by ``--since``/``--until`` (ISO 8601),
``--user``, ``--disposition`` (comma-separated) and ``--limit``; ``--csv`` prints
them as CSV for a spreadsheet. ``subscriptions`` lists the busy-lamp
subscriptions served (who watches whom, from where, for how long yet).

The token comes from ``--token``, ``--token-file`` or the ``SIPPROXY_TOKEN``
environment variable (in that order); without any, from the file the server
makes when it was given none: ``admin-token`` in ``$STATE_DIRECTORY``, ``var/``
or ``/var/lib/sipproxy`` (see ``sipproxy/tokenfile.py``). ``--url
unix:/run/sipproxy/admin.sock`` talks to an admin API on a Unix socket, which
needs no token. Tables for people, ``--json`` for scripts.
Every failure is one line on standard error and a non-zero exit status: 2 for a
usage error, 1 for anything the server or the network said.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from sipproxy.tokenfile import candidates

__all__ = ["CtlError", "main"]

DEFAULT_URL = "http://127.0.0.1:8080"
#: the forwardings ``forward USER KIND TARGET`` sets (the office's call forwarding)
FORWARD_KINDS = ("unconditional", "busy", "no_answer", "unavailable")


class CtlError(Exception):
    """A failure to report in one line."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "forward":
        if args.kind is not None and args.target is None:
            parser.error(f"forward {args.kind}: give the TARGET (or none)")
        if args.seconds is not None and args.kind != "no_answer":
            parser.error("SECONDS goes with no_answer only")
    try:
        token = _token(args)
        return _run(args, token)
    except CtlError as error:
        print(f"sipproxy-ctl: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipproxy-ctl", description="Control a running sipproxy (admin API)."
    )
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"admin API base URL ({DEFAULT_URL}), or unix:PATH of its socket",
    )
    parser.add_argument("--token", help="bearer token (or SIPPROXY_TOKEN)")
    parser.add_argument("--token-file", help="file holding the bearer token")
    parser.add_argument("--json", action="store_true", help="print the JSON answer")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait (10)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    registrations = commands.add_parser("registrations", help="list registrations")
    registrations.add_argument("aor", nargs="?", help="only this address-of-record")
    unregister = commands.add_parser("unregister", help="remove bindings")
    unregister.add_argument("aor", help="address-of-record, e.g. alice@example.com")
    unregister.add_argument("contact", nargs="?", help="only this contact URI")
    commands.add_parser("bans", help="list banned addresses")
    unban = commands.add_parser("unban", help="lift the ban of an address")
    unban.add_argument("ip", help="the banned address")
    commands.add_parser("stats", help="transactions, registrations, connections")
    commands.add_parser("reload", help="re-read the configuration (as SIGHUP)")
    forward = commands.add_parser(
        "forward", help="show or set a user's call forwarding (office)"
    )
    forward.add_argument("user", help="the user, e.g. alice")
    forward.add_argument("kind", nargs="?", choices=FORWARD_KINDS, help="which one")
    forward.add_argument("target", nargs="?", help='SIP URI, user, number; "none"')
    forward.add_argument(
        "seconds", nargs="?", type=float, help="no_answer: ring this long first"
    )
    dnd = commands.add_parser("dnd", help="turn a user's do-not-disturb on or off")
    dnd.add_argument("user", help="the user, e.g. alice")
    dnd.add_argument("state", choices=("on", "off"))
    reset = commands.add_parser(
        "forward-reset", help="forget forwarding and DND set here; the TOML applies"
    )
    reset.add_argument("user", help="the user, e.g. alice")
    commands.add_parser("calls", help="calls in progress")
    commands.add_parser("subscriptions", help="busy-lamp subscriptions served")
    cdr = commands.add_parser("cdr", help="call detail records, newest first")
    cdr.add_argument("--since", help="from this time on, ISO 8601 (UTC if no zone)")
    cdr.add_argument("--until", help="before this time, ISO 8601")
    cdr.add_argument("--user", help="calls from, to or answered by this user")
    cdr.add_argument(
        "--disposition", help="e.g. no_answer,busy,cancelled (missed calls)"
    )
    cdr.add_argument("--limit", type=int, help="at most this many (100)")
    cdr.add_argument("--csv", action="store_true", help="print CSV with a header")
    return parser


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                return file.read().strip()
        except OSError as error:
            raise CtlError(f"token file {args.token_file}: {error.strerror}") from None
    from_environment = os.environ.get("SIPPROXY_TOKEN")
    if from_environment:
        return from_environment
    # The file the server keeps when it was given no token (same host only).
    # One we cannot read is skipped: a Unix socket needs no token, and a 401
    # then says which files were unreadable.
    args.token_source = None
    args.token_unreadable = []
    for path in candidates(os.environ):
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            args.token_unreadable.append(f"{path} ({reason})")
            continue
        if token:
            args.token_source = str(path)
            return token
    return None


def _run(args: argparse.Namespace, token: str | None) -> int:
    command = args.command
    if command == "registrations":
        query = f"?{urlencode({'aor': args.aor})}" if args.aor else ""
        answer = _call(args, token, "GET", f"/registrations{query}")
        _show(args, answer, _registrations_table)
    elif command == "unregister":
        fields = {"aor": args.aor}
        if args.contact:
            fields["contact"] = args.contact
        answer = _call(args, token, "DELETE", f"/registrations?{urlencode(fields)}")
        _show(
            args, answer, lambda a: f"removed {a['removed']} binding(s) of {a['aor']}"
        )
    elif command == "bans":
        answer = _call(args, token, "GET", "/bans")
        _show(args, answer, _bans_table)
    elif command == "unban":
        answer = _call(args, token, "DELETE", f"/bans/{quote(args.ip, safe='')}")
        _show(args, answer, lambda a: f"lifted the ban of {a['address']}")
    elif command == "stats":
        answer = _call(args, token, "GET", "/stats")
        _show(args, answer, _stats_table)
    elif command in ("forward", "dnd", "forward-reset"):
        _show(args, _office(args, token), _forwarding_table)
    elif command == "calls":
        _show(args, _call(args, token, "GET", "/calls"), _calls_table)
    elif command == "subscriptions":
        answer = _call(args, token, "GET", "/subscriptions")
        _show(args, answer, _subscriptions_table)
    elif command == "cdr":
        fields = {
            name: value
            for name in ("since", "until", "user", "disposition", "limit")
            if (value := getattr(args, name)) is not None
        }
        query = f"?{urlencode(fields)}" if fields else ""
        if args.csv:
            data = _call_bytes(args, token, "GET", f"/cdr.csv{query}")
            sys.stdout.write(data.decode("utf-8", "replace"))
        else:
            _show(args, _call(args, token, "GET", f"/cdr{query}"), _cdr_table)
    else:
        answer = _call(args, token, "POST", "/reload")
        _show(args, answer, _reload_text)
    return 0


def _office(args: argparse.Namespace, token: str | None) -> dict[str, Any]:
    """Forwarding and do-not-disturb: the user's settings after the command."""
    user = f"/users/{quote(args.user, safe='')}"
    if args.command == "dnd":
        return _call(args, token, "PUT", f"{user}/dnd", {"on": args.state == "on"})
    if args.command == "forward-reset":
        return _call(args, token, "DELETE", f"{user}/forward")
    if args.kind is None:
        return _call(args, token, "GET", f"{user}/forward")
    target = "" if args.target.strip().lower() in ("", "none") else args.target
    body: dict[str, Any] = {"target": target}
    if args.seconds is not None:
        body["seconds"] = args.seconds
    return _call(args, token, "PUT", f"{user}/forward/{args.kind}", body)


def _call(
    args: argparse.Namespace,
    token: str | None,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return _decode(_call_bytes(args, token, method, path, body))


def _call_bytes(
    args: argparse.Namespace,
    token: str | None,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> bytes:
    """The body of a successful answer; :raises CtlError: any other."""
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, reason, answer = _exchange(args, method, path, data, headers)
    if status == 401:
        raise CtlError(_refused(args))
    if status >= 400:
        try:
            message = _decode(answer).get("error") or reason
        except CtlError:
            message = reason
        raise CtlError(f"{method} {path}: {status} {message}")
    return answer


def _exchange(
    args: argparse.Namespace,
    method: str,
    path: str,
    data: bytes | None,
    headers: dict[str, str],
) -> tuple[int, str, bytes]:
    """Send one request; the status, reason and body of the answer."""
    url = str(args.url)
    if url.startswith("unix:"):
        return _exchange_unix(
            args, url.removeprefix("unix:"), method, path, data, headers
        )
    request = urllib.request.Request(
        url.rstrip("/") + path, data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            return response.status, response.reason, response.read()
    except urllib.error.HTTPError as error:
        return error.code, str(error.reason), error.read()
    except urllib.error.URLError as error:
        reason = getattr(error.reason, "strerror", None) or error.reason
        raise CtlError(_unreachable(args, reason)) from None
    except (TimeoutError, OSError) as error:
        raise CtlError(f"cannot reach the admin API at {args.url}: {error}") from None


def _exchange_unix(
    args: argparse.Namespace,
    socket_path: str,
    method: str,
    path: str,
    data: bytes | None,
    headers: dict[str, str],
) -> tuple[int, str, bytes]:
    connection = _UnixHTTPConnection(socket_path, args.timeout)
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, response.reason, response.read()
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, "strerror", None) or error
        raise CtlError(_unreachable(args, reason)) from None
    finally:
        connection.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix stream socket (the admin API's ``unix:`` endpoint)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _unreachable(args: argparse.Namespace, reason: object) -> str:
    return (
        f"cannot reach the admin API at {args.url}: {reason} "
        "(is sipproxy running with --admin?)"
    )


def _refused(args: argparse.Namespace) -> str:
    """Why a 401, and where the token would come from."""
    if not hasattr(args, "token_source"):
        return (
            f"{args.url}: the token was refused (401); give the admin token "
            "with --token-file, --token or SIPPROXY_TOKEN"
        )
    if args.token_source is None:
        looked = ", ".join(str(path) for path in candidates(os.environ))
        unreadable = "; cannot read " + ", ".join(args.token_unreadable)
        return (
            f"{args.url}: a token is needed (401) and none was found in {looked}"
            f"{unreadable if args.token_unreadable else ''}; give it with "
            "--token-file, --token or SIPPROXY_TOKEN"
        )
    return (
        f"{args.url}: the token in {args.token_source} was refused (401); give "
        "the admin token with --token-file, --token or SIPPROXY_TOKEN"
    )


def _decode(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise CtlError("the server's answer is not JSON (wrong --url?)") from None
    if not isinstance(value, dict):
        raise CtlError("the server's answer is not a JSON object (wrong --url?)")
    return value


def _show(args: argparse.Namespace, answer: dict[str, Any], text: Any) -> None:
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(text(answer))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header), *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in cells
    )


def _calls_table(answer: dict[str, Any]) -> str:
    calls = answer.get("calls", [])
    if not calls:
        return "no calls in progress"
    columns = ("state", "start", "answer", "caller", "callee", "call_id")
    return _table(
        [name.upper().replace("_", "-") for name in columns],
        [[call.get(name) for name in columns] for call in calls],
    )


def _subscriptions_table(answer: dict[str, Any]) -> str:
    found = answer.get("subscriptions", [])
    if not found:
        return "no subscriptions"
    columns = ("subscriber", "entity", "state", "expires", "version", "flow")
    return _table(
        [name.upper() for name in columns],
        [[row.get(name) for name in columns] for row in found],
    )


def _cdr_table(answer: dict[str, Any]) -> str:
    records = answer.get("records", [])
    if not records:
        return "no call records"
    return _table(
        (
            "START",
            "CALLER",
            "CALLEE",
            "ANSWERED-BY",
            "DISPOSITION",
            "SECONDS",
            "BILLSEC",
        ),
        [
            (
                r["start"],
                r["caller"],
                r["callee"],
                r["answered_by"],
                r["disposition"],
                r["duration"],
                r["billsec"],
            )
            for r in records
        ],
    )


def _registrations_table(answer: dict[str, Any]) -> str:
    rows = [
        (
            entry["aor"],
            binding["contact"],
            binding["expires_in"],
            f"{binding['transport']} {binding['source']}",
            binding.get("user_agent"),
        )
        for entry in answer["registrations"]
        for binding in entry["bindings"]
    ]
    if not rows:
        return "no registrations"
    return _table(("AOR", "CONTACT", "EXPIRES", "FROM", "USER-AGENT"), rows)


def _bans_table(answer: dict[str, Any]) -> str:
    rows = [(ban["address"], ban["remaining"]) for ban in answer["bans"]]
    if not rows:
        return "no bans"
    return _table(("ADDRESS", "SECONDS LEFT"), rows)


def _stats_table(answer: dict[str, Any]) -> str:
    rows: list[tuple[str, object]] = [
        ("uptime (s)", answer.get("uptime")),
        ("registrations (AORs)", answer.get("registrations")),
        ("bindings", answer.get("bindings")),
        ("proxy contexts", answer.get("proxy_contexts")),
        ("bans", answer.get("bans")),
    ]
    for kind, count in sorted(answer.get("transactions", {}).items()):
        rows.append((f"transactions {kind}", count))
    for transport, count in sorted(answer.get("connections", {}).items()):
        rows.append((f"connections {transport}", count))
    return _table(("WHAT", "COUNT"), rows)


def _forwarding_table(answer: dict[str, Any]) -> str:
    stored = set(answer.get("set_at_run_time", []))

    def source(*keys: str) -> str:
        return "set here" if stored.intersection(keys) else "config"

    rows = []
    for kind in FORWARD_KINDS:
        target = answer.get(kind) or "-"
        keys = [kind]
        if kind == "no_answer":
            keys.append("no_answer_seconds")
            if answer.get(kind):
                target += f" (after {answer.get('no_answer_seconds', 0):g} s)"
        rows.append((kind, target, source(*keys)))
    dnd = "on" if answer.get("dnd") else "off"
    head = f"{answer.get('user')}: do-not-disturb {dnd} ({source('dnd')})"
    return head + "\n" + _table(("FORWARD", "TARGET", "SOURCE"), rows)


def _reload_text(answer: dict[str, Any]) -> str:
    changed = ", ".join(answer.get("changed", [])) or "nothing"
    text = f"reloaded; changed: {changed}"
    if answer.get("needs_restart"):
        text += f"; needs a restart: {', '.join(answer['needs_restart'])}"
    return text


if __name__ == "__main__":
    sys.exit(main())
