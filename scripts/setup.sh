#!/usr/bin/env bash
# Installs what the project needs on a Debian 12 host: the DICOM and ODBC tools from Debian, and the
# Python environment in .venv. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus and prometheus-alertmanager provide promtool and amtool for the monitoring tests (deploy/).
# systemd (systemd-analyze), nginx, nftables, logrotate, postgresql-client (pg_dump) and openssl for the
# production deployment tests (tests/deploy/).
packages=(orthanc dcmtk dicom3tools unixodbc unixodbc-dev libsqliteodbc odbc-postgresql prometheus prometheus-alertmanager
  systemd nginx nftables logrotate postgresql-client openssl)
# The exporters of the host-health rules, scraped for real by tests/monitoring/test_host_exporters.py.
packages+=(prometheus-node-exporter prometheus-process-exporter prometheus-postgres-exporter)
# chromium (with fonts) runs the browser test of the Dagster UI (tests/test_sandbox_night.py, Playwright).
packages+=(chromium fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The orthanc package may start its own service on 4242/8042; the sandbox runs private instances.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    "${sudo_cmd[@]}" systemctl disable --now orthanc || true
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
if [ "${1:-}" = "--relock" ]; then
  # Resolve pyproject.toml's ranges afresh and write the exact versions to constraints.txt.
  .venv/bin/python -m pip install -q --upgrade -e ".[dev]"
  { echo "# Exact versions of every package .venv holds, used by scripts/setup.sh and CI (pip -c)."
    echo "# Regenerate after changing dependencies: scripts/setup.sh --relock"
    .venv/bin/python -m pip freeze --exclude-editable | grep -v '^dicom-backup-dagster'
  } > constraints.txt
  echo "setup: wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
fi
# Every install takes the versions constraints.txt pins: CI and a new clone get the same environment.
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing the Python environment (pyproject.toml, constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"  # dev includes the celery extra
  rm -f .venv/.installed-*; touch "$stamp"
fi
