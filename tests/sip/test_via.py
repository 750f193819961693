from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipproxy.sip.errors import ParseError
from sipproxy.sip.via import Via


@pytest.mark.parametrize(
    ("text", "transport", "host", "port", "params"),
    [
        (
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776",
            "UDP",
            "pc33.atlanta.com",
            None,
            (("branch", "z9hG4bK776"),),
        ),
        (
            "SIP  /   2.0 /UDP    192.0.2.2;branch=x",
            "UDP",
            "192.0.2.2",
            None,
            (("branch", "x"),),
        ),
        (
            "SIP/2.0/TCP h : 5070 ; branch = z9hG4bK1 ; rport",
            "TCP",
            "h",
            5070,
            (("branch", "z9hG4bK1"), ("rport", None)),
        ),
        ("SIP/2.0/TLS [2001:db8::9:1]:6050", "TLS", "[2001:db8::9:1]", 6050, ()),
        (
            "SIP/2.0/UDP h;received=[2001:db8::9:255]",
            "UDP",
            "h",
            None,
            (("received", "[2001:db8::9:255]"),),
        ),
        (
            "SIP/2.0/UDP h;received=2001:db8::9:255;rport=5060",
            "UDP",
            "h",
            None,
            (("received", "2001:db8::9:255"), ("rport", "5060")),
        ),
        ('SIP/2.0/SCTP h;x="a b;c"', "SCTP", "h", None, (("x", '"a b;c"'),)),
    ],
)
def test_via_parses(
    text: str,
    transport: str,
    host: str,
    port: int | None,
    params: tuple[tuple[str, str | None], ...],
) -> None:
    """via-parm with LWS around "/", ":", ";" and "=" (RFC 3261 §20.42, §25)."""
    via = Via.parse(text)
    assert via.protocol == "SIP/2.0"
    assert (via.transport, via.host, via.port, via.params) == (
        transport,
        host,
        port,
        params,
    )
    assert Via.parse(str(via)) == via


def test_via_properties() -> None:
    """branch, received, rport, maddr, ttl and sent_by read the parameters."""
    via = Via.parse("SIP/2.0/UDP h:5060;Branch=z9hG4bKx;rport;maddr=239.1.1.1;ttl=16")
    assert via.branch == "z9hG4bKx"
    assert via.rport == ""
    assert via.received is None
    assert via.maddr == "239.1.1.1"
    assert via.ttl == "16"
    assert via.sent_by == ("h", 5060)
    stamped = via.with_param("received", "192.0.2.1").with_param("rport", "4000")
    assert stamped.received == "192.0.2.1"
    assert stamped.rport == "4000"
    assert str(stamped) == (
        "SIP/2.0/UDP h:5060;Branch=z9hG4bKx;rport=4000;maddr=239.1.1.1;ttl=16"
        ";received=192.0.2.1"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 UDP h",
        "SIP/2.0/UDP 2001:db8::1",
        "SIP/2.0/UDP h:99999",
        "SIP/2.0/UDP h;;",
        "SIP/2.0/UDP h;",
        "SIP/2.0/UDP h junk",
        "SIP/2.0/UDP h;branch=",
        'SIP/2.0/UDP h;x="open',
    ],
)
def test_bad_vias_raise(text: str) -> None:
    """Broken via-parms raise ParseError (RFC 4475 §3.1.2.1 badinv01)."""
    with pytest.raises(ParseError):
        Via.parse(text)


HOSTILE_HOSTS = [
    "[" + ":" * 8000,
    "[" + ":" * 8000 + "]",
    "[" + ":" * 8000 + "x]",
    "[" + "1:" * 4000 + "]",
    "[" + ":" * 8000 + ";received=[::1]",
    "[::1%eth0]",
    "[1:2]",
    "[]",
    "a" * 256,
]


@pytest.mark.parametrize("host", HOSTILE_HOSTS, ids=lambda h: f"{h[:12]}..{len(h)}")
def test_hostile_sent_by_hosts_raise(host: str) -> None:
    """Issue 13: a "[" and 8,000 colons, or an overlong name, is refused.

    The host is found by its "]" and checked by ipaddress (RFC 3261 §25.1
    IPv6reference), so this costs linear time; hosts over 255 characters are no
    DNS names (RFC 1035 §2.3.4).
    """
    with pytest.raises(ParseError):
        Via.parse(f"SIP/2.0/UDP {host};branch=z9hG4bK1")


@pytest.mark.parametrize(
    "host",
    [
        "[2001:db8::1]",
        "[::ffff:192.0.2.1]",
        "[2001:db8:::192.0.2.1]",  # RFC 5118 §4.10: tolerated
        "[2001:DB8:0:0:0:0:0:1]",
        "a" * 255,
        "host_name.example.com",
    ],
)
def test_legitimate_sent_by_hosts_parse(host: str) -> None:
    """The checks refuse nothing a real sender writes (RFC 5118 §4.10 included)."""
    assert Via.parse(f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK1").host == host


@pytest.mark.parametrize(
    ("rport", "port"),
    [
        (";rport", None),
        ("", None),
        (";rport=5060", 5060),
        (";rport=65535", 65535),
        (";rport=0", None),
        (";rport=abc", None),
        (";rport=99999", None),
        (";rport=" + "9" * 400, None),
    ],
)
def test_rport_port_is_a_port_or_none(rport: str, port: int | None) -> None:
    """rport_port never raises: a value that is no port (RFC 3581) is None."""
    assert Via.parse(f"SIP/2.0/UDP h{rport}").rport_port == port


@given(st.text(alphabet="[]:.0123456789abcdefABCDEF%;=x ", max_size=120))
def test_any_sent_by_parses_or_raises_parse_error(host: str) -> None:
    """Whatever follows the sent-protocol, Via.parse returns or raises ParseError."""
    with contextlib.suppress(ParseError):
        via = Via.parse(f"SIP/2.0/UDP {host}")
        assert len(via.host) <= 255


def _either(text: str, walk: bool) -> object:
    parse = Via._parse_walk if walk else Via.parse
    try:
        return parse(text)
    except ParseError as error:
        return ("error", error.reason)


# Pieces that make plain via-parms and near misses: LWS, IPv6, quotes, long
# hosts, ports past 65535, empty parameters, commas, tabs.
_VIA_PIECES = st.sampled_from(
    [
        "SIP/2.0/",
        "SIP",
        "/",
        "2.0",
        "UDP",
        "tls",
        " ",
        "\t",
        "  ",
        "h",
        "127.0.0.1",
        "a.b-c_d",
        "h" * 256,
        ":",
        "5060",
        "0",
        "65535",
        "65536",
        "99999",
        "123456",
        ";",
        "=",
        "branch",
        "z9hG4bK-1-inv",
        "rport",
        "received",
        "[::1]",
        "[2001:db8::1]",
        "2001:db8::1",
        '"',
        '"x y"',
        ",",
        "%",
        "~",
        "\r\n",
    ]
)


def _vias(
    protocols: list[str],
    transports: list[str],
    hosts: list[str],
    ports: list[str],
    params: list[str],
) -> st.SearchStrategy[str]:
    return st.builds(
        "{}/{} {}{}{}".format,
        st.sampled_from(protocols),
        st.sampled_from(transports),
        st.sampled_from(hosts),
        st.sampled_from(ports),
        st.lists(st.sampled_from(params), max_size=4).map("".join),
    )


_PLAIN_HOSTS = ["h", "127.0.0.1", "a.b-c_d.", "_x", "h" * 255, "h" * 256]
_PLAIN_PORTS = ["", ":5060", ":0", ":65535", ":65536", ":99999"]
_PLAIN_PARAMS = [";branch=z9hG4bK-1", ";rport", ";rport=5060", ";x=%41", ";r=[::1]"]
# What the fast path takes (bar the host lengths and ports it leaves to the walk)...
_PLAIN_VIAS = _vias(
    ["SIP/2.0", "sip/2.0", "X/1"],
    ["UDP", "tcp", "TLS", "x!%*_+`'~"],
    _PLAIN_HOSTS,
    _PLAIN_PORTS,
    [*_PLAIN_PARAMS, ";received=2001:db8::1"],
)
# ...and near misses of it, one spoiler or more.
_NEAR_VIAS = _vias(
    ["SIP/2.0", "SIP /2.0", "SIP/ 2.0", "SIP/2.0 ", "\tSIP/2.0", "S,IP/2.0"],
    ["UDP", "", "U DP", "UDP\t", "UDP ", "U\u00e9"],
    [*_PLAIN_HOSTS, "[::1]", "[1:2]", "h h", "h,h", ""],
    [*_PLAIN_PORTS, ":", " :1", ": 1", ":1 ", ":123456", ":x"],
    [*_PLAIN_PARAMS, ";", "; x", ";x ", ';x="a b"', ";x=a=b", ";x=", ";x=\u00e9", ","],
)


@given(
    st.one_of(
        _PLAIN_VIAS,
        _NEAR_VIAS,
        st.lists(_VIA_PIECES, max_size=16).map("".join),
        st.text(alphabet='SIP/2.0UDP h:1;=b[]" \t,%', max_size=40),
    )
)
@settings(max_examples=3000, deadline=None)
def test_plain_via_fast_path_gives_what_the_full_walk_gives(text: str) -> None:
    """The one-regex path for plain via-parms (the hot path) never differs."""
    assert _either(text, walk=False) == _either(text, walk=True)


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-inv;rport",
        "SIP/2.0/TCP h;received=2001:db8::9:255;rport=5060",
        "SIP/2.0/UDP h:65535",
        "SIP/2.0/UDP h:65536",
        "SIP/2.0/UDP " + "h" * 256,
        "SIP/2.0/UDP " + "h" * 255 + ";lr",
        "SIP/2.0/UDP h;;",
        "SIP/2.0/UDP h;branch=",
    ],
)
def test_plain_via_fast_path_examples(text: str) -> None:
    assert _either(text, walk=False) == _either(text, walk=True)
