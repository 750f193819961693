"""TLS contexts and verification decisions (RFC 5922, RFC 3261 §26), in memory.

Handshakes here run between two pyOpenSSL connections over memory BIOs: real
TLS, real certificates made by tests/tlsutil.py, no socket and no reactor.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from OpenSSL import SSL

from sipproxy.transport.tls import (
    ClientConnector,
    TLSClient,
    TLSConfigError,
    identity_mismatch,
    load_credentials,
    server_options,
)
from tests.tlsutil import Issued, TestCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def good(ca: TestCA) -> Issued:
    return ca.issue("good", dns=("sip.example.test",), ips=("127.0.0.1",))


def handshake(
    client: SSL.Connection, server: SSL.Connection
) -> tuple[Exception | None, Exception | None]:
    """Pump bytes both ways until both sides finish or one fails; their errors."""
    errors: list[Exception | None] = [None, None]
    done = [False, False]
    for _ in range(20):
        for index, (this, other) in enumerate(((client, server), (server, client))):
            if errors[index] is None and not done[index]:
                try:
                    this.do_handshake()
                    done[index] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error as error:
                    errors[index] = error
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(this.bio_read(65536))
        if any(errors) or all(done):
            break
    if all(done):
        # TLS 1.3: a refused client certificate is only read after the finish.
        try:
            server.recv(1)
        except SSL.WantReadError:
            pass
        except SSL.Error as error:
            errors[1] = error
    return errors[0], errors[1]


def server_side(issued: Issued, client_ca: str | None = None) -> SSL.Connection:
    credentials = load_credentials(str(issued.key), str(issued.cert))
    context = server_options(credentials, client_ca).getContext()
    connection = SSL.Connection(context, None)
    connection.set_accept_state()
    return connection


def connect(
    connector: ClientConnector, server: SSL.Connection
) -> tuple[Exception | None, Exception | None]:
    return handshake(connector.clientConnectionForTLS(None), server)


def test_dns_subject_alt_name_proves_the_domain(good: Issued) -> None:
    """RFC 5922 §7.1: the SIP domain as a DNS subjectAltName identifies the server."""
    assert identity_mismatch(good.certificate, "sip.example.test") is None
    assert identity_mismatch(good.certificate, "SIP.Example.Test.") is None


def test_uri_subject_alt_name_proves_the_domain(ca: TestCA) -> None:
    """RFC 5922 §7.1: a URI subjectAltName sip:domain identifies the server."""
    issued = ca.issue("uri", uris=("sip:trunk.example.test",))
    assert identity_mismatch(issued.certificate, "trunk.example.test") is None
    assert identity_mismatch(issued.certificate, "other.example.test") is not None


def test_wrong_name_is_refused_naming_both(good: Issued) -> None:
    why = identity_mismatch(good.certificate, "trunk.example.test")
    assert why is not None
    assert "sip.example.test" in why
    assert "trunk.example.test" in why


def test_wildcard_names_prove_nothing(ca: TestCA) -> None:
    """RFC 5922 §7.2: wildcards are not permitted for SIP domains."""
    issued = ca.issue("wild", dns=("*.example.test",))
    assert identity_mismatch(issued.certificate, "sip.example.test") is not None


def test_an_address_needs_an_ip_subject_alt_name(good: Issued, ca: TestCA) -> None:
    assert identity_mismatch(good.certificate, "127.0.0.1") is None
    assert identity_mismatch(good.certificate, "[127.0.0.1]") is None
    assert identity_mismatch(good.certificate, "127.0.0.2") is not None
    named_only = ca.issue("named", dns=("sip.example.test",))
    assert identity_mismatch(named_only.certificate, "127.0.0.1") is not None


def test_key_that_does_not_match_the_certificate_is_refused(
    ca: TestCA, good: Issued
) -> None:
    other = ca.issue("other", dns=("other.example.test",))
    with pytest.raises(TLSConfigError, match="does not belong"):
        load_credentials(str(other.key), str(good.cert))


def test_missing_and_empty_files_are_named(tmp_path: Path, good: Issued) -> None:
    with pytest.raises(TLSConfigError, match=r"nothere\.pem"):
        load_credentials(str(tmp_path / "nothere.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(TLSConfigError, match="no PEM certificate"):
        load_credentials(str(good.key), str(empty))


def test_a_full_chain_file_gives_leaf_and_chain(ca: TestCA, good: Issued) -> None:
    """Certificates after the first in certKey (fullchain.pem) are the chain."""
    full = ca.directory / "fullchain.pem"
    full.write_bytes(good.cert.read_bytes() + ca.cert_path.read_bytes())
    credentials = load_credentials(str(good.key), str(full))
    assert credentials.certificate == good.certificate
    assert list(credentials.chain) == [ca.certificate]
    separate = load_credentials(str(good.key), str(good.cert), str(ca.cert_path))
    assert len(separate.chain) == 1


def test_one_file_may_hold_key_and_certificate(ca: TestCA, good: Issued) -> None:
    both = ca.directory / "both.pem"
    both.write_bytes(good.key.read_bytes() + good.cert.read_bytes())
    assert load_credentials(str(both)).certificate == good.certificate


@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        (SSL.TLS1_VERSION, False),
        (SSL.TLS1_1_VERSION, False),
        (SSL.TLS1_2_VERSION, True),
        (SSL.TLS1_3_VERSION, True),
    ],
)
def test_server_speaks_tls_1_2_and_newer_only(
    good: Issued, version: int, accepted: bool
) -> None:
    context = SSL.Context(SSL.TLS_METHOD)
    # OpenSSL's default security level forbids TLS < 1.2 even to try; level 0
    # lets this client offer it, so the refusal seen is the server's.
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    context.set_min_proto_version(version)
    context.set_max_proto_version(version)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    client_error, server_error = handshake(client, server_side(good))
    assert (client_error is None and server_error is None) is accepted
    if not accepted:
        assert server_error is not None


@pytest.mark.parametrize("offered", [[b"http/1.1"], [b"h2", b"http/1.1"], [b"sip"]])
def test_server_ignores_the_application_protocols_a_client_offers(
    good: Issued, offered: list[bytes]
) -> None:
    """A client offering ALPN (every browser on wss:) completes the handshake.

    No protocol is chosen (RFC 7301 §3.2: the server may ignore the offer);
    Twisted's own callback made OpenSSL end such handshakes with internal_error.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_alpn_protos(offered)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    server = server_side(good)
    assert handshake(client, server) == (None, None)
    assert client.get_alpn_proto_negotiated() == b""


def test_client_accepts_a_server_with_the_right_name(ca: TestCA, good: Issued) -> None:
    connector = TLSClient(ca_file=str(ca.cert_path)).connector("sip.example.test")
    assert connect(connector, server_side(good)) == (None, None)
    assert connector.failure is None


def test_client_refuses_a_certificate_for_another_name(
    ca: TestCA, good: Issued
) -> None:
    connector = TLSClient(ca_file=str(ca.cert_path)).connector("trunk.example.test")
    client_error, _ = connect(connector, server_side(good))
    assert client_error is not None
    assert connector.failure is not None
    assert "not trunk.example.test" in connector.failure


def test_client_refuses_an_expired_certificate(ca: TestCA) -> None:
    expired = ca.issue("expired", dns=("old.example.test",), expired=True)
    connector = TLSClient(ca_file=str(ca.cert_path)).connector("old.example.test")
    client_error, _ = connect(connector, server_side(expired))
    assert client_error is not None
    assert connector.failure is not None
    assert "expired" in connector.failure


def test_client_refuses_a_ca_it_does_not_trust(tmp_path: Path, good: Issued) -> None:
    stranger = TestCA(tmp_path / "stranger", name="stranger CA")
    connector = TLSClient(ca_file=str(stranger.cert_path)).connector("sip.example.test")
    client_error, _ = connect(connector, server_side(good))
    assert client_error is not None
    assert connector.failure is not None
    assert "issuer" in connector.failure


def test_verification_off_accepts_any_certificate(ca: TestCA) -> None:
    """--tls-verify no: the operator's explicit choice, nothing checked."""
    expired = ca.issue("expired2", dns=("old.example.test",), expired=True)
    connector = TLSClient(verify=False).connector("trunk.example.test")
    assert connect(connector, server_side(expired)) == (None, None)


def test_sni_names_the_server_but_never_an_address(ca: TestCA, good: Issued) -> None:
    client = TLSClient(ca_file=str(ca.cert_path))
    named = client.connector("sip.example.test").clientConnectionForTLS(None)
    assert named.get_servername() == b"sip.example.test"
    address = client.connector("127.0.0.1").clientConnectionForTLS(None)
    assert address.get_servername() is None


def test_mutual_tls_listener_requires_a_client_certificate(
    ca: TestCA, good: Issued
) -> None:
    """caCerts= on a listener: a client without a certificate from that CA fails."""
    anonymous = TLSClient(ca_file=str(ca.cert_path)).connector("sip.example.test")
    _, server_error = connect(anonymous, server_side(good, str(ca.cert_path)))
    assert server_error is not None
    trunk = ca.issue("trunk", dns=("trunk.example.test",))
    credentials = load_credentials(str(trunk.key), str(trunk.cert))
    with_cert = TLSClient(ca_file=str(ca.cert_path), credentials=credentials)
    connector = with_cert.connector("sip.example.test")
    assert connect(connector, server_side(good, str(ca.cert_path))) == (None, None)


def test_unreadable_tls_ca_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="tls-ca"):
        TLSClient(ca_file=str(tmp_path / "missing.pem"))
