"""Options and the TOML file become one validated Config, or one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipproxy.config import (
    Config,
    ConfigError,
    ListenSpec,
    build_config,
    read_toml,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:5060", ListenSpec("udp", 5060)),
        ("tcp:5060:interface=127.0.0.1", ListenSpec("tcp", 5060, "127.0.0.1")),
        ("UDP:0", ListenSpec("udp", 0)),
        (r"udp:5060:interface=\:\:1", ListenSpec("udp", 5060, "::1")),
        ("tcp:5062:interface=[::1]", ListenSpec("tcp", 5062, "::1")),
        (
            "tls:5061:privateKey=key.pem:certKey=cert.pem",
            ListenSpec(
                "tls", 5061, "", (("privateKey", "key.pem"), ("certKey", "cert.pem"))
            ),
        ),
        ("ws:8080:interface=127.0.0.1", ListenSpec("ws", 8080, "127.0.0.1")),
        (
            "wss:8443:privateKey=k.pem:certKey=c.pem:extraCertChain=x.pem",
            ListenSpec(
                "wss",
                8443,
                "",
                (
                    ("privateKey", "k.pem"),
                    ("certKey", "c.pem"),
                    ("extraCertChain", "x.pem"),
                ),
            ),
        ),
    ],
)
def test_listen_specs_parse(text: str, expected: ListenSpec) -> None:
    """Twisted-style endpoint strings, IPv4 and IPv6 interfaces."""
    assert ListenSpec.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sctp:5060", "unknown transport 'sctp'"),
        ("udp", "exactly one port"),
        ("udp:5060:6000", "exactly one port"),
        ("udp:70000", "port '70000'"),
        ("udp:http", "port 'http'"),
        ("udp:5060:interface=example.com", "not an IP address"),
        ("udp:5060:backlog=5", "unknown option 'backlog'"),
        ("tls:5061:certKey=c.pem", "privateKey"),
        ("wss:8443:certKey=c.pem", "wss needs privateKey"),
        ("ws:8080:privateKey=k.pem", "unknown option 'privateKey'"),
    ],
)
def test_bad_listen_specs_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        ListenSpec.parse(text)
    assert text in str(info.value)


def test_listen_spec_round_trips_through_str() -> None:
    for text in (
        "udp:5060",
        "tcp:5060:interface=127.0.0.1",
        r"udp:5060:interface=\:\:1",
    ):
        spec = ListenSpec.parse(text)
        assert ListenSpec.parse(str(spec)) == spec


def test_defaults_listen_on_udp_and_tcp_5060() -> None:
    config = build_config({}, {})
    assert [(s.transport, s.port) for s in config.listen] == [
        ("udp", 5060),
        ("tcp", 5060),
    ]
    assert config == Config()


def test_command_line_wins_over_file() -> None:
    config = build_config(
        {"domain": ["file.test"], "listen": "udp:5070", "tcp-idle-timeout": 30},
        {"domain": ["cli.test", "Other.Test"], "listen": [], "dns": ["127.0.0.1:5353"]},
    )
    assert config.domains == ("cli.test", "other.test")
    assert config.listen == (ListenSpec("udp", 5070),)
    assert config.tcp_idle_timeout == 30.0
    assert config.dns == (("127.0.0.1", 5353),)
    assert build_config({"nonce-lifetime": 60}, {}).nonce_lifetime == 60.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"domian": ["x"]}, "unknown key 'domian'"),
        ({"domain": "bad domain"}, "domain = 'bad domain'"),
        ({"domain": 5}, "expected a string or a list"),
        ({"domain": []}, "at least one domain"),
        ({"dns": ["example.com"]}, "not an IP address"),
        ({"dns": ["[::1]:99999"]}, "port '99999'"),
        ({"tcp-idle-timeout": -1}, "positive number"),
        ({"tcp-idle-timeout": "soon"}, "not a number"),
        ({"max-message-size": 10}, "1024 to 1048576"),
        ({"max-bindings": 2.5}, "whole number"),
        ({"max-bindings": 0}, "positive number"),
        ({"min-expires": 600, "default-expires": 300}, "min-expires"),
        (
            {"subscribe-min-expires": 600, "subscribe-max-expires": 300},
            "subscribe-min-expires",
        ),
        ({"blf-single-dialog": "maybe"}, "use yes or no"),
        ({"location": "mysql://x"}, "location = 'mysql://x'"),
    ],
)
def test_bad_values_name_key_and_value(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(values, {})


def test_dns_accepts_ipv6_with_and_without_port() -> None:
    config = build_config({"dns": ["::1", "[::1]:5353", "127.0.0.1"]}, {})
    assert config.dns == (("::1", 53), ("::1", 5353), ("127.0.0.1", 53))


def test_read_toml_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("domain = [\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        read_toml(str(broken))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        read_toml(str(tmp_path / "missing.toml"))


def test_shipped_example_configuration_is_valid() -> None:
    example = Path(__file__).parent.parent / "etc" / "sipproxy.toml"
    config = build_config(read_toml(str(example)), {})
    assert config.domains == ("example.test",)
    assert {(s.transport, s.interface, s.port) for s in config.listen} == {
        ("udp", "127.0.0.1", 5060),
        ("tcp", "127.0.0.1", 5060),
    }


def test_dialplan_rules_parse_in_order() -> None:
    config = build_config(
        {
            "dialplan": [
                {"match": r"^9(\d+)$", "to": r"sip:\1@trunk.example.net"},
                {"match-uri": r"@partner\.example$", "to": "sip:gw.partner.example"},
            ],
            "outbound-proxy": "sip:edge.example.net",
        },
        {},
    )
    first, second = config.dialplan
    assert first.pattern.pattern == r"^9(\d+)$"
    assert not first.whole_uri
    assert second.whole_uri
    assert config.outbound_proxy == "sip:edge.example.net"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"match": "(", "to": "sip:x"}], "no regex"),
        ([{"match": "1", "to": "http://x"}], "sip:, sips: or tel:"),
        ([{"to": "sip:x"}], "exactly one of match"),
        ([{"match": "1", "to": "sip:x", "via": "y"}], "unknown key 'via'"),
        ("nope", "expected"),
    ],
)
def test_bad_dialplan_rules_are_named(rules: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"dialplan": rules}, {})


def test_tls_options_default_to_verifying_with_the_system_store() -> None:
    config = build_config({}, {})
    assert config.tls_verify is True
    assert config.tls_ca is None


@pytest.mark.parametrize(("value", "expected"), [("no", False), ("yes", True)])
def test_tls_verify_takes_yes_or_no(value: str, expected: bool) -> None:
    assert build_config({"tls-verify": value}, {}).tls_verify is expected
    assert build_config({}, {"tls-verify": value}).tls_verify is expected
    assert build_config({"tls-verify": expected}, {}).tls_verify is expected


def test_tls_verify_refuses_anything_else() -> None:
    with pytest.raises(ConfigError, match="tls-verify = 'off': use yes or no"):
        build_config({"tls-verify": "off"}, {})


def test_tls_ca_is_a_file_name() -> None:
    assert build_config({"tls-ca": "/etc/ca.pem"}, {}).tls_ca == "/etc/ca.pem"


def test_scale_out_options() -> None:
    """--reuse-port, --advertise and --secret-file (issue 8), from file or CLI."""
    assert Config().reuse_port is False
    assert Config().advertise is None
    config = build_config(
        {"reuse-port": True, "advertise": "sip:10.0.0.1:5071;transport=tcp"},
        {"secret-file": "/etc/sipproxy/cluster.key"},
    )
    assert config.reuse_port is True
    assert config.advertise == "sip:10.0.0.1:5071;transport=tcp"
    assert config.secret_file == "/etc/sipproxy/cluster.key"
    # twistd gives a set flag as 1.
    cli = build_config({}, {"reuse-port": 1, "advertise": "sip:127.0.0.1:5071"})
    assert cli.reuse_port is True
    assert build_config({"reuse-port": False}, {}).reuse_port is False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"reuse-port": True}, "reuse-port: also give advertise"),
        ({"reuse-port": "often"}, "expected true or false"),
        ({"advertise": "10.0.0.1:5071"}, "expected a sip: or sips: URI"),
        ({"secret-file": ""}, "expected a file name"),
    ],
)
def test_bad_scale_out_options(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(values, {})


def test_secret_file_is_checked_before_anything_listens(tmp_path: Path) -> None:
    from sipproxy.tap import Options

    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    with pytest.raises(SystemExit, match="needs at least 16 bytes"):
        Options().parseOptions(["--secret-file", str(short)])
    with pytest.raises(SystemExit, match=r"secret-file .*missing\.key"):
        Options().parseOptions(["--secret-file", str(tmp_path / "missing.key")])
    good = tmp_path / "cluster.key"
    good.write_bytes(b"k" * 32)
    options = Options()
    options.parseOptions(
        [
            "--secret-file",
            str(good),
            "--reuse-port",
            "--advertise",
            "sip:127.0.0.1:5071",
        ]
    )
    assert options.config is not None
    assert options.config.reuse_port is True
    assert options.config.secret_file == str(good)


def test_trusted_takes_networks_and_single_addresses() -> None:
    """--trusted: networks (host bits ignored) or addresses; one membership test."""
    config = build_config(
        {"trusted": ["198.51.100.0/24", "192.0.2.7", "2001:db8::/48", "[::1]"]}, {}
    )
    assert config.trusted == ("198.51.100.0/24", "192.0.2.7", "2001:db8::/48", "[::1]")
    trusted = config.trusted_networks()
    assert "198.51.100.9" in trusted
    assert "192.0.2.7" in trusted
    assert "192.0.2.8" not in trusted
    assert "2001:db8:0:1::5" in trusted
    assert "::1" in trusted


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trusted": ["sbc.example.com"]}, "trusted = 'sbc.example.com': not an IP"),
        ({"trusted": ["192.0.2.0/33"]}, "trusted = '192.0.2.0/33'"),
        ({"max-connections": 0}, "max-connections = 0: expected a positive"),
        ({"max-connections": 2.5}, "max-connections = 2.5: expected a whole"),
        ({"message-timeout": "soon"}, "message-timeout = 'soon': not a number"),
        ({"message-timeout": -1}, "message-timeout = -1: expected a positive"),
    ],
)
def test_bad_edge_values_name_key_and_value(
    values: dict[str, object], message: str
) -> None:
    """Each is one line naming the key and the value (issue 13 options)."""
    with pytest.raises(ConfigError, match=message) as info:
        build_config(values, {})
    assert "\n" not in str(info.value)


def test_connection_cap_and_message_timeout_from_file_and_command_line() -> None:
    from sipproxy.tap import Options

    config = build_config({}, {})
    assert (config.max_connections, config.message_timeout) == (10_000, 10.0)
    config = build_config({"max-connections": 50, "message-timeout": 2.5}, {})
    assert (config.max_connections, config.message_timeout) == (50, 2.5)
    options = Options()
    options.parseOptions(
        ["--max-connections", "20", "--message-timeout", "1", "--trusted", "10.0.0.0/8"]
    )
    assert options.config is not None
    assert options.config.max_connections == 20
    assert options.config.message_timeout == 1.0
    assert "10.1.2.3" in options.config.trusted_networks()


def test_a_location_error_never_shows_a_password() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"location": "rediss://:secretpw@127.0.0.1/0"}, {})
    assert "secretpw" not in str(info.value)


@pytest.mark.parametrize("interface", ["[[::1]]", "[::1"])
def test_a_listen_interface_with_stray_brackets_is_refused(interface: str) -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        ListenSpec.parse(f"udp:5060:interface={interface}")


def test_ws_origins_are_normalised_and_checked() -> None:
    config = build_config(
        {"ws-origin": ["https://Phone.Example.com/", "http://127.0.0.1:8000"]}, {}
    )
    assert config.ws_origins == ("https://phone.example.com", "http://127.0.0.1:8000")
    assert build_config({}, {}).ws_origins == ()
    for bad in ("phone.example.com", "https://phone.example.com/app", "ftp://x"):
        with pytest.raises(ConfigError, match="ws-origin"):
            build_config({}, {"ws-origin": [bad]})
