"""SIP over TLS (RFC 3261 §26, RFC 5922, RFC 5630): contexts and identity checks.

Theory of operation. A ``tls:`` listener gets a :class:`CertificateOptions` built by
:func:`server_options`: our certificate and its chain, TLS 1.2 or newer, forward-
secret AEAD ciphers only and, when the listener names ``caCerts=``, a client
certificate signed by that CA is required (mutual TLS for trunks).

Every connection we open gets a :class:`ClientConnector` of its own from
:class:`TLSClient`: it knows the host we meant to reach (the host of the URI we
resolved, not the address DNS gave: RFC 5922 §4) and, during the handshake,
checks the chain against the trust store (``--tls-ca`` or the system's) and then
the server's identity with :func:`identity_mismatch`. A refusal is kept on the
connector as one sentence, so the caller can log why the target was unreachable.
Nothing here touches a socket: Twisted's TLS protocol drives the handshake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import (
    DNS_ID,
    URI_ID,
    DNSPattern,
    IPAddress_ID,
    ServiceID,
    verify_service_identity,
)
from twisted.internet._sslverify import OpenSSLAcceptableCiphers
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from zope.interface import implementer

from sipproxy.sip.addressing import ip_of

if TYPE_CHECKING:
    from OpenSSL.SSL import _NoOverlappingProtocols

#: Forward secrecy and authenticated encryption only (TLS 1.3 suites are
#: always these); no RSA key exchange, no CBC, no SHA-1 MACs. (Twisted exports
#: OpenSSLAcceptableCiphers, the parser of such strings, only from _sslverify.)
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"

# What OpenSSL's verify error numbers mean, for the log line (x509_vfy.h).
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    26: "unsupported certificate purpose",
}


#: the key types a certificate of ours may have
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class TLSConfigError(ValueError):
    """A key, certificate or CA file that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Our private key, our certificate and the chain that vouches for it."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TLSConfigError(f"{what} {path!r}: {error.strerror}") from None


def load_certificates(
    path: str, what: str = "certificate file"
) -> list[x509.Certificate]:
    """Every PEM certificate in ``path``, in file order; at least one."""
    data = _read(path, what)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise TLSConfigError(f"{what} {path!r}: no PEM certificate in it")
    return found


def load_credentials(
    private_key: str, certificate: str | None = None, chain: str | None = None
) -> Credentials:
    """Read a key and its certificate (with any chain) as a ``tls:`` listener names.

    ``certificate`` defaults to the key file (one PEM holding both, as Twisted's
    endpoints allow); certificates after the first in it are the chain, and
    ``chain`` adds more, so a Let's Encrypt ``fullchain.pem`` works as it is.

    :raises TLSConfigError: naming the file, for unreadable or mismatched files.
    """
    data = _read(private_key, "privateKey")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise TLSConfigError(f"privateKey {private_key!r}: {error}") from None
    if not isinstance(key, PrivateKey):
        raise TLSConfigError(f"privateKey {private_key!r}: not an RSA or EC key")
    certificates = load_certificates(certificate or private_key, "certKey")
    if chain:
        certificates += load_certificates(chain, "extraCertChain")
    leaf, *rest = certificates
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.use_certificate(leaf)
        context.use_privatekey(key)
        context.check_privatekey()
    except SSL.Error:
        raise TLSConfigError(
            f"privateKey {private_key!r} does not belong to the certificate in "
            f"{certificate or private_key!r}"
        ) from None
    return Credentials(key, leaf, tuple(rest))


def server_options(
    credentials: Credentials, client_ca: str | None = None
) -> CertificateOptions:
    """The TLS settings of one listener.

    :param client_ca: PEM file of CAs; when given, a client must present a
        certificate one of them signed (mutual TLS), else the handshake fails.
    """
    ca_certs = (
        [
            crypto.X509.from_cryptography(c)
            for c in load_certificates(client_ca, "caCerts")
        ]
        if client_ca
        else None
    )
    # Twisted's CertificateOptions still takes pyOpenSSL's types.
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(credentials.key),
        certificate=crypto.X509.from_cryptography(credentials.certificate),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in credentials.chain],
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=OpenSSLAcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        verify=ca_certs is not None,
        caCerts=ca_certs,
        requireCertificate=ca_certs is not None,
    )
    # Made now, to fail naming the listener rather than per client; Twisted
    # keeps this context and makes every connection of the listener from it.
    context = options.getContext()
    # Twisted sets an ALPN callback on every server context, and its answer
    # when no protocol is in common (b"") OpenSSL 3 takes for a chosen protocol
    # of no length: the handshake ends in an internal_error alert for every
    # client that offers ALPN, browsers on wss: among them (they offer
    # http/1.1). We choose no protocol: the client's offer is not acknowledged
    # (RFC 7301 §3.2 lets a server ignore it) and the handshake goes on.
    context.set_alpn_select_callback(_no_application_protocol)
    return options


def _no_application_protocol(
    connection: SSL.Connection, offered: list[bytes]
) -> _NoOverlappingProtocols:
    """ALPN: no protocol chosen, whatever the client offered."""
    return SSL.NO_OVERLAPPING_PROTOCOLS


def identity_mismatch(certificate: x509.Certificate, name: str) -> str | None:
    """Why ``certificate`` does not prove the server is ``name``; None if it does.

    RFC 5922 §7.1: the SIP domain must appear as a URI subjectAltName
    ``sip:domain`` or as a DNS subjectAltName (an IP literal target: an IP
    address subjectAltName). §7.2: "the use of wildcards is not permitted"
    for SIP domains, so a ``*.`` DNS name proves nothing. The Common Name is not
    consulted (RFC 6125 deprecates it; every CA writes subjectAltName).
    """
    host = name.strip("[]").rstrip(".").lower()
    try:
        patterns = extract_patterns(certificate)
    except Exception as error:  # a certificate service_identity cannot read
        return f"unreadable subjectAltName: {error}"
    patterns = [
        p
        for p in patterns
        if not (isinstance(p, DNSPattern) and p.pattern.startswith(b"*."))
    ]
    candidates: list[ServiceID]
    if ip_of(host) is not None:
        candidates = [IPAddress_ID(host)]
    else:
        try:
            candidates = [DNS_ID(host), URI_ID(f"sip:{host}")]
        except (ValueError, TypeError) as error:
            return f"{name!r} is no host name: {error}"
    for candidate in candidates:
        try:
            verify_service_identity(
                patterns, obligatory_ids=[candidate], optional_ids=[]
            )
        except (VerificationError, CertificateError):
            continue
        return None
    names = _names_in(certificate)
    return f"certificate is for {names or 'no name'}, not {host}"


def _names_in(certificate: x509.Certificate) -> str:
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return ""
    values = [str(v) for v in extension.value.get_values_for_type(x509.DNSName)]
    values += [str(v) for v in extension.value.get_values_for_type(x509.IPAddress)]
    values += extension.value.get_values_for_type(x509.UniformResourceIdentifier)
    return ", ".join(values[:5])


def verify_error(errno: int) -> str:
    """OpenSSL's verify error ``errno`` in words."""
    return _VERIFY_ERRORS.get(errno, f"certificate verify error {errno}")


@implementer(IOpenSSLClientConnectionCreator)
class ClientConnector:
    """The TLS side of one connection we open to ``server_name``.

    :ivar failure: why the server was refused, set during the handshake.
    """

    def __init__(self, context: SSL.Context, server_name: str, verify: bool) -> None:
        self.server_name = server_name
        self.failure: str | None = None
        self._context = context
        if verify:
            context.set_verify(SSL.VERIFY_PEER, self._verify)
        else:
            context.set_verify(SSL.VERIFY_NONE)

    def _verify(
        self,
        connection: SSL.Connection,
        certificate: crypto.X509,
        errno: int,
        depth: int,
        ok: int,
    ) -> bool:
        if not ok:
            self.failure = f"{verify_error(errno)} (depth {depth})"
            return False
        if depth == 0:
            why = identity_mismatch(certificate.to_cryptography(), self.server_name)
            if why is not None:
                self.failure = why
                return False
        return True

    def clientConnectionForTLS(  # noqa: N802 - Twisted's name
        self,
        tlsProtocol: Any,  # noqa: N803 - Twisted's name
    ) -> SSL.Connection:
        """A client-side connection; SNI names the server unless it is an address."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if ip_of(self.server_name) is None:
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        connection.set_connect_state()
        return connection


class TLSClient:
    """How we open TLS connections: trust, verification and our own certificate.

    :param verify: check the server's chain and identity (False only when the
        operator says so: ``--tls-verify no``).
    :param ca_file: PEM file of trusted CAs; None: the system's trust store.
    :param credentials: our certificate, shown when a server asks for one.
    """

    def __init__(
        self,
        *,
        verify: bool = True,
        ca_file: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.verify = verify
        self.ca_file = ca_file
        self.credentials = credentials
        if ca_file is not None:
            load_certificates(ca_file, "tls-ca")  # fail at start, naming the file

    def context(self) -> SSL.Context:
        """A fresh client context: TLS 1.2+, our ciphers, the trust store."""
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        context.set_cipher_list(CIPHERS.encode())
        if self.ca_file is not None:
            context.load_verify_locations(self.ca_file)
        else:
            context.set_default_verify_paths()
        if self.credentials is not None:
            context.use_certificate(self.credentials.certificate)
            for extra in self.credentials.chain:
                context.add_extra_chain_cert(extra)
            context.use_privatekey(self.credentials.key)
        return context

    def connector(self, server_name: str) -> ClientConnector:
        """A connector for one new connection to ``server_name``."""
        return ClientConnector(self.context(), server_name, self.verify)


def credentials_of(options: Sequence[tuple[str, str]]) -> Credentials:
    """The credentials a ``tls:`` listener's keyword options name."""
    named = dict(options)
    return load_credentials(
        named["privateKey"], named.get("certKey"), named.get("extraCertChain")
    )
