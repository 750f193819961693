"""What the core answers, decided without sockets (RFC 3261 §8.2, §11, §16.3)."""

from __future__ import annotations

import pytest

from sipproxy.proxy.core import Proxy
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Response
from sipproxy.sip.parser import parse_message
from sipproxy.testing import RecordingChannel
from sipproxy.transport.peer import Peer

PEER = Peer("udp", "127.0.0.1", 40000)
TCP_PEER = Peer("tcp", "127.0.0.1", 40001)


def make_proxy() -> Proxy:
    return Proxy(
        local_hosts={"example.test", "127.0.0.1"}, local_ports={5060}, secret=b"k" * 16
    )


def request(
    method: str = "OPTIONS",
    uri: str = "sip:example.test",
    *,
    extra: str = "",
    max_forwards: str = "70",
    cseq_method: str | None = None,
    via: str = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK77;rport",
) -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        "From: <sip:a@example.test>;tag=1\r\n"
        f"To: <{uri}>\r\n"
        "Call-ID: c1\r\n"
        f"CSeq: 5 {cseq_method or method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def answer(data: bytes, peer: Peer = PEER) -> tuple[Response | None, Peer | None]:
    proxy, channel = make_proxy(), RecordingChannel()
    try:
        message = parse_message(data)
    except ParseError as error:
        proxy.message_invalid(error, peer, channel)
    else:
        proxy.message_received(message, peer, channel)
    if not channel.sent:
        return None, None
    assert len(channel.sent) == 1
    raw, destination = channel.sent[0]
    response = parse_message(raw)
    assert isinstance(response, Response)
    return response, destination


def test_options_to_the_server_is_answered_200() -> None:
    response, destination = answer(request())
    assert response is not None
    assert response.status == 200
    assert "OPTIONS" in (response.headers.get("allow") or "")
    assert response.headers.get("accept") == "application/sdp"
    assert "supported" in response.headers
    # §8.2.6.2: Call-ID, CSeq, From copied; To gets a tag.
    assert response.headers.get("call-id") == "c1"
    assert response.cseq.number == 5
    assert response.to_addr.tag
    assert destination == Peer("udp", "127.0.0.1", 40000)  # rport: back to the source


def test_options_to_a_user_is_not_answered_as_ours() -> None:
    response, _ = answer(request(uri="sip:alice@example.test"))
    assert response is not None
    assert response.status == 501


def test_options_with_max_forwards_zero_to_us_is_answered() -> None:
    """§16.3 step 3 exception: the element may answer an OPTIONS itself."""
    response, _ = answer(request(max_forwards="0"))
    assert response is not None and response.status == 200


def test_max_forwards_zero_elsewhere_gets_483() -> None:
    response, _ = answer(request(uri="sip:bob@elsewhere.test", max_forwards="0"))
    assert response is not None and response.status == 483


def test_unknown_scheme_gets_416() -> None:
    response, _ = answer(request(uri="nobodyKnowsThisScheme:totallyopaquecontent"))
    assert response is not None and response.status == 416


def test_proxy_require_unknown_gets_420_with_unsupported() -> None:
    response, _ = answer(request(extra="Proxy-Require: foo, bar\r\n"))
    assert response is not None and response.status == 420
    assert response.headers.get_all("unsupported") == ["foo", "bar"]


def test_require_unknown_on_options_to_us_gets_420() -> None:
    response, _ = answer(request(extra="Require: 100rel\r\n"))
    assert response is not None and response.status == 420
    assert response.headers.get("unsupported") == "100rel"


def test_cancel_without_transaction_gets_481() -> None:
    response, _ = answer(request("CANCEL", "sip:alice@example.test"))
    assert response is not None and response.status == 481


@pytest.mark.parametrize("method", ["INVITE", "REGISTER", "SUBSCRIBE", "FOO"])
def test_requests_not_handled_yet_get_501(method: str) -> None:
    response, _ = answer(request(method, "sip:alice@example.test"))
    assert response is not None and response.status == 501


def test_ack_is_never_answered() -> None:
    assert answer(request("ACK", "sip:alice@example.test")) == (None, None)


def test_malformed_ack_is_never_answered() -> None:
    data = request("ACK", "sip:alice@example.test", cseq_method="INVITE")
    assert answer(data) == (None, None)


def test_missing_call_id_still_gets_400_sent_to_the_source() -> None:
    """RFC 4475 §3.3.1 (insuf): missing required fields -> 400, not a crash."""
    data = request(via="SIP/2.0/UDP 10.9.9.9:5070;branch=z9hG4bK77").replace(
        b"Call-ID: c1\r\n", b""
    )
    response, destination = answer(data)
    assert response is not None and response.status == 400
    assert "call-id" not in response.headers
    assert destination == PEER


def test_broken_via_still_gets_400_sent_to_the_source() -> None:
    """RFC 4475 §3.1.2.1 (badinv01): the Via is unusable, the source is not."""
    response, destination = answer(request(via="192.0.2.15;;,;,,"))
    assert response is not None and response.status == 400
    assert destination == PEER


def test_no_via_at_all_is_dropped() -> None:
    data = request().replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK77;rport\r\n", b""
    )
    assert answer(data) == (None, None)


def test_malformed_request_gets_400_addressed_by_via() -> None:
    data = request(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK77").replace(
        b"Max-Forwards: 70", b"Max-Forwards: many"
    )
    response, destination = answer(data)
    assert response is not None and response.status == 400
    assert destination == Peer("udp", "127.0.0.1", 5070)  # no rport: the sent-by port


def test_responses_are_dropped() -> None:
    data = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n"
        b"From: <sip:a@example.test>;tag=1\r\nTo: <sip:b@example.test>;tag=2\r\n"
        b"Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    assert answer(data) == (None, None)


def test_over_tcp_the_answer_goes_back_on_the_connection() -> None:
    data = request(via="SIP/2.0/TCP 10.1.1.1:5999;branch=z9hG4bK77")
    response, destination = answer(data, TCP_PEER)
    assert response is not None and response.status == 200
    assert destination == TCP_PEER


def test_to_tag_is_stable_across_retransmissions_and_differs_per_request() -> None:
    first, _ = answer(request())
    again, _ = answer(request())
    other, _ = answer(request().replace(b"Call-ID: c1", b"Call-ID: c2"))
    assert first is not None and again is not None and other is not None
    assert first.to_addr.tag == again.to_addr.tag
    assert first.to_addr.tag != other.to_addr.tag
