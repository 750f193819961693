"""Every RFC 4475 and RFC 5118 torture message against a running server.

Each is sent as it is, byte for byte, over UDP and over TCP. The table says what
the server must answer today (None: nothing, e.g. responses, which a proxy with no
matching transaction drops, or a stream message whose end never arrives). After
all of them the server must still answer OPTIONS: bad input never takes it down.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipproxy.sip.errors import ParseError
from sipproxy.sip.parser import parse_message
from tests.integration.conftest import (
    RunningServer,
    free_port,
    options_request,
    start_twistd,
    status_of,
    stop,
    tcp_exchange,
    udp_exchange,
)

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "conformance"

# name -> the final answer over (UDP, TCP), None for no final answer within 3 s.
# The server is registrar for example.com and [2001:db8::10]. Following RFC 4475's
# INDEX: malformed -> 400 (505 for SIP/7.0); unknown scheme -> 416; Proxy-Require
# -> 420; Max-Forwards 0 -> 483; responses dropped; the REGISTERs (escnull,
# cparam01/02, regescrt, regaut01, dblreq) -> 200 and unksm2 (To is no SIP AOR) ->
# 400; requests for users nobody registered, and for foreign domains the test DNS
# server does not know, are processed normally and get 404. On TCP a message
# without Content-Length (inv2543) gets 400, one whose declared body or header end
# never arrives gets nothing.
EXPECTED: dict[str, tuple[int | None, int | None]] = {
    "rfc4475/badaspec": (400, 400),
    "rfc4475/badbranch": (400, 400),
    "rfc4475/baddate": (404, 404),
    "rfc4475/baddn": (400, None),
    "rfc4475/badinv01": (400, 400),
    "rfc4475/badvers": (505, 505),
    "rfc4475/bcast": (None, None),
    "rfc4475/bext01": (420, 420),
    "rfc4475/bigcode": (None, None),
    "rfc4475/clerr": (400, None),
    "rfc4475/cparam01": (200, 200),
    "rfc4475/cparam02": (200, 200),
    "rfc4475/dblreq": (200, 200),
    "rfc4475/esc01": (404, 404),
    "rfc4475/esc02": (404, 404),
    "rfc4475/escnull": (200, 200),
    "rfc4475/escruri": (400, 400),
    "rfc4475/insuf": (400, 400),
    "rfc4475/intmeth": (404, 404),
    "rfc4475/inv2543": (404, 400),
    "rfc4475/invut": (404, 404),
    "rfc4475/longreq": (404, 404),
    "rfc4475/ltgtruri": (400, 400),
    "rfc4475/lwsdisp": (404, 404),
    "rfc4475/lwsruri": (400, 400),
    "rfc4475/lwsstart": (400, 400),
    "rfc4475/mcl01": (400, 400),
    "rfc4475/mismatch01": (400, 400),
    "rfc4475/mismatch02": (501, 501),
    "rfc4475/mpart01": (
        None,
        None,
    ),  # forwarded by its strict Route to 127.0.0.1:5080 over UDP; silent
    "rfc4475/multi01": (400, 400),
    "rfc4475/ncl": (400, 400),
    "rfc4475/noreason": (None, None),
    "rfc4475/novelsc": (416, 416),
    "rfc4475/quotbal": (400, 400),
    "rfc4475/regaut01": (200, 200),
    "rfc4475/regbadct": (400, 400),
    "rfc4475/regescrt": (200, 200),
    "rfc4475/scalar02": (400, 400),
    "rfc4475/scalarlg": (None, None),
    "rfc4475/sdp01": (404, 404),
    "rfc4475/semiuri": (404, 404),
    "rfc4475/transports": (404, 404),
    "rfc4475/trws": (400, 400),
    "rfc4475/unkscm": (416, 416),
    "rfc4475/unksm2": (400, 400),
    "rfc4475/unreason": (None, None),
    "rfc4475/variants/baddn.terminated": (400, 400),
    "rfc4475/wsinv": (404, 404),
    "rfc4475/zeromf": (483, 483),
    "rfc5118/ipv4-mapped-ipv6": (404, 404),
    "rfc5118/ipv6-bad": (400, 400),
    "rfc5118/ipv6-bug-abnf-3-colons": (404, None),
    "rfc5118/ipv6-correct-abnf-2-colons": (
        480,
        None,
    ),  # an IPv6 literal we have no socket for
    "rfc5118/ipv6-good": (200, 200),
    "rfc5118/ipv6-in-sdp": (400, None),
    "rfc5118/mult-ip-in-header": (404, 404),
    "rfc5118/mult-ip-in-sdp": (400, None),
    "rfc5118/port-ambiguous": (
        403,
        403,
    ),  # [2001:db8::10:5070] is another host, not our domain
    "rfc5118/port-unambiguous": (200, 200),
    "rfc5118/via-received-param-no-delim": (200, 200),
    "rfc5118/via-received-param-with-delim": (404, 404),
    "rfc5118/wire/ipv4-mapped-ipv6": (
        None,
        480,
    ),  # user@example.com registered by an earlier round over a gone flow
    "rfc5118/wire/ipv6-bad": (400, 400),
    "rfc5118/wire/ipv6-bug-abnf-3-colons": (404, 404),
    "rfc5118/wire/ipv6-correct-abnf-2-colons": (480, 480),
    "rfc5118/wire/ipv6-good": (200, 200),
    "rfc5118/wire/ipv6-in-sdp": (404, 404),
    "rfc5118/wire/mult-ip-in-header": (404, 404),
    "rfc5118/wire/mult-ip-in-sdp": (404, 404),
    "rfc5118/wire/port-ambiguous": (403, 403),
    "rfc5118/wire/port-unambiguous": (200, 200),
    "rfc5118/wire/via-received-param-no-delim": (200, 200),
    "rfc5118/wire/via-received-param-with-delim": (404, 404),
}

_VIA_SENT_BY = re.compile(
    rb"\n(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*[\d.]+[ \t]*/[ \t]*\w+[ \t]+"
    rb"(\[[^\]]*\]|[^;,:\s]+)(?::(\d+))?",
    re.IGNORECASE,
)


def corpus_files() -> list[str]:
    return sorted(
        str(path.relative_to(CORPUS).with_suffix("")) for path in CORPUS.rglob("*.dat")
    )


def test_table_names_every_corpus_file() -> None:
    assert sorted(EXPECTED) == corpus_files()


def reply_port(data: bytes) -> int:
    """Where a UDP answer to ``data`` goes: its top Via's sent-by port (§18.2.2)."""
    match = _VIA_SENT_BY.search(data)
    return int(match.group(2)) if match and match.group(2) else 5060


_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def call_id(message: bytes) -> bytes | None:
    match = _CALL_ID.search(message)
    return match.group(1).strip() if match else None


def final_status(read: Callable[[], bytes], request: bytes) -> int | None:
    """The first final (>= 200) status answering ``request``, or None.

    Answers to earlier messages may still arrive (a 404 after a 100), so only
    responses with the request's Call-ID count.
    """
    wanted = call_id(request)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            data = read()
        except (TimeoutError, ConnectionError):
            return None
        if not data:
            return None
        # A stream read may hold several responses.
        for chunk in data.split(b"SIP/2.0 ")[1:]:
            status = int(chunk[:3]) if chunk[:3].isdigit() else 0
            if status >= 200 and (wanted is None or call_id(chunk) == wanted):
                return status
    return None


def udp_answer(data: bytes, server_port: int) -> int | None:
    """Send from the port the top Via names, since that is where answers go."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", reply_port(data)))
        sock.settimeout(1.0)
        sock.sendto(data, ("127.0.0.1", server_port))
        return final_status(lambda: sock.recv(65536), data)


def tcp_answer(data: bytes, server_port: int) -> int | None:
    with socket.create_connection(("127.0.0.1", server_port), timeout=2) as sock:
        sock.settimeout(1.0)
        sock.sendall(data)
        return final_status(lambda: sock.recv(65536), data)


def transaction_key(data: bytes) -> tuple[object, ...] | None:
    """What makes two requests one transaction (§17.2.3): branch, sent-by, method."""
    try:
        message = parse_message(data)
        via = message.top_via
    except ParseError:
        return None
    method = getattr(message, "method", None)
    return (via.branch, via.host, via.port, "INVITE" if method == "ACK" else method)


def rounds() -> list[list[str]]:
    """The corpus split so that no round holds two messages of one transaction.

    Several torture messages reuse a branch and sent-by (cparam01 and cparam02,
    the RFC 5118 archive and wire forms, ...): sent to one server they are one
    transaction, and the second is rightly absorbed as a retransmission. Each
    round goes to a fresh server so every message is judged on its own.
    """
    split: list[list[str]] = []
    seen: dict[tuple[object, ...], int] = {}
    for name in sorted(EXPECTED):
        key = transaction_key((CORPUS / f"{name}.dat").read_bytes())
        index = 0
        if key is not None:
            index = seen.get(key, -1) + 1
            seen[key] = index
        while len(split) <= index:
            split.append([])
        split[index].append(name)
    return split


def start_torture_server(log: Path) -> RunningServer:
    """The server, responsible for the domains the torture REGISTERs name."""
    port = free_port()
    return start_twistd(
        [
            "--domain",
            "example.com",
            "--domain",
            "2001:db8::10",
            "--listen",
            f"udp:{port}:interface=127.0.0.1",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            # mpart01 names 127.0.0.1:5080 in its Route; the INDEX wants it
            # forwarded, which a request-named loopback target is not by default.
            "--allow-destination",
            "127.0.0.0/8",
        ],
        port,
        log,
    )


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_every_torture_message(transport: str, tmp_path: Path) -> None:
    """Each message gets the answer the table names, and the server survives all."""
    column = 0 if transport == "udp" else 1
    seen: dict[str, int | None] = {}
    logs = []
    for index, names in enumerate(rounds()):
        server = start_torture_server(tmp_path / f"round{index}.log")
        try:
            for name in names:
                data = (CORPUS / f"{name}.dat").read_bytes()
                send = udp_answer if transport == "udp" else tcp_answer
                seen[name] = send(data, server.port)
            # Still serving everyone else, over both transports.
            options = options_request("sip:example.com")
            assert status_of(udp_exchange(options, server.port)) == 200
            tcp = options_request("sip:example.com", transport="TCP")
            assert status_of(tcp_exchange(tcp, server.port)) == 200
        finally:
            stop(server.process)
        logs.append(server.log_text())
        assert "Traceback" not in logs[-1], logs[-1]
    wrong = {
        name: (got, EXPECTED[name][column])
        for name, got in seen.items()
        if got != EXPECTED[name][column]
    }
    assert wrong == {}, f"{wrong}\n" + "\n".join(logs)
