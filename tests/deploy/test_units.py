"""deploy/systemd units (systemd-analyze verify, hardening), .env.prod.template, logrotate, flows."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_backup_dagster import flows
from dicom_backup_dagster.config import load_config
from dicom_backup_dagster.logs import JsonLinesHandler

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
SERVICES = [
    "dicom-backup-webserver.service",
    "dicom-backup-daemon.service",
    "dicom-backup-code@.service",
    "dicom-backup-exporter.service",
    "dicom-backup-worker@.service",
]
WRITABLE = {
    "/var/lib/dicom-backup/dagster_home",
    "/var/lib/dicom-backup/spool",
    "/var/lib/dicom-backup/reports",
    "/var/log/dicom-backup",
}
EXAMPLE = REPO / "config" / "environments.example.toml"


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is missing: scripts/setup.sh installs Debian's systemd")
    probe = subprocess.run([tool, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {probe.stderr.strip()}")
    return tool


def verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def installed_units(tmp_path: Path) -> list[Path]:
    """The units as release.sh renders them for a host, with every ExecStart binary present."""
    prefix = tmp_path / "opt"
    venv = prefix / "releases" / "1" / "venv" / "bin"
    venv.mkdir(parents=True)
    for name in ("dagster", "dagster-webserver", "dagster-daemon", "dicom-backup-exporter", "celery"):
        (venv / name).write_text("#!/bin/sh\n")
        (venv / name).chmod(0o755)
    (prefix / "releases" / "1" / "src" / "deploy").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "release.sh", prefix / "releases" / "1" / "src" / "deploy" / "release.sh")
    (prefix / "current").symlink_to("releases/1")
    out = tmp_path / "units"
    out.mkdir()
    rendered = []
    for unit in [*SERVICES, "dicom-backup-pgdump.service", "dicom-backup-pgdump.timer"]:
        text = (SYSTEMD / unit).read_text().replace("/opt/dicom-backup", str(prefix))
        name = unit.replace("@.service", "@SITE_A.service")  # an instance of the template
        (out / name).write_text(text)
        rendered.append(out / name)
    return rendered


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    done = verify(installed_units(tmp_path))
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelled key and a missing binary are both reported."""
    units = installed_units(tmp_path)
    web = next(u for u in units if "webserver" in u.name)
    web.write_text(
        web.read_text()
        .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
        .replace("dagster-webserver ", "nope ")
    )
    done = verify([web])
    assert re.search(r"Unknown key.*'NoNewPrivilege'", done.stderr), done.stderr
    assert "is not executable" in done.stderr and done.returncode != 0


@pytest.mark.parametrize("unit", SERVICES)
def test_services_are_hardened_and_restart(unit: str) -> None:
    s = unit_settings(SYSTEMD / unit)
    assert s["User"] == ["dicom-backup"] and s["Group"] == ["dicom-backup"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "Restart": "on-failure",
    }.items():
        assert s[key] == [value], (unit, key)
    assert set(s["ReadWritePaths"][0].split()) == WRITABLE
    assert "/etc/dicom-backup/dicom-backup.env" in s["EnvironmentFile"]
    exec_start = s["ExecStart"][0]
    assert exec_start.startswith("/opt/dicom-backup/current/venv/bin/")
    if "webserver" in unit or "exporter" in unit or "code@" in unit:
        assert re.search(r"--(host|address) 127\.0\.0\.1 ", exec_start), exec_start  # never on the network
    if "code@" in unit:
        assert "/etc/dicom-backup/site-%i.env" in s["EnvironmentFile"]
        assert "--location-name %i" in exec_start and "DICOM_BACKUP_ENVIRONMENT=%i" in s["Environment"]
    if "worker@" in unit:  # dagster-celery's tasks, on the instance's queue only, broker from the env file
        assert "--app dagster_celery.app" in exec_start
        assert "--queues ${DICOM_BACKUP_CELERY_QUEUE} " in exec_start
        assert "--broker ${DICOM_BACKUP_CELERY_BROKER}" in exec_start
        assert "DICOM_BACKUP_ENVIRONMENT=%i" in s["Environment"]  # the site whose jobs it re-imports


def test_production_workspace_points_at_code_servers() -> None:
    import yaml  # type: ignore[import-untyped]

    workspace = yaml.safe_load((SYSTEMD / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["grpc_server"] == {"host": "127.0.0.1", "port": 4266, "location_name": "UCLA"}


def _variables_the_services_read() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "dicom_backup_dagster").rglob("*.py"):
        if "sandbox" in path.parts:
            continue
        names |= set(re.findall(r"[\"']((?:DICOM_BACKUP|DAGSTER)_[A-Z_]+)[\"']", path.read_text()))
    names |= set(re.findall(r"env: (\w+)", (REPO / "dagster_home" / "postgres" / "dagster.yaml").read_text()))
    for unit in SYSTEMD.glob("*.service"):
        names |= set(re.findall(r"\$\{(\w+)\}", unit.read_text()))
        names |= set(re.findall(r"^Environment=(\w+)=", unit.read_text(), re.M))
    # The secrets of the template's example site (part 2 of the template names UCLA's).
    names |= set(re.findall(r'_env\s*=\s*"(\w+)"', EXAMPLE.read_text().split("\n[TJU]")[0]))
    names -= {"PYTHONPATH", "PYTHONUNBUFFERED"}
    return names


def test_env_template_lists_every_variable_the_services_read() -> None:
    template = (REPO / ".env.prod.template").read_text()
    listed = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", template, re.M))
    needed = _variables_the_services_read()
    assert {"DAGSTER_PG_PASSWORD", "DICOM_BACKUP_CODE_PORT", "UCLA_MOSAIQ_DB_PASSWORD"} <= needed
    assert needed - listed == set()
    # No value is filled in for a secret.
    for line in template.splitlines():
        if re.match(r"^[A-Z_]*(PASSWORD|KEY|WEBHOOK_URL)=", line):
            assert line.endswith("="), line


def test_logrotate_config_checks_and_the_log_writer_follows_a_rotation(tmp_path: Path) -> None:
    tool = shutil.which("logrotate") or "/usr/sbin/logrotate"
    logs = tmp_path / "log"
    logs.mkdir()
    import getpass
    import grp
    import os

    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        (REPO / "deploy" / "logrotate" / "dicom-backup").read_text()
        .replace("/var/log/dicom-backup", str(logs))
        .replace("dicom-backup dicom-backup", f"{user} {group}")
    )  # fmt: skip
    conf.chmod(0o644)
    handler = JsonLinesHandler(str(logs / "dicom_backup.jsonl"))
    logger = logging.getLogger("tests.deploy.logrotate")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before rotation")
        done = subprocess.run(
            [tool, "-d", "-s", str(tmp_path / "state"), str(conf)], capture_output=True, text=True
        )
        assert done.returncode == 0 and "error:" not in (done.stdout + done.stderr).lower(), done.stderr
        done = subprocess.run(
            [tool, "-f", "-s", str(tmp_path / "state"), str(conf)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        logger.warning("after rotation")
    finally:
        logger.removeHandler(handler)
        handler.close()
    rotated = [p for p in logs.iterdir() if p.name != "dicom_backup.jsonl"]
    assert len(rotated) == 1 and "before rotation" in rotated[0].read_text()
    current = (logs / "dicom_backup.jsonl").read_text()
    assert "after rotation" in current and "before rotation" not in current


# --- flows -------------------------------------------------------------------------------------------------
@pytest.fixture
def ucla(monkeypatch: pytest.MonkeyPatch):
    for var in re.findall(r'_env\s*=\s*"(UCLA_\w+)"', EXAMPLE.read_text()):
        monkeypatch.setenv(var, "x")
    return load_config(EXAMPLE, "UCLA")


def test_flows_of_the_example_site(ucla) -> None:
    got = {(f.source, f.target, f.host, f.port) for f in flows.site_flows(ucla)}
    expected = {
        ("backup-host", "ARIA_MAIN", "10.10.1.20", 104),
        ("ARIA_MAIN (10.10.1.20)", "ORTHANC_MAIN", "10.10.1.50", 4242),  # C-MOVE sub-operations
        ("backup-host", "MIM", "mim.ucla.example.org", 4008),  # C-GET: nothing from MIM to the archive
        ("backup-host", "MOSAIQ_DB", "mosaiq-sql.ucla.example.org", 1433),
        ("ORTHANC_STAGE (10.10.1.51)", "ORTHANC_MAIN", "10.10.1.50", 4242),
        ("backup-host", "ORTHANC_MAIN", "10.10.1.50", 4242),
        ("backup-host", "ORTHANC_MAIN REST", "10.10.1.50", 8042),
        ("backup-host", "ORTHANC_STAGE", "10.10.1.51", 4242),
        ("backup-host", "ORTHANC_STAGE REST", "10.10.1.51", 8042),
        ("ORTHANC_MAIN (10.10.1.50)", "backup-host UCLA_BACKUP", "0.0.0.0", 11113),
        ("backup-host", "Slack", "hooks.slack.com", 443),
        ("backup-host", "PagerDuty", "events.pagerduty.com", 443),
        ("backup-host", "SMTP relay", "smtp.ucla.example.org", 587),
        ("operators", "backup-host nginx", "0.0.0.0", 443),
    }
    assert expected <= got
    assert not any(f.source.startswith("MIM") for f in flows.site_flows(ucla))
    assert all(f.why and f.protocol for f in flows.site_flows(ucla))


def _resolver(host: str) -> list[str]:
    return {"mim.ucla.example.org": ["10.10.1.30"], "events.pagerduty.com": ["2001:db8::1"]}.get(
        host, flows.resolve(host) if re.match(r"^[\d.]+$", host) else []
    )


def test_nftables_rules_come_from_the_flows_and_parse(ucla, tmp_path: Path) -> None:
    text = flows.nftables_rules(flows.site_flows(ucla), "UCLA", resolver=_resolver)
    assert "ip daddr 10.10.1.20 tcp dport 104 accept" in text
    assert "ip daddr 10.10.1.30 tcp dport 4008 accept" in text
    assert "ip6 daddr 2001:db8::1 tcp dport 443 accept" in text
    assert "ip saddr 10.10.1.50 tcp dport 11113 accept" in text
    assert "# UNRESOLVED mosaiq-sql.ucla.example.org" in text
    assert text.count("policy drop;") == 2
    # Flows between other hosts are not rules of the backup host.
    assert "10.10.1.51 tcp dport 4242" in text and "saddr 10.10.1.51" not in text
    path = tmp_path / "dicom-backup.nft"
    path.write_text(text)
    nft = shutil.which("nft") or "/usr/sbin/nft"
    done = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"nft -c needs a netlink socket here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    path.write_text(text.replace("tcp dport 104", "tcp dport 104 bogus"))
    assert subprocess.run([nft, "-c", "-f", str(path)], capture_output=True).returncode != 0


def test_flows_command(ucla, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert flows.main(["--config", str(EXAMPLE), "--env", "UCLA"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# site UCLA: ") and "ARIA_MAIN 10.10.1.20:104  DICOM" in out
    assert flows.main(["--config", str(EXAMPLE), "--env", "UCLA", "--nftables"]) == 0
    assert capsys.readouterr().out.startswith("#!/usr/sbin/nft -f")
    monkeypatch.delenv("UCLA_MOSAIQ_DB_PASSWORD")
    assert flows.main(["--config", str(EXAMPLE), "--env", "UCLA"]) == 2  # an invalid config prints no flows
    done = subprocess.run(
        [sys.executable, "-c", "import dicom_backup_dagster.flows, sys; sys.exit('dagster' in sys.modules)"],
        capture_output=True,
    )
    assert done.returncode == 0  # no dagster import


def test_release_sh_runs_a_worker_for_each_site_with_a_queue(tmp_path: Path) -> None:
    """`release.sh status` lists the sites and, among them, those whose site-SITE.env names a Celery queue:
    their dicom-backup-worker@SITE units are enabled, started and stopped with the code servers."""
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "site-UCLA.env").write_text(
        "DICOM_BACKUP_CODE_PORT=4266\nDICOM_BACKUP_CELERY_QUEUE=dicom-backup-ucla\n"
    )
    (conf / "site-TJU.env").write_text("DICOM_BACKUP_CODE_PORT=4267\n")
    env = {**os.environ, "CONF_DIR": str(conf), "PREFIX": str(tmp_path / "opt")}
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "release.sh"), "status"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"^sites: +TJU UCLA $", out, re.M) and re.search(r"^workers: +UCLA $", out, re.M), out
