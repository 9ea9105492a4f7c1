#!/usr/bin/env bash
# Install, upgrade and roll back the DICOM backup services on the backup host (deploy/README.md).
#
#   release.sh install  SRC [--venv DIR] [--name NAME]   first release: directories, config skeleton, units
#   release.sh upgrade  SRC [--venv DIR] [--name NAME]   new release beside the old; switch back on a failed probe
#   release.sh rollback [NAME]                           previous release (or NAME), code and configuration
#   release.sh start | stop | restart | probe | status
#   release.sh backup-db                                 pg_dump of the Dagster storage, with retention
#   release.sh restore-db FILE                           pg_restore a dump (services stopped)
#
# SRC is a checkout of the repository (a release tag). Each release is $PREFIX/releases/NAME with the
# source (src/) and a virtual environment (venv/, built from src/constraints.txt, or a link to --venv DIR,
# for example one built beforehand from a wheelhouse); $PREFIX/current and $PREFIX/previous are links.
# Layout and commands are overridable for a non-standard host (and the tests): PREFIX, CONF_DIR,
# STATE_DIR, LOG_DIR, UNIT_DIR, SYSTEMCTL, PYTHON, PIP_OPTS, CREATE_USER, SERVICE_USER, PROBE_TIMEOUT.
set -euo pipefail

PREFIX=${PREFIX:-/opt/dicom-backup}
CONF_DIR=${CONF_DIR:-/etc/dicom-backup}
STATE_DIR=${STATE_DIR:-/var/lib/dicom-backup}
LOG_DIR=${LOG_DIR:-/var/log/dicom-backup}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
PYTHON=${PYTHON:-python3}
PIP_OPTS=${PIP_OPTS:-}
SERVICE_USER=${SERVICE_USER:-dicom-backup}
CREATE_USER=${CREATE_USER:-1}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-180}
RELEASES=$PREFIX/releases
UNITS=(dicom-backup-webserver dicom-backup-daemon dicom-backup-exporter)

log() { echo "release $(date -u +%H:%M:%S): $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- environment of the services (for migrate, probes and dumps run from here) -----------------------------
service_env() {
  export DAGSTER_HOME=$STATE_DIR/dagster_home DICOM_BACKUP_CONFIG=$CONF_DIR/environments.toml
  export DICOM_BACKUP_STORAGE_DIR=$STATE_DIR/spool DICOM_BACKUP_LOG_FILE=$LOG_DIR/dicom_backup.jsonl
  export DICOM_BACKUP_WEBSERVER_PORT=3000 DICOM_BACKUP_EXPORTER_PORT=9108 DAGSTER_DAEMON_HEARTBEAT_TOLERANCE=300
  if [ -r "$CONF_DIR/dicom-backup.env" ]; then set -a; . "$CONF_DIR/dicom-backup.env"; set +a; fi
  export PYTHONPATH=$PREFIX/current/src
}

sites() {  # one code server per /etc/dicom-backup/site-<SITE>.env
  local f
  for f in "$CONF_DIR"/site-*.env; do [ -e "$f" ] && basename "$f" .env | sed 's/^site-//'; done
}

workers() {  # a Celery worker on this host for each site whose site-<SITE>.env names its queue
  local s
  for s in $(sites); do
    if grep -q '^DICOM_BACKUP_CELERY_QUEUE=' "$CONF_DIR/site-$s.env"; then echo "$s"; fi
  done
}

all_units() {  # code servers and workers first: the webserver and the daemon connect to them
  local s
  for s in $(sites); do echo "dicom-backup-code@$s.service"; done
  for s in $(workers); do echo "dicom-backup-worker@$s.service"; done
  for s in "${UNITS[@]}"; do echo "$s.service"; done
}

current_name() { [ -L "$PREFIX/current" ] && basename "$(readlink "$PREFIX/current")" || true; }
previous_name() { [ -L "$PREFIX/previous" ] && basename "$(readlink "$PREFIX/previous")" || true; }

relink() {  # atomic switch of a link: rename(2) over the old one
  ln -sfn "releases/$2" "$PREFIX/.$1.tmp" && mv -Tf "$PREFIX/.$1.tmp" "$PREFIX/$1"
}

# --- staging a release -------------------------------------------------------------------------------------
release_name() {
  local src=$1 version
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$src/pyproject.toml" | head -n1)
  [ -n "$version" ] || die "no version in $src/pyproject.toml"
  echo "$version"
}

stage_release() {  # SRC VENV NAME -> $RELEASES/NAME
  local src=$1 venv=$2 name=$3 rel=$RELEASES/$3
  [ -e "$rel" ] && die "release $name exists already in $RELEASES (give --name or remove it)"
  log "staging release $name from $src"
  mkdir -p "$rel/src"
  tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./.sandbox --exclude=__pycache__ \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude='*.egg-info' -cf - . | tar -C "$rel/src" -xf -
  if [ -n "$venv" ]; then
    [ -x "$venv/bin/dagster" ] || die "--venv $venv has no bin/dagster"
    ln -s "$(cd "$venv" && pwd)" "$rel/venv"
  else
    log "building $rel/venv (pip, constraints.txt)"
    "$PYTHON" -m venv "$rel/venv"
    # shellcheck disable=SC2086  # PIP_OPTS holds several options, e.g. --no-index --find-links DIR
    "$rel/venv/bin/pip" install -q $PIP_OPTS -c "$rel/src/constraints.txt" "$rel/src[postgres]"
  fi
  # From the package metadata: importing dagster costs seconds of CPU on a busy host.
  "$rel/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("dagster"))' > "$rel/DAGSTER_VERSION"
  log "release $name: Dagster $(cat "$rel/DAGSTER_VERSION")"
}

# --- directories, configuration skeleton, units -------------------------------------------------------------
prepare_host() {
  if [ "$CREATE_USER" = 1 ] && ! id "$SERVICE_USER" >/dev/null 2>&1; then
    log "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  mkdir -p "$RELEASES" "$CONF_DIR" "$LOG_DIR" "$STATE_DIR"/{dagster_home,spool,reports,dumps}
  if [ "$CREATE_USER" = 1 ]; then
    chown "$SERVICE_USER:$SERVICE_USER" "$LOG_DIR" "$STATE_DIR"/{dagster_home,spool,reports,dumps}
    chmod 0750 "$LOG_DIR" "$STATE_DIR"/{dagster_home,spool,reports,dumps}
  fi
  chmod 0755 "$CONF_DIR"
}

config_skeleton() {  # never overwrites: the configuration belongs to the site
  local src=$1
  [ -e "$CONF_DIR/dagster.yaml" ] || install -m 0644 "$src/dagster_home/postgres/dagster.yaml" "$CONF_DIR/dagster.yaml"
  [ -e "$CONF_DIR/workspace.yaml" ] || install -m 0644 "$src/deploy/systemd/workspace.yaml" "$CONF_DIR/workspace.yaml"
  [ -e "$CONF_DIR/dicom-backup.env" ] || install -m 0600 "$src/.env.prod.template" "$CONF_DIR/dicom-backup.env"
  [ -e "$CONF_DIR/environments.toml" ] || install -m 0644 "$src/config/environments.example.toml" "$CONF_DIR/environments.toml.example"
  ln -sfn "$CONF_DIR/dagster.yaml" "$STATE_DIR/dagster_home/dagster.yaml"
  chmod 0600 "$CONF_DIR"/*.env
}

install_units() {  # the release's units, with this host's paths
  local src=$PREFIX/current/src f
  mkdir -p "$UNIT_DIR"
  for f in "$src"/deploy/systemd/*.service "$src"/deploy/systemd/*.timer; do
    sed -e "s|/opt/dicom-backup|$PREFIX|g" -e "s|/etc/dicom-backup|$CONF_DIR|g" \
        -e "s|/var/lib/dicom-backup|$STATE_DIR|g" -e "s|/var/log/dicom-backup|$LOG_DIR|g" \
        -e "s|^User=dicom-backup|User=$SERVICE_USER|" -e "s|^Group=dicom-backup|Group=$SERVICE_USER|" \
        "$f" > "$UNIT_DIR/$(basename "$f")"
  done
  "$SYSTEMCTL" daemon-reload
}

check_configured() {
  [ -e "$CONF_DIR/environments.toml" ] || die "write $CONF_DIR/environments.toml (template: environments.toml.example), then: $0 start"
  [ -n "$(sites)" ] || die "write $CONF_DIR/site-<SITE>.env for each site (.env.prod.template part 2), then: $0 start"
}

# --- Dagster storage ---------------------------------------------------------------------------------------
migrate() {  # with the services stopped: nothing writes while the schema changes
  local name=$1
  log "dagster instance migrate (release $name)"
  (service_env; export PYTHONPATH=$RELEASES/$name/src; "$RELEASES/$name/venv/bin/dagster" instance migrate)
}

backup_db() {  # [PREFIX-OF-FILE]
  service_env
  local dir=${DICOM_BACKUP_DUMP_DIR:-$STATE_DIR/dumps} keep=${DICOM_BACKUP_DUMP_KEEP_DAYS:-14}
  local file
  file=$dir/${1:-dagster}-$(date -u +%Y%m%dT%H%M%SZ).dump
  mkdir -p "$dir"
  PGPASSWORD=${DAGSTER_PG_PASSWORD:-} pg_dump --format=custom --no-owner -h "$DAGSTER_PG_HOST" \
    -p "$DAGSTER_PG_PORT" -U "$DAGSTER_PG_USER" -d "$DAGSTER_PG_DB" -f "$file.part"
  mv "$file.part" "$file"
  # Retention for the daily dumps only; pre-upgrade dumps stay until removed by hand.
  find "$dir" -maxdepth 1 -name 'dagster-*.dump' -mtime +"$keep" -delete
  log "dumped the Dagster storage to $file"
  echo "$file"
}

restore_db() {
  service_env
  [ -r "$1" ] || die "no dump $1"
  PGPASSWORD=${DAGSTER_PG_PASSWORD:-} pg_restore --clean --if-exists --no-owner -h "$DAGSTER_PG_HOST" \
    -p "$DAGSTER_PG_PORT" -U "$DAGSTER_PG_USER" -d "$DAGSTER_PG_DB" "$1"
  log "restored $1"
}

# --- services and probes -----------------------------------------------------------------------------------
site_port() { sed -n 's/^DICOM_BACKUP_CODE_PORT=//p' "$CONF_DIR/site-$1.env" | tail -n1; }

wait_serving() {  # PORT SECONDS: until the code server answers the gRPC health check, polled every 0.2 s
  # The request `dagster api grpc-health-check` makes, from one process: that CLI imports dagster, which
  # costs more CPU per attempt than the wait itself.
  "$PREFIX/current/venv/bin/python" - "$1" "$2" <<'EOF'
import sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
deadline = time.monotonic() + float(sys.argv[2])
request = health_pb2.HealthCheckRequest(service="DagsterApi")
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            if stub.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
                sys.exit(0)
        except grpc.RpcError:
            pass
        if time.monotonic() >= deadline:
            sys.exit(1)
        time.sleep(0.2)
EOF
}

start() {  # code servers, webserver and exporter at once; the daemon once the code servers serve
  # The webserver need not wait: it watches each code server over gRPC (once a second) and loads the
  # location as soon as the server answers. The daemon waits, as it would fail queued runs it dequeues
  # for a location it cannot reach. A code server answers only once it has loaded its code.
  local u s port codes=() deadline=$((SECONDS + PROBE_TIMEOUT))
  mapfile -t u < <(all_units)
  "$SYSTEMCTL" enable "${u[@]}" >/dev/null
  for s in $(sites); do codes+=("dicom-backup-code@$s.service"); done
  for s in $(workers); do codes+=("dicom-backup-worker@$s.service"); done  # steps of celery sites
  "$SYSTEMCTL" restart "${codes[@]}" dicom-backup-webserver.service dicom-backup-exporter.service
  for s in $(sites); do
    port=$(site_port "$s")
    [ -n "$port" ] || die "DICOM_BACKUP_CODE_PORT is not set in $CONF_DIR/site-$s.env"
    wait_serving "$port" "$((deadline > SECONDS ? deadline - SECONDS : 0))" || log "code server $s does not serve on port $port"
  done
  "$SYSTEMCTL" restart dicom-backup-daemon.service
}
stop() { mapfile -t u < <(all_units); "$SYSTEMCTL" stop "${u[@]}" || true; }

probe() {  # until every probe passes at once (exit 0), PROBE_TIMEOUT passes, or a code location failed to load
  local rc=0
  (
    service_env
    "$PREFIX/current/venv/bin/python" - "http://127.0.0.1:$DICOM_BACKUP_WEBSERVER_PORT" \
      "http://127.0.0.1:$DICOM_BACKUP_EXPORTER_PORT" "$PROBE_TIMEOUT" <<'EOF'
# One process polls every 0.5 s; the daemon's liveness check (a dagster CLI, seconds of CPU) runs in a
# thread meanwhile. Every code location of the workspace must have loaded. A code server serves only once
# it has loaded its code, so a load error it reports is final (exit 2); unreachable is not.
import sys, threading, time
import requests
from dicom_backup_dagster.monitoring.probes import ProbeResult, probe_daemon, probe_exporter, probe_webserver

web, exporter, deadline = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { className } } } } } }"""
daemon = [ProbeResult("dagster-daemon", False, "liveness-check has not finished")]
stop = threading.Event()

def daemon_until_live() -> None:
    while not stop.is_set():
        daemon[0] = result = probe_daemon()
        if result.ok or time.monotonic() >= deadline:
            return
        stop.wait(0.5)

def locations() -> tuple[int, list[str]]:
    try:
        answer = requests.post(f"{web}/graphql", json={"query": QUERY}, timeout=10).json()
        entries = answer["data"]["workspaceOrError"]["locationEntries"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as error:
        return 1, [f"FAIL webserver GraphQL at {web}/graphql: {type(error).__name__}"]
    code, lines = (0 if entries else 1), []
    for e in entries:
        found = e["locationOrLoadError"] or {}
        loaded = found.get("__typename") == "RepositoryLocation"
        error = found.get("className") or ""
        if found.get("__typename") == "PythonError" and error != "DagsterUserCodeUnreachableError":
            code = 2
        elif not loaded:
            code = max(code, 1)
        lines.append(f"{'OK  ' if loaded else 'FAIL'} code location {e['name']}: {e['loadStatus']}"
                     + (f" ({error})" if error else ""))
    return code, lines

thread = threading.Thread(target=daemon_until_live, daemon=True)
thread.start()
while True:
    code, lines = locations()
    if code == 0:
        results = [probe_webserver(web), probe_exporter(exporter)]
        if all(r.ok for r in results):
            thread.join(max(0.0, deadline - time.monotonic()))
        results.insert(1, daemon[0])
        lines += [str(r) for r in results]
        code = 0 if all(r.ok for r in results) else 1
    if code != 1 or time.monotonic() >= deadline:
        stop.set()
        print("\n".join(lines))
        sys.exit(code)
    time.sleep(0.5)
EOF
  ) >&2 || rc=$?
  case $rc in
    0) log "healthy: $(current_name)" ;;
    2) log "a code location failed to load: $(current_name)" ;;
    *) log "probes failed for ${PROBE_TIMEOUT}s: $(current_name)" ;;
  esac
  return "$rc"
}

switch_to() {  # NAME: the release the services run from now on
  relink current "$1"
  install_units
  start
}

# --- commands ----------------------------------------------------------------------------------------------
parse_release_args() {  # SRC [--venv DIR] [--name NAME] -> SRC VENV NAME
  SRC=${1:-}; [ -n "$SRC" ] && [ -d "$SRC" ] || die "give the source directory of the release"
  shift; VENV=""; NAME=""
  while (($#)); do
    case $1 in
      --venv) VENV=$2; shift 2 ;;
      --name) NAME=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  SRC=$(cd "$SRC" && pwd); NAME=${NAME:-$(release_name "$SRC")}
}

cmd_install() {
  parse_release_args "$@"
  [ -z "$(current_name)" ] || die "release $(current_name) is installed: use upgrade"
  prepare_host
  stage_release "$SRC" "$VENV" "$NAME"
  config_skeleton "$RELEASES/$NAME/src"
  relink current "$NAME"
  install_units
  check_configured
  migrate "$NAME"
  start
  probe
}

cmd_upgrade() {
  parse_release_args "$@"
  local old prev; old=$(current_name); prev=$(previous_name)
  [ -n "$old" ] || die "nothing installed: use install"
  stage_release "$SRC" "$VENV" "$NAME"
  # The configuration as the old release ran with it: what rollback restores.
  rm -rf "$RELEASES/$old/config"; cp -a "$CONF_DIR" "$RELEASES/$old/config"
  stop
  backup_db "pre-upgrade-$old-to-$NAME" >/dev/null
  if ! migrate "$NAME"; then
    log "migration failed: starting $old again"; start; exit 1
  fi
  relink previous "$old"
  switch_to "$NAME"
  if ! probe; then
    log "switching back to $old"
    stop
    switch_to "$old"
    if [ -n "$prev" ]; then relink previous "$prev"; else rm -f "$PREFIX/previous"; fi
    probe || die "$old is not healthy either: see journalctl -u 'dicom-backup-*'"
    die "upgrade to $NAME failed its probes; $old runs again"
  fi
  log "upgraded $old -> $NAME (rollback: $0 rollback)"
}

cmd_rollback() {
  local from to
  from=$(current_name); to=${1:-$(previous_name)}
  [ -n "$to" ] && [ -d "$RELEASES/$to" ] || die "no release to roll back to"
  [ "$to" != "$from" ] || die "$to is already current"
  if [ "$(cat "$RELEASES/$to/DAGSTER_VERSION")" != "$(cat "$RELEASES/$from/DAGSTER_VERSION")" ]; then
    log "WARNING: $from runs Dagster $(cat "$RELEASES/$from/DAGSTER_VERSION"), $to $(cat "$RELEASES/$to/DAGSTER_VERSION");"
    log "  if $from migrated the storage schema, restore the pre-upgrade dump ($0 restore-db FILE)"
  fi
  stop
  rm -rf "$RELEASES/$from/config"; cp -a "$CONF_DIR" "$RELEASES/$from/config"
  if [ -d "$RELEASES/$to/config" ]; then
    log "restoring the configuration of $to into $CONF_DIR"
    find "$CONF_DIR" -mindepth 1 -delete
    cp -a "$RELEASES/$to/config/." "$CONF_DIR/"
  fi
  relink previous "$from"
  switch_to "$to"
  probe || die "$to failed its probes after the rollback"
  log "rolled back $from -> $to"
}

cmd_status() {
  echo "current:  $(current_name)"
  echo "previous: $(previous_name)"
  echo "releases: $(ls "$RELEASES" 2>/dev/null | tr '\n' ' ')"
  echo "sites:    $(sites | tr '\n' ' ')"
  echo "workers:  $(workers | tr '\n' ' ')"
}

command=${1:-}; shift || true
case $command in
  install) cmd_install "$@" ;;
  upgrade) cmd_upgrade "$@" ;;
  rollback) cmd_rollback "$@" ;;
  start) check_configured; migrate "$(current_name)"; start; probe ;;  # the first start after install, too
  stop) stop ;;
  restart) stop; start; probe ;;
  probe) probe ;;
  status) cmd_status ;;
  backup-db) backup_db "dagster" ;;
  restore-db) restore_db "${1:?give the dump file}" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
