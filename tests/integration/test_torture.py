"""Every RFC 4475 and RFC 5118 torture message against a running server.

Each is sent as it is, byte for byte, over UDP and over TCP. The table says what
the server must answer today (None: nothing, e.g. responses, which a proxy with no
matching transaction drops, or a stream message whose end never arrives). After
all of them the server must still answer OPTIONS: bad input never takes it down.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import (
    RunningServer,
    options_request,
    read_response,
    status_of,
    tcp_exchange,
    udp_exchange,
)

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "conformance"

# name -> (UDP answer, TCP answer). Requests the server cannot serve yet (no
# registrar or routing) get 501; the rest follow RFC 4475's INDEX: malformed -> 400
# (505 for SIP/7.0), unknown scheme -> 416, Proxy-Require -> 420, Max-Forwards 0 ->
# 483, responses dropped. On TCP a message without Content-Length (inv2543) gets
# 400; one whose declared body or header end never arrives gets nothing.
EXPECTED: dict[str, tuple[int | None, int | None]] = {
    "rfc4475/badaspec": (400, 400),
    "rfc4475/badbranch": (400, 400),
    "rfc4475/baddate": (501, 501),
    "rfc4475/baddn": (400, None),  # the archive copy lacks the closing CRLF
    "rfc4475/badinv01": (400, 400),
    "rfc4475/badvers": (505, 505),
    "rfc4475/bcast": (None, None),
    "rfc4475/bext01": (420, 420),
    "rfc4475/bigcode": (None, None),
    "rfc4475/clerr": (400, None),
    "rfc4475/cparam01": (501, 501),
    "rfc4475/cparam02": (501, 501),
    "rfc4475/dblreq": (501, 501),
    "rfc4475/esc01": (501, 501),
    "rfc4475/esc02": (501, 501),
    "rfc4475/escnull": (501, 501),
    "rfc4475/escruri": (400, 400),
    "rfc4475/insuf": (400, 400),
    "rfc4475/intmeth": (501, 501),
    "rfc4475/inv2543": (501, 400),
    "rfc4475/invut": (501, 501),
    "rfc4475/longreq": (501, 501),
    "rfc4475/ltgtruri": (400, 400),
    "rfc4475/lwsdisp": (501, 501),
    "rfc4475/lwsruri": (400, 400),
    "rfc4475/lwsstart": (400, 400),
    "rfc4475/mcl01": (400, 400),
    "rfc4475/mismatch01": (400, 400),
    "rfc4475/mismatch02": (501, 501),
    "rfc4475/mpart01": (501, 501),
    "rfc4475/multi01": (400, 400),
    "rfc4475/ncl": (400, 400),
    "rfc4475/noreason": (None, None),
    "rfc4475/novelsc": (416, 416),
    "rfc4475/quotbal": (400, 400),
    "rfc4475/regaut01": (501, 501),
    "rfc4475/regbadct": (400, 400),
    "rfc4475/regescrt": (501, 501),
    "rfc4475/scalar02": (400, 400),
    "rfc4475/scalarlg": (None, None),
    "rfc4475/sdp01": (501, 501),
    "rfc4475/semiuri": (501, 501),
    "rfc4475/transports": (501, 501),
    "rfc4475/trws": (400, 400),
    "rfc4475/unkscm": (416, 416),
    "rfc4475/unksm2": (501, 501),
    "rfc4475/unreason": (None, None),
    "rfc4475/variants/baddn.terminated": (400, 400),
    "rfc4475/wsinv": (501, 501),
    "rfc4475/zeromf": (483, 483),
    # RFC 5118 archive forms: bare LF line ends, tolerated; three declare a
    # Content-Length longer than their body (400 on UDP, an unfinished message on
    # TCP) and two lack the empty line that ends the header section.
    "rfc5118/ipv4-mapped-ipv6": (501, 501),
    "rfc5118/ipv6-bad": (400, 400),
    "rfc5118/ipv6-bug-abnf-3-colons": (501, None),
    "rfc5118/ipv6-correct-abnf-2-colons": (501, None),
    "rfc5118/ipv6-good": (501, 501),
    "rfc5118/ipv6-in-sdp": (400, None),
    "rfc5118/mult-ip-in-header": (501, 501),
    "rfc5118/mult-ip-in-sdp": (400, None),
    "rfc5118/port-ambiguous": (501, 501),
    "rfc5118/port-unambiguous": (501, 501),
    "rfc5118/via-received-param-no-delim": (501, 501),
    "rfc5118/via-received-param-with-delim": (501, 501),
    **{
        f"rfc5118/wire/{name}": (status, status)
        for name, status in {
            "ipv4-mapped-ipv6": 501,
            "ipv6-bad": 400,
            "ipv6-bug-abnf-3-colons": 501,
            "ipv6-correct-abnf-2-colons": 501,
            "ipv6-good": 501,
            "ipv6-in-sdp": 501,
            "mult-ip-in-header": 501,
            "mult-ip-in-sdp": 501,
            "port-ambiguous": 501,
            "port-unambiguous": 501,
            "via-received-param-no-delim": 501,
            "via-received-param-with-delim": 501,
        }.items()
    },
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


def udp_answer(data: bytes, server_port: int) -> int | None:
    """Send from the port the top Via names, since that is where answers go."""
    port = reply_port(data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.settimeout(1.0)
        sock.sendto(data, ("127.0.0.1", server_port))
        try:
            return status_of(sock.recv(65536))
        except TimeoutError:
            return None


def tcp_answer(data: bytes, server_port: int, expected: int | None) -> int | None:
    with socket.create_connection(("127.0.0.1", server_port), timeout=2) as sock:
        sock.settimeout(2.0 if expected is not None else 0.5)
        sock.sendall(data)
        return status_of(read_response(sock))


def test_every_torture_message_over_udp_and_tcp(server: RunningServer) -> None:
    seen: dict[str, tuple[int | None, int | None]] = {}
    for name in sorted(EXPECTED):
        data = (CORPUS / f"{name}.dat").read_bytes()
        expected_tcp = EXPECTED[name][1]
        seen[name] = (
            udp_answer(data, server.port),
            tcp_answer(data, server.port, expected_tcp),
        )
    wrong = {name: got for name, got in seen.items() if got != EXPECTED[name]}
    assert wrong == {}, server.log_text()[-4000:]
    # Still serving everyone else, over both transports.
    assert (
        status_of(udp_exchange(options_request("sip:example.test"), server.port)) == 200
    )
    tcp = options_request("sip:example.test", transport="TCP")
    assert status_of(tcp_exchange(tcp, server.port)) == 200
