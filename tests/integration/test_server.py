"""The server from outside: twistd, real loopback sockets, raw SIP and SIPp."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import (
    ROOT,
    SCENARIOS,
    TWISTD,
    RunningServer,
    options_request,
    read_response,
    require_tool,
    start_twistd,
    status_of,
    stop,
    tcp_exchange,
    udp_exchange,
)

pytestmark = pytest.mark.integration


def header(response: bytes, name: str) -> str | None:
    for line in response.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode()
    return None


def test_options_to_the_server_gets_200_over_udp(server: RunningServer) -> None:
    """OPTIONS to the domain itself is answered 200 with Allow/Accept/Supported."""
    response = udp_exchange(options_request("sip:example.test"), server.port)
    assert status_of(response) == 200
    assert response is not None
    assert "OPTIONS" in (header(response, "Allow") or "")
    assert header(response, "Accept") == "application/sdp"
    assert header(response, "Supported") is not None
    assert header(response, "Call-ID") == "probe"
    # RFC 3581: the server stamped the Via with where the request came from.
    via = header(response, "Via") or ""
    assert "received=127.0.0.1" in via
    assert "rport=" in via
    assert ";tag=" in (header(response, "To") or "")


def test_options_to_the_server_gets_200_over_tcp(server: RunningServer) -> None:
    response = tcp_exchange(
        options_request("sip:example.test", transport="TCP"), server.port
    )
    assert status_of(response) == 200
    assert "OPTIONS" in (header(response, "Allow") or "")


def test_request_for_an_unregistered_user_gets_404(server: RunningServer) -> None:
    """Nothing is silently ignored: a MESSAGE for a user nobody registered -> 404."""
    request = options_request("sip:alice@example.test").replace(b"OPTIONS", b"MESSAGE")
    assert status_of(udp_exchange(request, server.port)) == 404


def test_max_forwards_zero_to_another_domain_gets_483(server: RunningServer) -> None:
    request = options_request("sip:bob@elsewhere.test").replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0"
    )
    assert status_of(udp_exchange(request, server.port)) == 483


def test_retransmission_is_absorbed_and_answered_again(server: RunningServer) -> None:
    """RFC 3261 §17.2.2: a retransmitted request gets the same response again."""
    request = options_request("sip:example.test", branch="z9hG4bKretrans")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(request, ("127.0.0.1", server.port))
        first = sock.recv(65536)
        sock.sendto(request, ("127.0.0.1", server.port))
        second = sock.recv(65536)
    assert first == second
    assert status_of(first) == 200


def test_unaddressable_garbage_is_dropped_and_server_keeps_serving(
    server: RunningServer,
) -> None:
    assert udp_exchange(b"\x00\xff garbage \r\n\r\n", server.port, timeout=0.5) is None
    assert (
        status_of(udp_exchange(options_request("sip:example.test"), server.port)) == 200
    )


def test_malformed_request_gets_400_with_one_log_line(server: RunningServer) -> None:
    request = options_request("sip:example.test", call_id="bad-cseq").replace(
        b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS"
    )
    response = udp_exchange(request, server.port)
    assert status_of(response) == 400
    stop(server.process)
    lines = [line for line in server.log_text().splitlines() if "answered 400" in line]
    assert len(lines) == 1, server.log_text()


def test_tcp_keepalive_is_answered_with_crlf(server: RunningServer) -> None:
    """RFC 5626 §4.4.1: a CRLFCRLF ping gets a CRLF pong, then SIP still works."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(b"\r\n\r\n")
        assert sock.recv(16) == b"\r\n"
        sock.sendall(options_request("sip:example.test", transport="TCP"))
        assert status_of(read_response(sock)) == 200


def test_tcp_message_split_across_segments_and_several_in_one(
    server: RunningServer,
) -> None:
    one = options_request("sip:example.test", transport="TCP", call_id="one")
    two = options_request("sip:example.test", transport="TCP", call_id="two")
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        for i in range(0, len(one), 7):
            sock.sendall(one[i : i + 7])
        assert header(read_response(sock), "Call-ID") == "one"
        sock.sendall(one + two)
        first = read_response(sock)
        assert header(first, "Call-ID") == "one"
        # The second response may have arrived in the same read.
        rest = first.split(b"\r\n\r\n", 1)[1]
        second = rest if rest.startswith(b"SIP/2.0") else read_response(sock)
        assert header(second, "Call-ID") == "two"


def test_tcp_without_content_length_gets_400_and_close(server: RunningServer) -> None:
    request = options_request("sip:example.test", transport="TCP").replace(
        b"Content-Length: 0\r\n", b""
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(request)
        response = read_response(sock)
        assert status_of(response) == 400
        assert sock.recv(100) == b""  # closed by the server


def test_tcp_oversized_input_closes_the_connection(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        try:
            sock.sendall(b"OPTIONS sip:example.test SIP/2.0\r\nX: " + b"a" * 70000)
            data = sock.recv(65536)
            while data:
                data = sock.recv(65536)
        except ConnectionResetError:
            pass
    assert (
        status_of(udp_exchange(options_request("sip:example.test"), server.port)) == 200
    )


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_scenario(
    server: RunningServer, transport: str, tmp_path: Path
) -> None:
    """SIPp sends OPTIONS over UDP and TCP and gets 200 with Allow listing OPTIONS."""
    sipp = require_tool("sipp")
    result = subprocess.run(
        [
            sipp,
            f"127.0.0.1:{server.port}",
            "-sf",
            str(SCENARIOS / "options.xml"),
            "-t",
            transport,
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-m",
            "5",
            "-r",
            "5",
            "-timeout",
            "20",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            "-error_file",
            str(tmp_path / "errors.log"),
        ],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, (
        result.stdout.decode()[-3000:] + result.stderr.decode()
    )


def test_ipv6_listener_answers(tmp_path: Path) -> None:
    """Both IPv4 and IPv6 interfaces work (RFC 5118 addresses)."""
    from tests.integration.conftest import free_port

    port = free_port()
    running = start_twistd(
        [
            "--domain",
            "example.test",
            "--listen",
            f"udp:{port}:interface=127.0.0.1",
            "--listen",
            rf"udp:{port}:interface=\:\:1",
            "--listen",
            f"tcp:{port}:interface=[::1]",
        ],
        port,
        tmp_path / "twistd.log",
    )
    try:
        request = options_request("sip:[::1]", sent_by="[::1]:9")
        assert status_of(udp_exchange(request, port, host="::1")) == 200
        tcp_request = options_request(
            "sip:example.test", transport="TCP", sent_by="[::1]:9"
        )
        assert status_of(tcp_exchange(tcp_request, port, host="::1")) == 200
    finally:
        stop(running.process)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--listen", "bogus:1"], "bogus"),
        (["--listen", "udp:99999"], "99999"),
        (["--no-such-option"], "no-such-option"),
        (["--domain", "not a domain"], "not a domain"),
        (["--config", "/nonexistent/sipproxy.toml"], "/nonexistent/sipproxy.toml"),
    ],
)
def test_wrong_option_exits_with_one_line(args: list[str], named: str) -> None:
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "sipproxy", *args],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).decode().strip().splitlines()
    assert len(output) == 1, output
    assert named in output[0]
    assert "Traceback" not in output[0]


def test_help_documents_every_option() -> None:
    result = subprocess.run(
        [TWISTD, "sipproxy", "--help"], capture_output=True, timeout=60, cwd=ROOT
    )
    text = result.stdout.decode()
    for option in (
        "--config",
        "--domain",
        "--listen",
        "--alias",
        "--dns",
        "--max-message-size",
        "--tcp-idle-timeout",
    ):
        assert option in text, option


def test_port_in_use_fails_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "sipproxy",
                "--listen",
                f"udp:{port}:interface=127.0.0.1",
            ],
            capture_output=True,
            timeout=60,
            cwd=ROOT,
        )
    assert result.returncode != 0
    text = (result.stdout + result.stderr).decode()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "error" in line]
    assert len(errors) == 1, text
    assert f"cannot listen on udp:{port}" in errors[0]
