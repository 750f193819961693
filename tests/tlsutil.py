"""A test CA and certificates made at test time (the ``cryptography`` package).

Nothing is checked in: each test run makes its own keys, so no certificate in
the repository can expire or leak. EC P-256 keys keep generation fast.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Issued:
    """A key and certificate written as PEM files."""

    key: Path
    cert: Path
    certificate: x509.Certificate


class TestCA:
    """A self-signed CA issuing server and client certificates into ``directory``."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "sipproxy test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - _DAY)
            .not_valid_after(_now() + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            )
            .sign(self.key, hashes.SHA256())
        )
        safe = name.replace(" ", "-")
        self.cert_path = directory / f"{safe}.pem"
        self.cert_path.write_bytes(
            self.certificate.public_bytes(serialization.Encoding.PEM)
        )

    def issue(
        self,
        stem: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        expired: bool = False,
        common_name: str | None = None,
    ) -> Issued:
        """A certificate for the given subjectAltNames, written as STEM.key/STEM.pem."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        start, end = (
            (_now() - 10 * _DAY, _now() - 2 * _DAY)
            if expired
            else (_now() - _DAY, _now() + 10 * _DAY)
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or (dns or ips or (stem,))[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        certificate = builder.sign(self.key, hashes.SHA256())
        key_path = self.directory / f"{stem}.key"
        cert_path = self.directory / f"{stem}.pem"
        key_path.write_bytes(_pem_key(key))
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return Issued(key_path, cert_path, certificate)
