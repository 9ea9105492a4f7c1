"""deploy/nginx/dicom-backup.conf in front of a real dagster-webserver and exporter: TLS and a password.

Debian's nginx runs the file as it is with the test's ports, certificate (self-signed, made here) and
password files, as a non-root process on free loopback ports. Without credentials the UI, /graphql and
/metrics answer 401; with them they work; the metrics user cannot open the UI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dicom_backup_dagster.sandbox.processes import ManagedProcess, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPERATOR, METRICS = ("physicist", "op-s3cret"), ("prometheus", "scrape-s3cret")


def htpasswd(path: Path, user: str, password: str) -> None:
    """What `htpasswd -B` writes, made with openssl (SHA-512 crypt, which nginx checks with crypt(3))."""
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True
    ).stdout.strip()
    path.write_text(f"{user}:{hashed}\n")


def site_config(https: int, http: int, web: int, exporter: int, d: Path) -> str:
    text = (REPO / "deploy" / "nginx" / "dicom-backup.conf").read_text()
    for old, new in (
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https} ssl http2;"),
        ("listen [::]:443 ssl http2;", ""),
        ("listen 80;", f"listen 127.0.0.1:{http};"),
        ("listen [::]:80;", ""),
        ("/etc/ssl/dicom-backup/dicom-backup.crt", str(d / "cert.pem")),
        ("/etc/ssl/dicom-backup/dicom-backup.key", str(d / "key.pem")),
        ("/etc/nginx/dicom-backup.htpasswd", str(d / "ui.htpasswd")),
        ("/etc/nginx/dicom-backup-metrics.htpasswd", str(d / "metrics.htpasswd")),
        ("http://127.0.0.1:3000", f"http://127.0.0.1:{web}"),
        ("http://127.0.0.1:9108", f"http://127.0.0.1:{exporter}"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, int]]:
    # A world-readable directory outside pytest's (0700) tmp, so nginx can run as nobody.
    d = Path(tempfile.mkdtemp(prefix="deploy-nginx-"))
    d.chmod(0o755)
    home = d / "dagster_home"
    home.mkdir()
    ports = {"https": free_port(), "http": free_port(), "web": free_port(), "exporter": free_port()}
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    htpasswd(d / "ui.htpasswd", *OPERATOR)
    htpasswd(d / "metrics.htpasswd", *METRICS)
    (d / "site.conf").write_text(
        site_config(ports["https"], ports["http"], ports["web"], ports["exporter"], d)
    )
    run = d / "run"  # nginx's own writable files: logs, pid, temporary bodies
    run.mkdir()
    (d / "nginx.conf").write_text(
        f"worker_processes 1;\nerror_log {run}/error.log;\npid {run}/nginx.pid;\nevents {{}}\n"
        f"http {{\n  access_log {run}/access.log;\n  client_body_temp_path {run}/body;\n"
        f"  proxy_temp_path {run}/proxy;\n  fastcgi_temp_path {run}/fcgi;\n  uwsgi_temp_path {run}/uwsgi;\n"
        f"  scgi_temp_path {run}/scgi;\n  include {d}/site.conf;\n}}\n"
    )
    for path in d.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)
    bin_dir = Path(sys.executable).parent
    env = {"PATH": os.environ.get("PATH", ""), "DAGSTER_HOME": str(home)}
    web = ManagedProcess(
        "dagster-webserver",
        [str(bin_dir / "dagster-webserver"), "--host", "127.0.0.1", "--port", str(ports["web"]),
         "--empty-workspace"],
        d / "webserver.log", env=env, cwd=d,
    )  # fmt: skip
    exporter = ManagedProcess(
        "exporter",
        [str(bin_dir / "dicom-backup-exporter"), "--address", "127.0.0.1", "--port", str(ports["exporter"])],
        d / "exporter.log", env=env, cwd=d,
    )  # fmt: skip
    # Not root: as root nginx would switch its workers to another user; here the whole server is unprivileged.
    drop: list[str] = []
    if os.geteuid() == 0:
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        os.chown(run, 65534, 65534)
    nginx = ManagedProcess(
        "nginx", [*drop, NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
        run / "nginx.out", env={"PATH": os.environ.get("PATH", "")}, cwd=d,
    )  # fmt: skip
    check = subprocess.run(
        [*drop, NGINX, "-t", "-p", str(d), "-c", str(d / "nginx.conf")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    try:
        # One after the other: on an empty DAGSTER_HOME both would create the SQLite run storage at once,
        # and the loser dies on "table runs already exists" (seen in CI). Production storage is
        # PostgreSQL, migrated before the services start.
        web.start()
        session = requests.Session()
        session.trust_env = False
        wait_until(lambda: session.get(f"http://127.0.0.1:{ports['web']}/server_info", timeout=2).ok, 120,
                   "dagster-webserver", process=web)  # fmt: skip
        exporter.start()
        nginx.start()
        wait_until(lambda: session.get(f"http://127.0.0.1:{ports['exporter']}/metrics", timeout=5).ok, 60,
                   "exporter", process=exporter)  # fmt: skip
        wait_until(lambda: _get(ports, "/server_info").status_code == 401, 30, "nginx", process=nginx)
        yield ports
    finally:
        for process in (nginx, exporter, web):
            process.stop(timeout=15)
        shutil.rmtree(d, ignore_errors=True)


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify=False
    s.verify = False
    return s


def _get(ports: dict[str, int], path: str, auth: tuple[str, str] | None = None) -> requests.Response:
    return _session().get(
        f"https://127.0.0.1:{ports['https']}{path}", auth=auth, timeout=20, allow_redirects=False
    )


def _graphql(ports: dict[str, int], auth: tuple[str, str] | None) -> requests.Response:
    return _session().post(
        f"https://127.0.0.1:{ports['https']}/graphql", json={"query": "{ version }"}, auth=auth, timeout=20
    )


pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def test_without_credentials_the_ui_graphql_and_metrics_are_refused(stack: dict[str, int]) -> None:
    for path in ("/", "/runs", "/server_info", "/metrics"):
        assert _get(stack, path).status_code == 401, path
        assert _get(stack, path, auth=(OPERATOR[0], "wrong")).status_code == 401, path
    assert _graphql(stack, None).status_code == 401
    assert _graphql(stack, METRICS).status_code == 401  # the scraper's password does not open the UI
    assert _get(stack, "/", auth=METRICS).status_code == 401


def test_with_credentials_they_work(stack: dict[str, int]) -> None:
    page = _get(stack, "/", auth=OPERATOR)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert _get(stack, "/server_info", auth=OPERATOR).json()["dagster_version"]
    response = _graphql(stack, OPERATOR)
    assert response.status_code == 200 and response.json()["data"]["version"]
    metrics = _get(stack, "/metrics", auth=METRICS)
    assert metrics.status_code == 200 and "dicom_backup_exporter_dagster_up" in metrics.text
    assert "strict-transport-security" in {k.lower() for k in page.headers}


def test_plain_http_redirects_to_https(stack: dict[str, int]) -> None:
    s = _session()
    r = s.get(f"http://127.0.0.1:{stack['http']}/runs", timeout=10, allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"].startswith("https://")
