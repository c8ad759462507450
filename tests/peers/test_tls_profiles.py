"""Security profiles 2 (TLS + HTTP Basic) and 3 (mutual TLS) against an independent TLS client.

The charger side is Python's ``ssl`` module (OpenSSL) under ``websockets`` and the mobilityhouse
``ocpp`` ChargePoint; the node side is rustls. The test PKI is generated here with the
``cryptography`` package in a pytest tmp dir:

* server root CA -> server leaf for ``localhost`` (SAN DNS localhost + IP 127.0.0.1), one ECDSA
  P-256 key (PKCS#8 file, SEC1 file) and one RSA 2048 key (PKCS#1 file, for the cipher policy);
  server root CA -> server intermediate CA -> server leaf (chain file leaf first);
* charger CA -> client leaves with CN = charger id and O = CPO name;
* an unrelated CA that signs look-alike server and client certificates.

Every refusal test is paired with a working connection in the same test or a sibling test, so that
a refusal cannot pass because the listener is simply down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import socket
import ssl
import subprocess
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.exceptions import InvalidMessage, InvalidStatus
from ocpp.v16 import call
from ocpp.v16.enums import Reason
from ocpp.v201 import call as call201

from peerlib import http_get_json, now_iso, toml_str, wait_for_transaction

pytestmark = pytest.mark.timeout(90)

CPO = "Test CPO"
P2_ID = "CP-TLS-P2"
P2_PASSWORD = "correct horse battery staple"
P2_OTHER_ID = "CP-TLS-P2-OTHER"  # has its own password; used to cross credentials
P2_OTHER_PASSWORD = "another-password-42"
P2_NOPW_ID = "CP-TLS-P2-NOPW"  # listed in [chargers] without a password_hash
P3_ID = "CP-TLS-P3"
P3_OTHER_ID = "CP-TLS-P3-OTHER"


# ---------------------------------------------------------------------------
# Test PKI (cryptography)
# ---------------------------------------------------------------------------


@dataclass
class Issuer:
    cert: x509.Certificate
    key: object


def _name(cn: str, o: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if o is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    return x509.Name(attrs)


def _ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(cn: str, parent: Issuer | None = None) -> Issuer:
    key = _ec_key()
    issuer_name = parent.cert.subject if parent else _name(cn)
    signing_key = parent.key if parent else key
    b = (x509.CertificateBuilder()
         .subject_name(_name(cn))
         .issuer_name(issuer_name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(_now() - datetime.timedelta(days=1))
         .not_valid_after(_now() + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=True, crl_sign=True,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if parent:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
                            critical=False)
    return Issuer(b.sign(signing_key, hashes.SHA256()), key)


def make_leaf(issuer: Issuer, cn: str, *, o: str | None = None, dns: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), client: bool = False, key=None,
              expired: bool = False) -> tuple[x509.Certificate, object]:
    key = key or _ec_key()
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    if expired:
        nb, na = _now() - datetime.timedelta(days=30), _now() - datetime.timedelta(days=1)
    else:
        nb, na = _now() - datetime.timedelta(days=1), _now() + datetime.timedelta(days=30)
    b = (x509.CertificateBuilder()
         .subject_name(_name(cn, o))
         .issuer_name(issuer.cert.subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(nb)
         .not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                      key_encipherment=is_rsa, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=False, crl_sign=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                               else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                        critical=False))
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer.key, hashes.SHA256()), key


def write_certs(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def write_key(path: Path, key, fmt=serialization.PrivateFormat.PKCS8) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    return path


class Pki:
    def __init__(self, d: Path):
        self.dir = d
        self.server_ca = make_ca("Peer-test server root CA")
        self.server_ca_pem = write_certs(d / "server-ca.pem", self.server_ca.cert)
        self.charger_ca = make_ca("Peer-test charger CA")
        self.charger_ca_pem = write_certs(d / "charger-ca.pem", self.charger_ca.cert)
        self.rogue_ca = make_ca("Peer-test rogue CA")  # trusted by nobody
        self.rogue_ca_pem = write_certs(d / "rogue-ca.pem", self.rogue_ca.cert)

        host = dict(dns=("localhost",), ips=("127.0.0.1",))
        # ECDSA server leaf, key as PKCS#8 and as SEC1 ("BEGIN EC PRIVATE KEY").
        cert, key = make_leaf(self.server_ca, "localhost", **host)
        self.server_ec = (write_certs(d / "server-ec.pem", cert),
                          write_key(d / "server-ec.p8.key", key))
        self.server_ec_sec1 = (self.server_ec[0],
                               write_key(d / "server-ec.sec1.key", key,
                                         serialization.PrivateFormat.TraditionalOpenSSL))
        # RSA server leaf, key as PKCS#1 ("BEGIN RSA PRIVATE KEY").
        cert, key = make_leaf(self.server_ca, "localhost", key=_rsa_key(), **host)
        self.server_rsa = (write_certs(d / "server-rsa.pem", cert),
                           write_key(d / "server-rsa.p1.key", key,
                                     serialization.PrivateFormat.TraditionalOpenSSL))
        # Leaf signed by an intermediate; the file holds leaf then intermediate.
        inter = make_ca("Peer-test server intermediate CA", parent=self.server_ca)
        cert, key = make_leaf(inter, "localhost", **host)
        self.server_chain = (write_certs(d / "server-chain.pem", cert, inter.cert),
                             write_key(d / "server-chain.key", key))
        self._n = 0

    def client(self, cn: str, o: str | None = CPO, issuer: Issuer | None = None,
               expired: bool = False) -> tuple[Path, Path]:
        """A charger client certificate (cert file, key file)."""
        self._n += 1
        cert, key = make_leaf(issuer or self.charger_ca, cn, o=o, client=True, expired=expired)
        return (write_certs(self.dir / f"client-{self._n}.pem", cert),
                write_key(self.dir / f"client-{self._n}.key", key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def password_hashes(node_bin) -> dict[str, str]:
    """argon2id PHC strings made by `ocpp-node hash-password` (password on stdin)."""
    out = {}
    for cid, pw in ((P2_ID, P2_PASSWORD), (P2_OTHER_ID, P2_OTHER_PASSWORD)):
        r = subprocess.run([str(node_bin), "hash-password"], input=pw + "\n", capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, f"ocpp-node hash-password failed rc={r.returncode}: {r.stderr}"
        h = r.stdout.strip()
        assert h.startswith("$argon2id$"), f"hash-password printed {r.stdout!r}; want an argon2id PHC"
        assert pw not in r.stdout + r.stderr, "hash-password echoed the password"
        out[cid] = h
    assert out[P2_ID] != out[P2_OTHER_ID]
    return out


# ---------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------


def _listener_keys(cert: Path, key: Path, client_ca: Path | None = None, cpo: str | None = None) -> str:
    lines = [f"tls_cert_file = {toml_str(str(cert))}", f"tls_key_file = {toml_str(str(key))}"]
    if client_ca is not None:
        lines.append(f"tls_client_ca_file = {toml_str(str(client_ca))}")
    if cpo is not None:
        lines.append(f"cpo_name = {toml_str(cpo)}")
    return "\n".join(lines)


def _start_p2(node_factory, password_hashes, server: tuple[Path, Path]):
    extra = "\n".join([
        f"[chargers.{toml_str(P2_ID)}]", f"password_hash = {toml_str(password_hashes[P2_ID])}",
        f"[chargers.{toml_str(P2_OTHER_ID)}]",
        f"password_hash = {toml_str(password_hashes[P2_OTHER_ID])}",
        f"[chargers.{toml_str(P2_NOPW_ID)}]",
    ])
    node = node_factory.start(security_profile=2, listener_extra=_listener_keys(*server), extra=extra)
    _check_wss(node)
    return node


def _check_wss(node) -> None:
    u = urllib.parse.urlsplit(node.charger_url)
    assert u.scheme == "wss", f"a TLS listener must print a wss:// url; got {node.charger_url!r}"


@pytest.fixture
def p2_node(node_factory, password_hashes, pki):
    """Profile 2, ECDSA server key (PKCS#8)."""
    return _start_p2(node_factory, password_hashes, pki.server_ec)


@pytest.fixture
def p2_rsa_node(node_factory, password_hashes, pki):
    """Profile 2, RSA server key (PKCS#1): a static-RSA key exchange would be possible with it."""
    return _start_p2(node_factory, password_hashes, pki.server_rsa)


@pytest.fixture
def p3_node(node_factory, pki):
    """Profile 3, ECDSA server key (SEC1), charger CA, cpo_name = CPO."""
    node = node_factory.start(security_profile=3, listener_extra=_listener_keys(
        *pki.server_ec_sec1, client_ca=pki.charger_ca_pem, cpo=CPO))
    _check_wss(node)
    return node


# ---------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------


def url_for(node, host: str = "localhost") -> str:
    """The node's printed wss url with the host replaced (the cert is for localhost / 127.0.0.1)."""
    u = urllib.parse.urlsplit(node.charger_url)
    return f"wss://{host}:{u.port}{u.path}"


def client_ctx(trust: Path | None, cert: tuple[Path, Path] | None = None, *,
               tls12_cipher: str | None = None, tls12_only: bool = False) -> ssl.SSLContext:
    """An OpenSSL client context: verifies the server against ``trust`` and checks the hostname."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    if trust is not None:
        ctx.load_verify_locations(cafile=str(trust))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if tls12_only or tls12_cipher:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if tls12_cipher:
        ctx.set_ciphers(tls12_cipher)
        offered = {c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}
        assert offered == {tls12_cipher}, f"client would offer {offered}, want only {tls12_cipher}"
    return ctx


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def tls_info(ws) -> tuple[str, str]:
    so = ws.transport.get_extra_info("ssl_object")
    assert so is not None, "the connection is not TLS"
    return so.version(), so.cipher()[0]


async def boot16(cp) -> None:
    boot = await cp.call(call.BootNotification(charge_point_model="TlsPeer", charge_point_vendor="PyOpenSSL"),
                         suppress=False)
    assert boot.status == "Accepted", boot


async def expect_http_refusal(url: str, charger_id: str, ctx: ssl.SSLContext, headers=None, **kw) -> int:
    """TLS must succeed and the upgrade be refused with an HTTP status; returns that status."""
    try:
        ws = await websockets.connect(f"{url}/{charger_id}", subprotocols=["ocpp1.6"], ssl=ctx,
                                      additional_headers=headers, open_timeout=10, proxy=None, **kw)
    except InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    pytest.fail(f"{charger_id}: the node accepted the WebSocket (subprotocol {ws.subprotocol!r}); "
                f"want an HTTP refusal")


async def expect_tls_failure(url: str, charger_id: str, ctx: ssl.SSLContext, *,
                             strict_ssl_error: bool = False, **kw) -> BaseException:
    """The connection must die in TLS: no HTTP response of any status, no WebSocket.

    With TLS 1.3 a server's rejection of the client certificate reaches the client only after
    its side of the handshake completed, as an alert on the first read (websockets then reports
    InvalidMessage caused by the SSL error / EOF); with ``strict_ssl_error`` the handshake itself
    must raise ``ssl.SSLError``.
    """
    try:
        ws = await websockets.connect(f"{url}/{charger_id}", subprotocols=["ocpp1.6"], ssl=ctx,
                                      open_timeout=10, proxy=None, **kw)
    except InvalidStatus as e:
        pytest.fail(f"{charger_id}: got HTTP {e.response.status_code} at the upgrade; "
                    f"want the TLS layer to refuse the connection")
    except TimeoutError as e:
        pytest.fail(f"{charger_id}: timed out instead of failing in TLS ({e!r})")
    except ssl.SSLError as e:
        return e
    except (InvalidMessage, OSError, EOFError) as e:
        if strict_ssl_error:
            pytest.fail(f"{charger_id}: want ssl.SSLError during the handshake, got {e!r} "
                        f"(cause {e.__cause__!r})")
        cause = e.__cause__ if isinstance(e, InvalidMessage) else e
        assert isinstance(cause, (ssl.SSLError, EOFError, ConnectionError)), (
            f"{charger_id}: connection failed, but not in TLS: {e!r} (cause {cause!r})")
        return e
    else:
        info = tls_info(ws)
        await ws.close()
        pytest.fail(f"{charger_id}: the node accepted the connection ({info}); want a TLS failure")


# ---------------------------------------------------------------------------
# Profile 2: TLS server auth + HTTP Basic
# ---------------------------------------------------------------------------


async def test_p2_v16_boot_heartbeat_authorize(p2_node, pki, charger):
    ctx = client_ctx(pki.server_ca_pem)
    cp = await charger(url_for(p2_node), P2_ID, "ocpp1.6", ssl=ctx,
                       additional_headers=basic(P2_ID, P2_PASSWORD), proxy=None)
    version, cipher = tls_info(cp.ws)
    assert version == "TLSv1.3", (version, cipher)
    peer = x509.load_der_x509_certificate(cp.ws.transport.get_extra_info("ssl_object").getpeercert(True))
    assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"

    await boot16(cp)
    hb = await cp.call(call.Heartbeat(), suppress=False)
    assert hb.current_time, hb
    ok = await cp.call(call.Authorize(id_tag="TAG-OK"), suppress=False)
    assert ok.id_tag_info["status"] == "Accepted", ok
    blocked = await cp.call(call.Authorize(id_tag="TAG-BLOCKED"), suppress=False)
    assert blocked.id_tag_info["status"] == "Blocked", blocked

    status = http_get_json(f"{p2_node.admin_url}/api/status")
    ids = {c.get("id") for c in status.get("chargers", [])}
    assert P2_ID in ids, f"{P2_ID} missing from /api/status: {status}"


async def test_p2_v201_boot_heartbeat_authorize(p2_node, pki, charger):
    ctx = client_ctx(pki.server_ca_pem)
    cp = await charger(url_for(p2_node), P2_OTHER_ID, "ocpp2.0.1", ssl=ctx,
                       additional_headers=basic(P2_OTHER_ID, P2_OTHER_PASSWORD), proxy=None)
    boot = await cp.call(call201.BootNotification(
        charging_station={"model": "TlsPeer", "vendor_name": "PyOpenSSL"}, reason="PowerUp"),
        suppress=False)
    assert boot.status == "Accepted", boot
    hb = await cp.call(call201.Heartbeat(), suppress=False)
    assert hb.current_time, hb
    auth = await cp.call(call201.Authorize(id_token={"id_token": "TAG-OK", "type": "ISO14443"}),
                         suppress=False)
    assert auth.id_token_info["status"] == "Accepted", auth


async def test_p2_connect_by_ip_san(p2_node, pki, charger):
    """The server cert also names IP 127.0.0.1; the printed url works as is."""
    cp = await charger(url_for(p2_node, "127.0.0.1"), P2_ID, "ocpp1.6", ssl=client_ctx(pki.server_ca_pem),
                       additional_headers=basic(P2_ID, P2_PASSWORD), proxy=None)
    await boot16(cp)


@pytest.mark.parametrize("case", ["wrong-password", "no-credentials", "user-is-other-charger",
                                  "other-chargers-password", "charger-without-password",
                                  "unknown-charger"])
async def test_p2_bad_credentials_get_401(p2_node, pki, charger, case):
    ctx = client_ctx(pki.server_ca_pem)
    url = url_for(p2_node)
    cid, headers = {
        "wrong-password": (P2_ID, basic(P2_ID, P2_PASSWORD + "x")),
        "no-credentials": (P2_ID, None),
        # Valid credentials of another charger, presented on this charger's path.
        "user-is-other-charger": (P2_ID, basic(P2_OTHER_ID, P2_OTHER_PASSWORD)),
        "other-chargers-password": (P2_ID, basic(P2_ID, P2_OTHER_PASSWORD)),
        "charger-without-password": (P2_NOPW_ID, basic(P2_NOPW_ID, "")),
        "unknown-charger": ("CP-TLS-UNKNOWN", basic("CP-TLS-UNKNOWN", P2_PASSWORD)),
    }[case]
    try:
        ws = await websockets.connect(f"{url}/{cid}", subprotocols=["ocpp1.6"], ssl=ctx,
                                      additional_headers=headers, open_timeout=10, proxy=None)
    except InvalidStatus as e:
        assert e.response.status_code == 401, f"{case}: want HTTP 401, got {e.response.status_code}"
        challenge = e.response.headers.get("WWW-Authenticate", "")
        assert challenge.lower().startswith("basic"), (
            f"{case}: a 401 must carry a Basic WWW-Authenticate challenge, got {challenge!r}")
    else:
        await ws.close()
        pytest.fail(f"{case}: the node accepted {cid} with {headers}")

    # The refusal does not disturb the listener: the right password still works.
    cp = await charger(url, P2_ID, "ocpp1.6", ssl=ctx, additional_headers=basic(P2_ID, P2_PASSWORD),
                       proxy=None)
    await boot16(cp)


@pytest.mark.parametrize("trust", ["rogue-ca", "system-roots"])
async def test_p2_client_not_trusting_server_ca_fails(p2_node, pki, trust):
    if trust == "rogue-ca":
        ctx = client_ctx(pki.rogue_ca_pem)
    else:
        ctx = ssl.create_default_context()  # the platform's roots, not our server CA
    with pytest.raises(ssl.SSLCertVerificationError) as ei:
        ws = await websockets.connect(f"{url_for(p2_node)}/{P2_ID}", subprotocols=["ocpp1.6"], ssl=ctx,
                                      additional_headers=basic(P2_ID, P2_PASSWORD), open_timeout=10,
                                      proxy=None)
        await ws.close()
    # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    assert ei.value.verify_code == 20, (ei.value.verify_code, ei.value.verify_message)
    # Control: with the server CA it works (same node, same credentials).
    ws = await websockets.connect(f"{url_for(p2_node)}/{P2_ID}", subprotocols=["ocpp1.6"],
                                  ssl=client_ctx(pki.server_ca_pem),
                                  additional_headers=basic(P2_ID, P2_PASSWORD), open_timeout=10, proxy=None)
    await ws.close()


async def test_p2_hostname_mismatch_fails(p2_node, pki):
    ctx = client_ctx(pki.server_ca_pem)
    for url in (url_for(p2_node, "127.0.0.1"), url_for(p2_node, "localhost")):
        with pytest.raises(ssl.SSLCertVerificationError) as ei:
            ws = await websockets.connect(f"{url}/{P2_ID}", subprotocols=["ocpp1.6"], ssl=ctx,
                                          server_hostname="wrong.example",
                                          additional_headers=basic(P2_ID, P2_PASSWORD), open_timeout=10,
                                          proxy=None)
            await ws.close()
        # X509_V_ERR_HOSTNAME_MISMATCH
        assert ei.value.verify_code == 62, (url, ei.value.verify_code, ei.value.verify_message)
    # Control: same context, right name.
    ws = await websockets.connect(f"{url_for(p2_node)}/{P2_ID}", subprotocols=["ocpp1.6"], ssl=ctx,
                                  additional_headers=basic(P2_ID, P2_PASSWORD), open_timeout=10, proxy=None)
    await ws.close()


async def test_p2_plain_websocket_on_tls_port_fails(p2_node, pki):
    """A ws:// (no TLS) client gets no WebSocket, and the listener keeps serving TLS."""
    plain = url_for(p2_node).replace("wss://", "ws://", 1)
    with pytest.raises((InvalidMessage, OSError, EOFError)) as ei:
        ws = await websockets.connect(f"{plain}/{P2_ID}", subprotocols=["ocpp1.6"],
                                      additional_headers=basic(P2_ID, P2_PASSWORD), open_timeout=10,
                                      proxy=None)
        await ws.close()
    assert not isinstance(ei.value, TimeoutError), ei.value
    ws = await websockets.connect(f"{url_for(p2_node)}/{P2_ID}", subprotocols=["ocpp1.6"],
                                  ssl=client_ctx(pki.server_ca_pem),
                                  additional_headers=basic(P2_ID, P2_PASSWORD), open_timeout=10, proxy=None)
    await ws.close()


async def test_p2_server_chain_with_intermediate(node_factory, password_hashes, pki, charger):
    """tls_cert_file holds leaf + intermediate; a client trusting only the root verifies it."""
    node = _start_p2(node_factory, password_hashes, pki.server_chain)
    cp = await charger(url_for(node), P2_ID, "ocpp1.6", ssl=client_ctx(pki.server_ca_pem),
                       additional_headers=basic(P2_ID, P2_PASSWORD), proxy=None)
    await boot16(cp)


# ---------------------------------------------------------------------------
# Profile 3: mutual TLS, CN = charger id, O = CPO
# ---------------------------------------------------------------------------


async def test_p3_v16_boot_and_transaction(p3_node, pki, charger):
    ctx = client_ctx(pki.server_ca_pem, pki.client(P3_ID))
    cp = await charger(url_for(p3_node), P3_ID, "ocpp1.6", ssl=ctx, proxy=None)  # no Basic auth
    await boot16(cp)
    hb = await cp.call(call.Heartbeat(), suppress=False)
    assert hb.current_time, hb
    start = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG-OK", meter_start=10,
                                                timestamp=now_iso()), suppress=False)
    assert start.id_tag_info["status"] == "Accepted", start
    tx = start.transaction_id
    assert isinstance(tx, int) and not isinstance(tx, bool), start
    wait_for_transaction(p3_node.admin_url, P3_ID, str(tx), status="Active")
    stop = await cp.call(call.StopTransaction(meter_stop=2010, timestamp=now_iso(), transaction_id=tx,
                                              reason=Reason.local, id_tag="TAG-OK"), suppress=False)
    if stop.id_tag_info is not None:
        assert stop.id_tag_info["status"] == "Accepted", stop
    ended = wait_for_transaction(p3_node.admin_url, P3_ID, str(tx), status="Ended")
    assert ended["meterStart"] == 10 and ended["meterStop"] == 2010, ended


async def test_p3_v201_boot_over_tls12(p3_node, pki, charger):
    """Mutual TLS also works for a TLS 1.2-only client (client-cert check inside the handshake)."""
    ctx = client_ctx(pki.server_ca_pem, pki.client(P3_OTHER_ID), tls12_only=True)
    cp = await charger(url_for(p3_node), P3_OTHER_ID, "ocpp2.0.1", ssl=ctx, proxy=None)
    assert tls_info(cp.ws)[0] == "TLSv1.2"
    boot = await cp.call(call201.BootNotification(
        charging_station={"model": "TlsPeer", "vendor_name": "PyOpenSSL"}, reason="PowerUp"),
        suppress=False)
    assert boot.status == "Accepted", boot


@pytest.mark.parametrize("case", ["cn-of-other-charger", "wrong-o", "no-o"])
async def test_p3_cert_names_mismatch_gets_403(p3_node, pki, charger, case):
    cert = {
        "cn-of-other-charger": pki.client(P3_OTHER_ID),
        "wrong-o": pki.client(P3_ID, o="Other CPO"),
        "no-o": pki.client(P3_ID, o=None),
    }[case]
    status = await expect_http_refusal(url_for(p3_node), P3_ID, client_ctx(pki.server_ca_pem, cert))
    assert status == 403, f"{case}: want HTTP 403, got {status}"
    # Control: the right certificate on the same node.
    cp = await charger(url_for(p3_node), P3_ID, "ocpp1.6",
                       ssl=client_ctx(pki.server_ca_pem, pki.client(P3_ID)), proxy=None)
    await boot16(cp)


async def test_p3_basic_auth_does_not_replace_client_cert(p3_node, pki):
    """A profile-3 listener does not fall back to passwords: no cert + Basic header still fails."""
    await expect_tls_failure(url_for(p3_node), P3_ID, client_ctx(pki.server_ca_pem, tls12_only=True),
                             strict_ssl_error=True, additional_headers=basic(P3_ID, "whatever"))


def _tls_alert_after_handshake(url: str, ctx: ssl.SSLContext) -> BaseException | None:
    """Blocking probe: handshake, send a request, read. Returns what the read raised (None if the
    server answered). Unlike asyncio, a blocking SSL socket surfaces the TLS 1.3 alert that the
    server sends after verifying (and rejecting) the client certificate."""
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=u.hostname) as s:
            try:
                s.sendall(f"GET {u.path}/{P3_ID} HTTP/1.1\r\nHost: {u.hostname}\r\n\r\n".encode())
                s.recv(100)
            except (ssl.SSLError, OSError) as e:
                return e
    return None


@pytest.mark.parametrize("tls", ["tls1.3", "tls1.2"])
@pytest.mark.parametrize("case", ["no-client-cert", "cert-from-other-ca", "expired-cert"])
async def test_p3_untrusted_client_fails_in_tls(p3_node, pki, charger, case, tls):
    cert, alerts = {
        "no-client-cert": (None, ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE")),
        # Same CN and O as the good one, but signed by a CA the node does not trust.
        "cert-from-other-ca": (pki.client(P3_ID, issuer=pki.rogue_ca), ("UNKNOWN_CA", "BAD_CERTIFICATE")),
        "expired-cert": (pki.client(P3_ID, expired=True), ("CERTIFICATE_EXPIRED", "BAD_CERTIFICATE")),
    }[case]
    ctx = client_ctx(pki.server_ca_pem, cert, tls12_only=(tls == "tls1.2"))
    err = await expect_tls_failure(url_for(p3_node), P3_ID, ctx, strict_ssl_error=(tls == "tls1.2"))
    if tls == "tls1.3":
        # The client finishes its TLS 1.3 handshake before the server has judged its certificate;
        # the node's verdict is the alert on the first read.
        err = await asyncio.to_thread(_tls_alert_after_handshake, url_for(p3_node), ctx)
    assert isinstance(err, ssl.SSLError) and any(a in str(err) for a in alerts), (
        f"{case}/{tls}: want a TLS alert among {alerts}, got {err!r}")
    # Control: the right certificate, same TLS version.
    good = client_ctx(pki.server_ca_pem, pki.client(P3_ID), tls12_only=(tls == "tls1.2"))
    cp = await charger(url_for(p3_node), P3_ID, "ocpp1.6", ssl=good, proxy=None)
    await boot16(cp)


# ---------------------------------------------------------------------------
# Cipher policy: only ECDHE, AEAD
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("key,cipher", [
    ("rsa", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("rsa", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("ec", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("ec", "ECDHE-ECDSA-AES256-GCM-SHA384"),
])
async def test_tls12_ecdhe_client_connects(node_factory, password_hashes, pki, charger, key, cipher):
    node = _start_p2(node_factory, password_hashes, pki.server_rsa if key == "rsa" else pki.server_ec)
    ctx = client_ctx(pki.server_ca_pem, tls12_cipher=cipher)
    cp = await charger(url_for(node), P2_ID, "ocpp1.6", ssl=ctx, additional_headers=basic(P2_ID, P2_PASSWORD),
                       proxy=None)
    assert tls_info(cp.ws) == ("TLSv1.2", cipher)
    await boot16(cp)


async def _openssl_server_accepts(pki: Pki, ctx: ssl.SSLContext,
                                  cipher: str | None = None) -> tuple[str, str]:
    """Control: an OpenSSL server with the same RSA cert/key that enables ``cipher`` (default: all,
    all versions) completes a handshake with ``ctx`` — so a refusal by the node is the node's
    policy, not a client that cannot connect anywhere. Returns (version, cipher)."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(pki.server_rsa[0]), str(pki.server_rsa[1]))
    sctx.set_ciphers(f"{cipher or 'ALL'}:@SECLEVEL=0")
    sctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        so = writer.get_extra_info("ssl_object")
        if not got.done():
            got.set_result((so.version(), so.cipher()[0]))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 10)
        so = writer.get_extra_info("ssl_object")
        client_side = (so.version(), so.cipher()[0])
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        server_side = await asyncio.wait_for(got, 10)
        assert client_side == server_side, (client_side, server_side)
        return client_side
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


@pytest.mark.parametrize("cipher", [
    "AES256-GCM-SHA384",            # static RSA key exchange
    "AES128-GCM-SHA256",            # static RSA key exchange
    "AES128-SHA",                   # static RSA, CBC
    "ECDHE-RSA-AES128-SHA256",      # ECDHE, but CBC
    "ECDHE-RSA-CHACHA20-POLY1305",  # ECDHE AEAD, but not in the TLS 1.2 AES-GCM list
])
async def test_tls12_suite_outside_policy_fails(p2_rsa_node, pki, charger, cipher):
    ctx = client_ctx(pki.server_ca_pem, tls12_cipher=cipher)
    assert await _openssl_server_accepts(pki, ctx, cipher) == ("TLSv1.2", cipher)
    err = await expect_tls_failure(url_for(p2_rsa_node), P2_ID, ctx, strict_ssl_error=True,
                                   additional_headers=basic(P2_ID, P2_PASSWORD))
    assert "certificate verify failed" not in str(err), err
    # Control: the default (TLS 1.3) client on the same node.
    cp = await charger(url_for(p2_rsa_node), P2_ID, "ocpp1.6", ssl=client_ctx(pki.server_ca_pem),
                       additional_headers=basic(P2_ID, P2_PASSWORD), proxy=None)
    await boot16(cp)


async def test_tls11_client_fails(p2_rsa_node, pki):
    """TLS 1.0/1.1 are not offered (rustls has neither)."""
    ctx = client_ctx(pki.server_ca_pem)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # the TLSv1 / TLSv1_1 members are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    version, _ = await _openssl_server_accepts(pki, ctx)
    assert version in ("TLSv1", "TLSv1.1"), version
    await expect_tls_failure(url_for(p2_rsa_node), P2_ID, ctx, strict_ssl_error=True,
                             additional_headers=basic(P2_ID, P2_PASSWORD))
