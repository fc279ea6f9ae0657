"""Which CA certificates verify the tunnel's TLS.

The packaged agent runs on its own OpenSSL (docs/install.md), whose compiled-in default paths point into the
bundled runtime, where there is no trust store. So the distribution's CA bundle is looked up here, in a fixed
order, instead of trusting whatever OpenSSL was built with; on a development venv (the distribution's Python)
the same lookup finds the same bundle its OpenSSL would have used.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping, Sequence

# First match wins. The Debian and RHEL files hold the same CA set as the directories next to them, kept
# current by the distribution (update-ca-certificates, update-ca-trust).
DISTRIBUTION_CA_BUNDLES: tuple[str, ...] = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Rocky, Alma, Fedora, Amazon Linux 2023 (a link to the next)
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # the same, where the compatibility link is missing
    "/etc/ssl/ca-bundle.pem",  # SUSE
    "/etc/ssl/cert.pem",  # Alpine, Arch
)


def ca_bundle(
    tunnel_ca_file: str | None,
    environ: Mapping[str, str] = os.environ,
    candidates: Sequence[str] = DISTRIBUTION_CA_BUNDLES,
    is_file: Callable[[str], bool] = os.path.isfile,
) -> str | None:
    """The CA file to verify the tunnel with; None leaves it to OpenSSL's defaults (nothing else was found).

    `tunnelCaFile` first: it replaces every other store (a private CA pins the backend). Then SSL_CERT_FILE,
    OpenSSL's own override, so an admin who set it (e.g. in /etc/default/p0-ssh-agent for a TLS-inspecting proxy)
    gets what every other OpenSSL program on the host gets. Then the distribution's bundle.
    """
    if tunnel_ca_file:
        return tunnel_ca_file
    from_environment = environ.get("SSL_CERT_FILE")
    if from_environment and is_file(from_environment):
        return from_environment
    return next((path for path in candidates if is_file(path)), None)


def tls_context(tunnel_ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: hostname check, certificate check, OpenSSL's default protocol floor."""
    return ssl.create_default_context(cafile=ca_bundle(tunnel_ca_file))
