"""Which names the agent may give an account it CREATES for the backend (pure).

A request's userName is checked for syntax when it is parsed (core.requests.USER_NAME_RE, which also admits the
names of existing accounts an operator adopts, such as `_backup`). Creating an account is a stronger act: the name
then belongs to a JIT user for as long as the account lives, so two more rules apply, here and only here.
`adoptUsers` entries and the user names of collectSudoshRecordings keep their own rules.

* The Go agent's pattern `^[a-z][-a-z0-9_]*$` (upstream-protocol.md §5.3): no leading "_". A leading underscore is
  the convention of system service accounts (Debian's `_apt`, `_chrony`, `_rpc`; every daemon on the BSDs and
  macOS), and the Go agent refuses it, so the backend never generates one. Its error message is kept as the prefix
  of ours, because that is what the backend may match.
* Not a service account name that packages create when they are installed, which may be after the JIT user. A JIT
  user called `postgres` either breaks `apt install postgresql` (Debian's `adduser --system` refuses an existing
  account that is not a system one) or, where systemd-sysusers creates the account (Fedora, Arch, newer Debian
  packages: it only creates accounts that do not exist yet), silently becomes the service's account, so whoever the
  backend gave it to owns the database's files. SERVICE_ACCOUNTS lists such names with the reason, on top of
  core.requests.RESERVED_USER_NAMES (root, www-data, nobody, sshd, messagebus, _apt, ...: no request may name
  those at all); every name that starts with a SERVICE_ACCOUNT_PREFIXES entry is reserved too. It holds the common
  names of Debian, Ubuntu, Fedora, RHEL, SUSE, Arch and Alpine, not every one: an account that exists already is
  refused by the ownership rule anyway, so the list only has to cover the names a host may acquire later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import RESERVED_USER_NAMES

# Upstream's pattern, as upstream spells it in its error message.
GO_AGENT_USER_NAME_RE = r"^[a-z][-a-z0-9_]*$"
_GO_AGENT_USER_NAME = re.compile(GO_AGENT_USER_NAME_RE.strip("^$"), re.ASCII)

SERVICE_ACCOUNTS: Mapping[str, str] = {
    # databases and caches
    "postgres": "PostgreSQL, every distribution",
    "mysql": "MySQL and MariaDB",
    "mariadb": "MariaDB on some distributions",
    "redis": "Redis",
    "valkey": "Valkey",
    "mongodb": "MongoDB",
    "memcache": "memcached on Debian and Ubuntu",
    "memcached": "memcached on Fedora, RHEL, Arch",
    "couchdb": "CouchDB",
    "cassandra": "Cassandra",
    "elasticsearch": "Elasticsearch",
    "opensearch": "OpenSearch",
    "influxdb": "InfluxDB",
    "clickhouse": "ClickHouse",
    "etcd": "etcd",
    "rabbitmq": "RabbitMQ",
    "kafka": "Kafka",
    "zookeeper": "ZooKeeper",
    # web and application servers
    "nginx": "nginx on Fedora, RHEL, SUSE, Alpine",
    "apache": "httpd on Fedora and RHEL",
    "wwwrun": "Apache on SUSE",
    "http": "web servers on Arch",
    "lighttpd": "lighttpd",
    "caddy": "Caddy",
    "haproxy": "HAProxy",
    "squid": "Squid on Fedora and RHEL (Debian uses proxy)",
    "varnish": "Varnish",
    "tomcat": "Tomcat",
    "jetty": "Jetty",
    # mail
    "postfix": "Postfix",
    "dovecot": "Dovecot",
    "dovenull": "Dovecot's unprivileged login process",
    "exim": "Exim on Fedora and RHEL",
    "opendkim": "OpenDKIM",
    "clamav": "ClamAV",
    "spamd": "SpamAssassin",
    # network services
    "bind": "BIND on Debian and Ubuntu",
    "named": "BIND on Fedora and RHEL",
    "unbound": "Unbound",
    "dnsmasq": "dnsmasq",
    "chrony": "chrony on Fedora and RHEL (Debian uses _chrony)",
    "ntp": "ntpd",
    "ntpsec": "NTPsec",
    "openvpn": "OpenVPN",
    "tss": "the TPM2 software stack",
    "rpc": "rpcbind on Fedora and RHEL",
    "rpcuser": "NFS's rpc.statd on Fedora and RHEL",
    "statd": "NFS's rpc.statd on Debian",
    "tcpdump": "tcpdump (it drops privileges to it)",
    "sssd": "SSSD",
    "dbus": "D-Bus on Fedora, RHEL, Arch (Debian uses messagebus)",
    "tftp": "TFTP servers",
    "snmp": "Net-SNMP",
    "libvirt-qemu": "libvirt's virtual machines",
    "libvirt-dnsmasq": "libvirt's DHCP and DNS",
    "qemu": "QEMU and libvirt on Fedora and RHEL",
    "syslog": "rsyslog on Ubuntu",
    "uuidd": "the UUID daemon",
    "landscape": "Ubuntu's Landscape client",
    "pollinate": "Ubuntu's entropy seeding",
    "tor": "Tor on Fedora (Debian uses debian-tor)",
    # desktop and hardware
    "avahi": "Avahi",
    "avahi-autoipd": "Avahi's link-local addressing",
    "colord": "colord",
    "geoclue": "GeoClue",
    "pulse": "PulseAudio's system mode",
    "pipewire": "PipeWire's system mode",
    "rtkit": "RealtimeKit",
    "saned": "SANE's network scanner daemon",
    "usbmux": "usbmuxd",
    "cups": "CUPS on some distributions",
    "gdm": "GDM",
    "lightdm": "LightDM",
    "sddm": "SDDM",
    "flatpak": "Flatpak's system helper",
    "fwupd-refresh": "fwupd's metadata refresh",
    "kernoops": "Ubuntu's kernel oops reporter",
    "whoopsie": "Ubuntu's crash reporter",
    "speech-dispatcher": "speech-dispatcher",
    # monitoring, backup, CI, containers
    "prometheus": "Prometheus and its exporters",
    "grafana": "Grafana",
    "zabbix": "Zabbix",
    "nagios": "Nagios",
    "icinga": "Icinga",
    "telegraf": "Telegraf",
    "node-exporter": "Prometheus node exporter",
    "jenkins": "Jenkins",
    "gitlab-runner": "GitLab Runner",
    "git": "git daemons and forges: Gitea, GitLab",
    "gitea": "Gitea",
    "bacula": "Bacula",
    "amanda": "Amanda",
    "dockremap": "Docker's user-namespace remapping",
    "ceph": "Ceph",
    "hacluster": "Pacemaker",
    "puppet": "Puppet",
    "salt": "Salt",
    "vault": "HashiCorp Vault",
    "consul": "HashiCorp Consul",
}
# systemd creates systemd-network, systemd-resolve, systemd-timesync, systemd-coredump, systemd-oom ... on demand
# (sysusers.d) or per unit (DynamicUser=); a new one appears with every systemd release.
SERVICE_ACCOUNT_PREFIXES: Mapping[str, str] = {
    "systemd-": "systemd (systemd-network, systemd-resolve, systemd-timesync, ...)",
}


def new_account_refusal(name: str) -> str | None:
    """Why the agent must not create an account called `name` (already valid for USER_NAME_RE), or None."""
    if not _GO_AGENT_USER_NAME.fullmatch(name):
        detail = 'a new account\'s name must start with a lowercase letter (a leading "_" marks a service account)'
        return f"{messages.invalid_user_name(GO_AGENT_USER_NAME_RE)} (userName {messages.shown(name)}: {detail})"
    reason = SERVICE_ACCOUNTS.get(name)
    if reason is None:
        reason = next((why for prefix, why in SERVICE_ACCOUNT_PREFIXES.items() if name.startswith(prefix)), None)
    if reason is None and name in RESERVED_USER_NAMES:
        reason = "the base system"
    if reason is not None:
        return (
            f"invalid userName: refusing to create {name}: the name is reserved for the service account of {reason}, "
            "which a package may create on this host later; choose another name"
        )
    return None
