"""A small certificate authority for a test or a small deployment: ``edgebind-coordinator init-pki DIR --nodes n1,n2``.

Makes, with the ``cryptography`` package, a CA (``ca.pem``, ``ca.key``), the
coordinator's server certificate (``coordinator.pem``/``.key``: the names and
addresses it is reached at, for the SuperLink's and the Registry's TLS), an
operator's client certificate (``operator.pem``/``.key``: may read any node's
status at the Registry) and one client certificate per node
(``node-<id>.pem``/``.key``, the node id as its common name: the Registry lets
it speak for that node only), with its SuperNode authentication key pair
(``supernode-<id>.key``/``.pub``: the SuperLink admits registered SuperNodes only). Private keys are written 0600 in a 0700 folder; nothing is overwritten.
A real deployment brings its own CA and files instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.files import private_dir, write_secret
from coordinator.registry import OPERATOR

VALID_DAYS = 365


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgebind"), x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, fmt=serialization.PrivateFormat.PKCS8) -> None:
    write_secret(path, key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))


def _issue(subject: str, key, issuer: x509.Name, issuer_key, *, ca: bool = False, hosts: Sequence[str] = (), usage=None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
    if hosts:
        names = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def init_pki(directory: str | Path, nodes: Sequence[str] = (), hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> dict[str, str]:
    """Make a CA, the coordinator's certificate for ``hosts`` and a client certificate per node id in ``directory``.

    Returns the paths written (``ca``, ``coordinator_cert``, ``coordinator_key``, and ``node:<id>`` for each node).
    Refuses a folder that already holds a CA (a new CA would orphan every certificate made with the old one).
    """
    root = private_dir(directory)
    if (root / "ca.pem").exists():
        raise ValueError(f"{root} already holds a CA (ca.pem): use it, or give an empty folder")
    if not hosts:
        raise ValueError("init-pki needs at least one host name or address the coordinator is reached at")
    bad = [n for n in nodes if not n or "/" in n]
    if bad:
        raise ValueError(f"node ids must be non-empty without '/', got {bad[0]!r}")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("edgebind CA", ca_key, _name("edgebind CA"), ca_key, ca=True)
    _write_key(root / "ca.key", ca_key)
    (root / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    out = {"ca": str(root / "ca.pem")}
    for stem, subject, usage, names in [("coordinator", "edgebind coordinator", ExtendedKeyUsageOID.SERVER_AUTH, hosts),
                                         ("operator", OPERATOR, ExtendedKeyUsageOID.CLIENT_AUTH, ())] + [
        (f"node-{n}", n, ExtendedKeyUsageOID.CLIENT_AUTH, ()) for n in nodes
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, key, ca_cert.subject, ca_key, hosts=names, usage=usage)
        _write_key(root / f"{stem}.key", key)
        (root / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if stem in ("coordinator", "operator"):
            out.update({f"{stem}_cert": str(root / f"{stem}.pem"), f"{stem}_key": str(root / f"{stem}.key")})
        else:
            out[f"node:{subject}"] = str(root / f"{stem}.pem")
            out[f"supernode:{subject}"] = str(supernode_key(root, subject))
    return out


def supernode_key(root: Path, node_id: str) -> Path:
    """A node's SuperNode authentication key pair (``supernode-<id>.key`` 0600, ``.pub``; OpenSSH ECDSA P-384, as Flower
    takes them): the SuperLink admits only SuperNodes whose public key was registered with it. Returns the public key's path."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write_key(root / f"supernode-{node_id}.key", key, serialization.PrivateFormat.OpenSSH)
    pub = root / f"supernode-{node_id}.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return pub
