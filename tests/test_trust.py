"""The CA bundle the tunnel verifies with: tunnelCaFile, then SSL_CERT_FILE, then the distribution's bundle.

The packaged runtime's OpenSSL has no trust store of its own (docs/install.md), so this lookup is what makes
wss:// work on Debian, Ubuntu, RHEL, Fedora and Amazon Linux alike.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from p0_ssh_agent.runtime import trust


def _layout(tmp_path: Path, *present: str) -> list[str]:
    """The probe list re-rooted under tmp_path, with only `present` (names from the real list) existing."""
    candidates = [str(tmp_path / path.lstrip("/")) for path in trust.DISTRIBUTION_CA_BUNDLES]
    for path in present:
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("")
    return candidates


def test_debian_bundle_comes_first(tmp_path: Path) -> None:
    candidates = _layout(tmp_path, "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
    assert trust.ca_bundle(None, environ={}, candidates=candidates) == candidates[0]


def test_rhel_bundle_then_ca_trust_extracted(tmp_path: Path) -> None:
    rhel = _layout(tmp_path, "/etc/pki/tls/certs/ca-bundle.crt", "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem")
    assert trust.ca_bundle(None, environ={}, candidates=rhel) == str(tmp_path / "etc/pki/tls/certs/ca-bundle.crt")
    only_extracted = _layout(tmp_path / "al2023", "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem")
    assert trust.ca_bundle(None, environ={}, candidates=only_extracted) == str(
        tmp_path / "al2023/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"
    )


def test_tunnel_ca_file_wins_over_everything(tmp_path: Path) -> None:
    candidates = _layout(tmp_path, "/etc/ssl/certs/ca-certificates.crt")
    override = tmp_path / "override.pem"
    override.write_text("")
    environ = {"SSL_CERT_FILE": str(override)}
    assert trust.ca_bundle("/etc/p0/ca.pem", environ=environ, candidates=candidates) == "/etc/p0/ca.pem"


def test_ssl_cert_file_wins_over_the_distribution_bundle_only_if_it_exists(tmp_path: Path) -> None:
    candidates = _layout(tmp_path, "/etc/ssl/certs/ca-certificates.crt")
    override = tmp_path / "override.pem"
    assert trust.ca_bundle(None, environ={"SSL_CERT_FILE": str(override)}, candidates=candidates) == candidates[0]
    override.write_text("")
    assert trust.ca_bundle(None, environ={"SSL_CERT_FILE": str(override)}, candidates=candidates) == str(override)


def test_nothing_found_leaves_it_to_openssl(tmp_path: Path) -> None:
    assert trust.ca_bundle(None, environ={}, candidates=_layout(tmp_path)) is None


def test_context_verifies_and_loads_the_bundle(tmp_path: Path) -> None:
    # A real CA certificate: the distribution's bundle this machine has, loaded through the same function.
    system = trust.ca_bundle(None)
    assert system is not None, "no distribution CA bundle on this machine"
    context = trust.tls_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0
