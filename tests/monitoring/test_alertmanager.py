"""deploy/alertmanager: valid, each severity reaches its receiver, grouping and inhibition on a live
Alertmanager that delivers to loopback PagerDuty and Slack stand-ins."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_backup_dagster.sandbox.processes import free_port, wait_until
from tests.monitoring.conftest import AMTOOL
from tests.monitoring.promql import ALERTMANAGER, alerts

pytestmark = pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (prometheus-alertmanager)")
ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager")
RECEIVERS = {
    "critical": "pagerduty-critical,slack-high",
    "high": "slack-high",
    "low": "email-low",
}


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60)


def routes_test(expected: str, **labels: str) -> subprocess.CompletedProcess[str]:
    return amtool(
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={expected}",
        *(f"{k}={v}" for k, v in labels.items()),
    )


def test_configuration_is_valid() -> None:
    result = amtool("check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("severity", sorted(RECEIVERS))
def test_each_severity_reaches_its_receivers(severity: str) -> None:
    result = routes_test(RECEIVERS[severity], severity=severity, alertname="AnyAlert", source="ARIA")
    assert result.returncode == 0, result.stdout + result.stderr
    # ... and not another one: the check fails when the expectation is wrong.
    wrong = "email-low" if severity != "low" else "slack-high"
    assert routes_test(wrong, severity=severity, alertname="AnyAlert").returncode == 1


def test_watchdog_goes_to_the_dead_mans_switch_only() -> None:
    result = routes_test("deadmansswitch", alertname="Watchdog", severity="none")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_routes_by_its_severity() -> None:
    for name, rule in alerts().items():
        labels = {k: v for k, v in rule["labels"].items()}
        expected = "deadmansswitch" if name == "Watchdog" else RECEIVERS[labels["severity"]]
        result = routes_test(expected, alertname=name, **labels)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


class _Capture(BaseHTTPRequestHandler):
    received: list[tuple[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.path, json.loads(body or b"{}")))
        self.send_response(202 if "enqueue" in self.path else 200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    _Capture.received = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Capture.received
    finally:
        server.shutdown()
        thread.join(5)


def _live_config(tmp_path: Path, capture_url: str) -> Path:
    """The shipped configuration with secrets in temporary files, receivers on loopback, short timers."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    secrets = {"pagerduty_routing_key": "test-routing-key", "slack_webhook_url": f"{capture_url}/slack"}
    for name, content in {**secrets, "smtp_password": "x"}.items():
        (tmp_path / name).write_text(content)
    config["global"]["pagerduty_url"] = f"{capture_url}/v2/enqueue"
    config["global"]["smtp_auth_password_file"] = str(tmp_path / "smtp_password")
    config["global"]["smtp_smarthost"] = "127.0.0.1:1"
    config["route"].update(group_wait="1s", group_interval="2s")
    for receiver in config["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            pd["routing_key_file"] = str(tmp_path / "pagerduty_routing_key")
        for slack in receiver.get("slack_configs", []):
            slack["api_url_file"] = str(tmp_path / "slack_webhook_url")
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{capture_url}/deadmansswitch"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.skipif(ALERTMANAGER_BIN is None, reason="prometheus-alertmanager not installed")
def test_live_grouping_inhibition_and_delivery(tmp_path: Path, capture: tuple[str, list]) -> None:
    capture_url, received = capture
    port = free_port()
    assert ALERTMANAGER_BIN is not None
    process = subprocess.Popen(
        [
            ALERTMANAGER_BIN,
            f"--config.file={_live_config(tmp_path, capture_url)}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v2"
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(ready, 20, "Alertmanager ready")

        def alert(name: str, severity: str, source: str, kind: str) -> dict[str, Any]:
            return {
                "labels": {"alertname": name, "severity": severity, "source": source, "kind": kind},
                "annotations": {"summary": f"{source}: {name}", "runbook_url": f"docs/runbooks/{kind}.md"},
            }

        posted = [
            alert("DicomBackupNoRecentSuccess", "critical", "ARIA", "no_recent_success"),
            alert("DicomBackupFailed", "high", "ARIA", "backup_failed"),  # inhibited: ARIA has a critical
            alert("DicomBackupFailed", "high", "MIM", "backup_failed"),
        ]
        request = urllib.request.Request(
            f"{api}/alerts", json.dumps(posted).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200

        def delivered() -> bool:
            paths = [p for p, _ in received]
            return (paths.count("/slack") >= 2 and "/v2/enqueue/" in paths) or "/v2/enqueue" in paths

        wait_until(delivered, 30, "PagerDuty and Slack deliveries", interval=0.2)
        time.sleep(3)  # two more group intervals: anything inhibited would have been sent by now
        with urllib.request.urlopen(f"{api}/alerts", timeout=5) as r:
            state = {
                (a["labels"]["alertname"], a["labels"]["source"]): a["status"] for a in json.loads(r.read())
            }
        assert state[("DicomBackupFailed", "ARIA")]["state"] == "suppressed"
        assert state[("DicomBackupFailed", "ARIA")]["inhibitedBy"]
        assert state[("DicomBackupFailed", "MIM")]["state"] == "active"
        assert state[("DicomBackupNoRecentSuccess", "ARIA")]["state"] == "active"
        pagerduty = [body for path, body in received if "enqueue" in path]
        slack = [body for path, body in received if path == "/slack"]
        # critical -> PagerDuty (once) and Slack; high (not inhibited) -> Slack; one message per group.
        assert len(pagerduty) == 1 and pagerduty[0]["routing_key"] == "test-routing-key"
        assert pagerduty[0]["payload"]["severity"] == "critical"
        details = pagerduty[0]["payload"]["custom_details"]
        # Counts instead of Alertmanager's default label and annotation dump (num_* are always added).
        assert set(details) == {
            "firing",
            "resolved",
            "num_firing",
            "num_resolved",
            "source",
            "kind",
            "runbook",
        }
        assert details["firing"] == "1" and details["source"] == "ARIA"
        titles = sorted(m["attachments"][0]["title"] for m in slack)
        assert titles == [
            "[FIRING] DicomBackupFailed (high)",
            "[FIRING] DicomBackupNoRecentSuccess (critical)",
        ]
        texts = " ".join(m["attachments"][0]["text"] for m in slack)
        assert "MIM: DicomBackupFailed" in texts and "ARIA: DicomBackupFailed" not in texts
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
