"""Every network connection a deployment needs, from the site configuration, and nftables rules from them.

`site_flows(site)` lists each connection as (from, to host:port, protocol, why): the backup host's own
connections to the sources, the archive, staging and the Mosaiq database; the connections the peers make
among themselves for it (a C-MOVE makes the source open a new association to the destination, PS3.4
C.4.2.2.1); the connections into the backup host (operators through nginx, and the archive calling back
when the script AE has a port); and the loopback connections between the services on the backup host.
`nftables_rules(flows)` turns the same list into an nftables ruleset for the backup host, so the firewall
and the list cannot drift apart.

    python -m dicom_backup_dagster.flows [--config PATH] [--env NAME] [--nftables]

No dagster import: this runs on a host where Dagster is not installed yet.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from dicom_backup_dagster.config import ConfigError, SiteConfig, load_config

BACKUP_HOST = "backup-host"
OPERATORS = "operators"
# SQL Server's registered port (TDS), used when db_port is not set and the driver is not SQLite.
SQL_SERVER_PORT = 1433


@dataclass(frozen=True)
class Deployment:
    """Where the services on the backup host listen: the values deploy/systemd and deploy/nginx use."""

    https_port: int = 443  # nginx: Dagster UI and /metrics, TLS + authentication
    webserver_port: int = 3000  # dagster-webserver, 127.0.0.1 only
    exporter_port: int = 9108  # dicom-backup-exporter, 127.0.0.1 only
    code_server_port: int = 4266  # dicom-backup-code@<site>, 127.0.0.1 only
    postgres_host: str = "127.0.0.1"  # Dagster storage (DAGSTER_PG_HOST)
    postgres_port: int = 5432


@dataclass(frozen=True)
class Flow:
    """One TCP connection: `source` opens it to `host:port`."""

    source: str  # BACKUP_HOST, OPERATORS, or a peer as "ALIAS (host)"
    target: str  # what listens: "ALIAS" or a service name
    host: str
    port: int
    protocol: str
    why: str

    @property
    def inbound(self) -> bool:
        """A connection into the backup host from elsewhere."""
        return self.target.startswith(BACKUP_HOST) and self.source != BACKUP_HOST

    @property
    def outbound(self) -> bool:
        return self.source == BACKUP_HOST and not _is_loopback(self.host)

    def __str__(self) -> str:
        return f"{self.source:<28} -> {self.target} {self.host}:{self.port}  {self.protocol}  ({self.why})"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _url_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default


def _source_flows(site: SiteConfig) -> list[Flow]:
    env = site.environment
    main = env.backup_targets[env.default_backup]
    flows: list[Flow] = []
    for alias, src in env.sources.items():
        if src.type == "mosaiq":
            port = getattr(src, "db_port", None)
            server = getattr(src, "db_server", "")
            if not str(getattr(src, "odbc_driver", "")).lower().startswith("sqlite"):  # SQLite: a local file
                flows.append(
                    Flow(BACKUP_HOST, alias, server, port or SQL_SERVER_PORT, "TDS (SQL Server)",
                         "read-only SELECTs of delivered treatments")
                )  # fmt: skip
            staging = env.backup_targets[src.staging_target_alias]
            flows.append(
                Flow(f"{staging.alias} ({staging.ip})", main.alias, main.ip, main.port, "DICOM",
                     f"C-STORE sub-operations of the C-MOVE that brings {alias}'s RT records to the archive")
            )  # fmt: skip
            continue
        retrieve = (
            "C-GET (data returns on this association)" if src.transfer == "c-get" else "C-MOVE requests"
        )
        services = f"C-ECHO, C-FIND, {retrieve}"
        flows.append(
            Flow(BACKUP_HOST, alias, src.ip, src.port, "DICOM", f"{services} as {env.script_ae.aet}")
        )
        if src.transfer == "c-move":
            flows.append(
                Flow(f"{alias} ({src.ip})", main.alias, main.ip, main.port, "DICOM",
                     f"C-STORE sub-operations of the C-MOVE to {main.aet}")
            )  # fmt: skip
    return flows


def _target_flows(site: SiteConfig) -> list[Flow]:
    env = site.environment
    staging = {getattr(s, "staging_target_alias", "") for s in env.sources.values() if s.type == "mosaiq"}
    flows: list[Flow] = []
    for alias, tgt in env.backup_targets.items():
        if alias == env.default_backup:
            why = (
                "C-ECHO, C-FIND (presence), C-GET (content digests), C-MOVE (restores), C-STORE (C-GET data)"
            )
        elif alias in staging:
            why = "C-ECHO, C-STORE of RT Beams Treatment Records, C-FIND, C-MOVE to the archive"
        else:
            why = "C-ECHO, C-STORE"
        flows.append(Flow(BACKUP_HOST, alias, tgt.ip, tgt.port, "DICOM", why))
        if tgt.rest_url:
            host, port = _url_address(tgt.rest_url)
            scheme = urlsplit(tgt.rest_url).scheme.upper()
            rest_why = (
                "statistics, verification"
                if alias == env.default_backup
                else "lookup and deletion of verified staged records (staging_cleanup)"
            )
            flows.append(Flow(BACKUP_HOST, f"{alias} REST", host, port, f"{scheme} (basic auth)", rest_why))
    if env.script_ae.port:
        main = env.backup_targets[env.default_backup]
        flows.append(
            Flow(f"{main.alias} ({main.ip})", f"{BACKUP_HOST} {env.script_ae.aet}", "0.0.0.0",
                 env.script_ae.port, "DICOM",
                 "C-MOVE to the backup AE and Storage Commitment N-EVENT-REPORT (script_ae.port)")
        )  # fmt: skip
    return flows


def _notification_flows(site: SiteConfig) -> list[Flow]:
    notifications = getattr(site.environment, "notifications", None)
    flows: list[Flow] = []
    slack = getattr(notifications, "slack", None)
    if slack is not None:
        if getattr(slack, "webhook_url_env", None):
            host, port = "hooks.slack.com", 443  # incoming webhooks are https://hooks.slack.com/services/...
        else:
            host, port = _url_address(slack.base_url)
        flows.append(Flow(BACKUP_HOST, "Slack", host, port, "HTTPS", "alerts (backup failed, checks failed)"))
    pagerduty = getattr(notifications, "pagerduty", None)
    if pagerduty is not None:
        host, port = _url_address(pagerduty.events_url)
        flows.append(Flow(BACKUP_HOST, "PagerDuty", host, port, "HTTPS", "critical alerts (Events API v2)"))
    email = getattr(notifications, "email", None)
    if email is not None:
        proto = "SMTP" + (" + STARTTLS" if email.starttls else "")
        flows.append(
            Flow(BACKUP_HOST, "SMTP relay", email.smtp_host, email.smtp_port, proto, "alert e-mails")
        )
    return flows


def _host_flows(site: SiteConfig, d: Deployment) -> list[Flow]:
    site_name = site.environment.name
    flows = [
        Flow(OPERATORS, f"{BACKUP_HOST} nginx", "0.0.0.0", d.https_port, "HTTPS (basic auth)",
             "Dagster UI and GraphQL; Prometheus scrapes /metrics"),
        Flow(f"{BACKUP_HOST} nginx", "dagster-webserver", "127.0.0.1", d.webserver_port, "HTTP",
             "reverse proxy to the UI (the webserver has no authentication)"),
        Flow(f"{BACKUP_HOST} nginx", "dicom-backup-exporter", "127.0.0.1", d.exporter_port, "HTTP",
             "reverse proxy to the metrics"),
        Flow(f"{BACKUP_HOST} webserver, daemon", f"dicom-backup-code@{site_name}", "127.0.0.1",
             d.code_server_port, "gRPC", "code location of the site (definitions, run launches)"),
    ]  # fmt: skip
    source = BACKUP_HOST if not _is_loopback(d.postgres_host) else f"{BACKUP_HOST} services"
    flows.append(
        Flow(source, "PostgreSQL", d.postgres_host, d.postgres_port, "PostgreSQL",
             "Dagster storage: runs, events, schedules (webserver, daemon, code server, runs, exporter)")
    )  # fmt: skip
    return flows


def site_flows(site: SiteConfig, deployment: Deployment | None = None) -> list[Flow]:
    """Every connection the deployment of this site needs; duplicates (same ends and port) merged."""
    d = deployment or Deployment()
    flows = _source_flows(site) + _target_flows(site) + _notification_flows(site) + _host_flows(site, d)
    merged: dict[tuple[str, str, int], Flow] = {}
    for flow in flows:
        key = (flow.source, flow.host, flow.port)
        if key in merged:
            old = merged[key]
            flow = Flow(old.source, old.target, old.host, old.port, old.protocol, f"{old.why}; {flow.why}")
        merged[key] = flow
    return list(merged.values())


# --------------------------------------------------------------------------------------------------------
# nftables for the backup host

Resolver = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    """IPv4/IPv6 addresses of a host name (an address is returned as is)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


def _match(direction: str, address: str) -> str:
    family = "ip6" if ipaddress.ip_address(address).version == 6 else "ip"
    return f"{family} {direction} {address}"


def _comment(text: str) -> str:
    return '"' + text.replace('"', "'")[:120] + '"'  # nft comments are at most 128 bytes


def _rules(flows: Iterable[Flow], direction: str, resolver: Resolver) -> list[str]:
    lines: list[str] = []
    for flow in flows:
        note = _comment(f"{flow.target}: {flow.protocol}")
        if direction == "daddr":
            addresses = resolver(flow.host)
            if not addresses:
                lines.append(
                    f"# UNRESOLVED {flow.host}: add its address: ip daddr ADDRESS tcp dport {flow.port}"
                )
            for address in addresses:
                lines.append(f"{_match('daddr', address)} tcp dport {flow.port} accept comment {note}")
            continue
        peer = flow.source.rsplit("(", 1)[-1].rstrip(")") if "(" in flow.source else ""
        addresses = resolver(peer) if peer else []
        if peer and not addresses:
            lines.append(f"# UNRESOLVED {peer}: add: ip saddr ADDRESS tcp dport {flow.port} accept")
        for address in addresses:
            lines.append(f"{_match('saddr', address)} tcp dport {flow.port} accept comment {note}")
        if not peer:
            lines.append(f"tcp dport {flow.port} accept comment {note}")
    return lines


def nftables_rules(flows: Sequence[Flow], site_name: str = "", resolver: Resolver = resolve) -> str:
    """An `nft -f` file for the backup host: default drop both ways, then exactly the listed flows.

    Host names are resolved now (nft would resolve them once at load time too); regenerate the file
    when an address changes. Loopback traffic between the local services is accepted as a whole.
    """
    inbound = [f for f in flows if f.inbound]
    outbound = [f for f in flows if f.outbound]
    head = f"site {site_name}: " if site_name else ""
    indent = "\t\t"
    lines = [
        "#!/usr/sbin/nft -f",
        f"# {head}generated by `python -m dicom_backup_dagster.flows --nftables` from the site config.",
        "# Narrow the SSH rule to the administrators' network; add package mirrors to the output chain.",
        "table inet dicom_backup",
        "delete table inet dicom_backup",
        "table inet dicom_backup {",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy drop;",
        f"{indent}ct state established,related accept",
        f"{indent}ct state invalid drop",
        f'{indent}iif "lo" accept',
        f"{indent}meta l4proto {{ icmp, ipv6-icmp }} accept",
        f'{indent}tcp dport 22 accept comment "ssh (administration)"',
        *(indent + rule for rule in _rules(inbound, "saddr", resolver)),
        "\t}",
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy drop;",
        f"{indent}ct state established,related accept",
        f'{indent}oif "lo" accept',
        f'{indent}meta l4proto {{ tcp, udp }} th dport 53 accept comment "DNS"',
        f'{indent}udp dport 123 accept comment "NTP"',
        f"{indent}meta l4proto {{ icmp, ipv6-icmp }} accept",
        *(indent + rule for rule in _rules(outbound, "daddr", resolver)),
        "\t}",
        "}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dicom_backup_dagster.flows",
        description="Print every network connection the deployment of a site needs (or nftables rules).",
    )
    parser.add_argument("--config", help="path of the TOML file (default: $DICOM_BACKUP_CONFIG)")
    parser.add_argument("--env", "--environment", dest="environment", help="environment (site) name")
    parser.add_argument("--all", action="store_true", help="every site of the file (one backup host)")
    parser.add_argument(
        "--nftables", action="store_true", help="print an nftables ruleset for the backup host"
    )
    parser.add_argument("--https-port", type=int, default=Deployment.https_port)
    parser.add_argument("--code-server-port", type=int, default=Deployment.code_server_port)
    parser.add_argument(
        "--postgres",
        default=f"{os.environ.get('DAGSTER_PG_HOST') or '127.0.0.1'}:"
        f"{os.environ.get('DAGSTER_PG_PORT') or 5432}",
        help="Dagster storage HOST:PORT (default $DAGSTER_PG_HOST:$DAGSTER_PG_PORT, else 127.0.0.1:5432)",
    )
    args = parser.parse_args(argv)
    try:
        site = load_config(args.config, args.environment)
        sites = [load_config(args.config, n) for n in site.environment_names] if args.all else [site]
    except ConfigError as exc:
        print(f"configuration INVALID:\n{exc}", file=sys.stderr)
        return 2
    pg_host, _, pg_port = args.postgres.rpartition(":")
    deployment = Deployment(
        https_port=args.https_port,
        code_server_port=args.code_server_port,
        postgres_host=pg_host or "127.0.0.1",
        postgres_port=int(pg_port or 5432),
    )
    # All sites: one backup host, so one list (a flow two sites need, listed once) and one ruleset.
    flows = list(dict.fromkeys(f for s in sites for f in site_flows(s, deployment)))
    name = "+".join(s.environment.name for s in sites)
    if args.nftables:
        print(nftables_rules(flows, name), end="")
        return 0
    print(f"# site {name}: {len(flows)} connections (from -> to host:port  protocol  (why))")
    for flow in flows:
        print(flow)
    return 0


if __name__ == "__main__":
    sys.exit(main())
