"""load_config: TOML -> EnvironmentConfig, every problem of the file reported at once.

Per environment: unknown keys (with "did you mean"), then pydantic's validation (each error becomes one
ConfigIssue), then the cross-references between entries (aliases, staging, AE titles). Those run on the
tables as written, so a broken source table does not also produce a misleading "unknown alias" error.
Environment variables (secrets) are read only for the selected environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from pydantic import TypeAdapter, ValidationError

from dicom_backup_dagster.config.models import (
    NAME_RE,
    SOURCE_TYPES,
    TARGET_TYPES,
    BackupTarget,
    ConfigError,
    ConfigIssue,
    EnvironmentConfig,
    MosaiqSource,
    QRSource,
    Secret,
    SiteConfig,
    ae_title_problem,
    close_match,
    hint,
)
from dicom_backup_dagster.notify.settings import ENV_VAR_RE, shown, type_name

CONFIG_ENV_VAR = "DICOM_BACKUP_CONFIG"
ENVIRONMENT_ENV_VAR = "DICOM_BACKUP_ENVIRONMENT"

Add = Callable[[str | None, str, str, str], None]

# Keys of the original (pre-Dagster) environments.toml and their replacements here.
# fmt: off
_RENAMED_KEYS = {
    "dicom_query_level": "query_level", "dicom_query_keys": "query_keys", "ae_title": "aet", "host": "ip",
    "mosaiq_backup_sql_query": "mosaiq_queries",
    "modality_to_query": 'query_keys (e.g. query_keys = { Modality = "CT" } on the source)',
}
# Examples for the fix of a missing key (by "section.key", then by key) and of a missing table.
_EXAMPLES = {
    "sources.type": "one of 'aria', 'mim', 'mosaiq'", "backup_targets.type": "one of 'orthanc', 'dicom_scp'",
    "aet": '"<ALIAS>"', "ip": '"10.0.0.20"', "port": "104", "db_database": '"MOSAIQ"',
    "db_username": '"backup_ro"', "db_server": '"mosaiq-sql.example.org"', "odbc_driver": '"FreeTDS"',
    "db_password_env": '"<ENV>_<ALIAS>_PASSWORD"', "routing_key_env": '"<ENV>_PAGERDUTY_ROUTING_KEY"',
    "default_source": '"ARIA_MAIN"', "default_backup": '"ORTHANC_MAIN"', "smtp_host": '"smtp.example.org"',
    "from": '"dicom-backup@example.org"', "to": '["radonc-it@example.org"]',
}
_TABLES = {
    "script_ae": 'aet = "DICOM_BACKUP"', "settings": "max_uids_per_run = 5000", "timeouts": "acse = 30",
    "sources": '[<ENV>.sources.ARIA_MAIN] type = "aria" ...',
    "backup_targets": '[<ENV>.backup_targets.ORTHANC_MAIN] type = "orthanc" ...',
    "notifications": 'dagster_ui_url = "http://dagster.example.org:3000"',
    "slack": 'webhook_url_env = "<ENV>_SLACK_WEBHOOK_URL"', "email": 'smtp_host = "smtp.example.org"',
    "pagerduty": 'routing_key_env = "<ENV>_PAGERDUTY_ROUTING_KEY"',
}
# fmt: on
_SECRET_KEY_FIX = (
    "never put a password in the file: export it as an environment variable and name that variable "
    'with {new} (e.g. {new} = "<SITE>_<ALIAS>_PASSWORD")'
)
_NOT_KEYS = {"alias", "name", "password_secret", "rest_password_secret"}  # set by the loader, not the file
_REST_KEYS = {"rest_url", "rest_username", "rest_password_env"}
_ADAPTER = TypeAdapter(EnvironmentConfig)


def _suggest(key: str, allowed: set[str]) -> tuple[str, str]:
    """(problem suffix, fix) for an unknown key."""
    listing = ", ".join(sorted(allowed))
    secret_key = next((a for a in sorted(allowed) if a.endswith("password_env")), None)
    if "password" in key and not key.endswith("_env") and secret_key:
        return f", did you mean {secret_key!r}?", _SECRET_KEY_FIX.format(new=secret_key)
    new = _RENAMED_KEYS.get(key, "")
    if new and (new.split()[0] in allowed or " " in new):  # a renamed key here, or where it went
        return f", did you mean {new.split()[0]!r}?", f"use {new} instead (valid keys here: {listing})"
    best = (
        close_match(key, allowed)
        or next((a for a in sorted(allowed) if len(a) >= 3 and (a in key or key in a)), None)
        or close_match(key, allowed, 0.5)
    )
    if best:
        return f", did you mean {best!r}?", f"rename it to {best!r} (valid keys here: {listing})"
    return "", f"remove it (valid keys here: {listing})"


def _keys(tp: type) -> dict[str, str]:
    """TOML key -> field name of a model."""
    infos = getattr(tp, "__pydantic_fields__", {})
    names = [f.name for f in dataclasses.fields(tp) if f.name not in _NOT_KEYS]
    return {(getattr(infos.get(n), "alias", None) or n): n for n in names}


def _pick(tp: Any, raw: Any) -> Any:
    """The model a value is validated as: through Annotated, Optional and the sources' type union."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        members = [_pick(m, raw) for m in get_args(tp) if m is not type(None)]
        if QRSource in members:
            kind = raw.get("type") if isinstance(raw, dict) else None
            return MosaiqSource if kind == "mosaiq" else QRSource if kind in SOURCE_TYPES else None
        return members[0]
    return tp


def _unknown_keys(tp: Any, raw: Any, path: str, env: str, add: Add) -> None:
    tp = _pick(tp, raw)
    if get_origin(tp) is dict and isinstance(raw, dict):
        for key, value in raw.items():
            _unknown_keys(get_args(tp)[1], value, f"{path}.{key}", env, add)
    if not (isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(raw, dict)):
        return
    keys, kind, where = _keys(tp), raw.get("type"), ""
    if tp is BackupTarget:
        if kind not in TARGET_TYPES:
            return  # reported as an unknown type
        keys = {k: n for k, n in keys.items() if kind == "orthanc" or k not in _REST_KEYS}
        where = f" for a backup target of type {kind!r}"
    elif tp in (QRSource, MosaiqSource):
        where = f" for a source of type {kind!r}"
    elif tp is EnvironmentConfig:
        where = " in an environment"
    hints = get_type_hints(tp, include_extras=True)
    for key, value in raw.items():
        if key in keys:
            _unknown_keys(hints[keys[key]], value, f"{path}.{key}", env, add)
        else:
            suffix, fix = _suggest(key, set(keys))
            add(env, f"{path}.{key}", f"unknown key {key!r}{where}{suffix}", fix)


def _explain(error: Mapping[str, Any], loc: list[str]) -> tuple[str, str]:
    """(problem, fix) for one pydantic error."""
    kind, name = error["type"], loc[-1] if loc else ""
    if kind == "config":
        return error["ctx"]["problem"], error["ctx"]["fix"]
    if kind.startswith("missing") and name in _TABLES:
        return "missing required table", f"add a [<KEY>] table, e.g. {_TABLES[name]}"
    if kind.startswith("missing"):
        example = _EXAMPLES.get(f"{loc[0]}.{name}") or _EXAMPLES.get(name) or '"..."'
        export = f" and export {example.strip(chr(34))}=<password>" if name.endswith("_env") else ""
        return f"missing required key {name!r}", f"add {name} = {example}{export}"
    if kind.endswith(("dataclass_type", "dataclass_exact_type", "dict_type", "model_type")):
        return (
            f"must be a table, got {type_name(error['input'])}",
            f"write it as [<KEY>] {_TABLES.get(name, '')}",
        )
    return f"{error['msg']}, got {shown(error['input'])}", "see docs/configuration.md for this key"


def _add_validation_errors(exc: ValidationError, env: str, add: Add) -> None:
    for error in exc.errors(include_url=False):
        loc = [str(p) for p in error["loc"] if not str(p).startswith("<")]  # "<qr>": the union's tag
        key = ".".join([env, *loc])
        problem, fix = _explain(error, loc)
        alias = loc[1] if len(loc) > 1 and loc[0] in ("sources", "backup_targets") else "DICOM_BACKUP"
        add(env, key, problem, fix.replace("<KEY>", key).replace("<ENV>", env).replace("<ALIAS>", alias))


# ------------------------------------------------------------------------------- cross-references


def _tables(raw: Mapping[str, Any], section: str) -> dict[str, Any]:
    value = raw.get(section)
    return value if isinstance(value, dict) else {}


_FIXES = {
    "alias": "use letters, digits and underscores, starting with a letter (aliases become Dagster asset, job "
    "and pool names)",
    "both": "give the target a different alias (peers are looked up by alias)",
    "main": "point default_backup at an orthanc target (verification and restore use Orthanc's REST API)",
    "staging": "point staging_target_alias at a separate staging SCP: RT records are staged there, moved to "
    "main, verified, and only then deleted from staging",
    "address": "staging must be a separate SCP; give it its own ip/port",
    "aet": "give every peer and the script AE its own AE title (C-MOVE destinations are resolved by AE title "
    "alone)",
    "select": f"set {ENVIRONMENT_ENV_VAR} to one of {{choices}}, pass --environment, or add "
    'default_environment = "..." at the top of the file',
    "not_found": f"check the path (from {CONFIG_ENV_VAR} or --config); copy config/environments.example.toml "
    "to start a new one",
    "path": f"set {CONFIG_ENV_VAR}=/path/to/environments.toml or pass the path (CLI: --config PATH); "
    "config/environments.example.toml is a template",
    "top": "the top level holds only default_environment and one [ENVIRONMENT] table per site",
    "unset": "export {var}=<password> in the environment of the Dagster code server, daemon and run workers "
    "(e.g. the systemd unit's EnvironmentFile or .env)",
}


def _unknown_alias(env: str, key: str, alias: str, known: Iterable[str], what: str, add: Add) -> None:
    problem = f"{alias!r} is not a {what} alias in this environment{hint(alias, known)}"
    add(env, key, problem, f"set it to one of: {', '.join(sorted(known)) or '(none defined)'}")


def _check_aliases(env: str, raw: Mapping[str, Any], add: Add) -> None:
    sources, targets = _tables(raw, "sources"), _tables(raw, "backup_targets")
    for section, table in (("sources", sources), ("backup_targets", targets)):
        for alias in (a for a in table if not NAME_RE.match(a)):
            add(env, f"{env}.{section}.{alias}", f"alias {alias!r} is not a valid name", _FIXES["alias"])
    for alias in sorted(set(sources) & set(targets)):
        problem = f"alias {alias!r} is used both as a source and as a target"
        add(env, f"{env}.backup_targets.{alias}", problem, _FIXES["both"])
    default_source, main = raw.get("default_source"), raw.get("default_backup")
    if isinstance(default_source, str) and default_source.strip() and default_source not in sources:
        _unknown_alias(env, f"{env}.default_source", default_source, sources, "source", add)
    main_raw = targets.get(main) if isinstance(main, str) else None
    if isinstance(main, str) and main.strip() and main not in targets:
        _unknown_alias(env, f"{env}.default_backup", main, targets, "backup target", add)
    elif isinstance(main_raw, dict) and main_raw.get("type") in TARGET_TYPES[1:]:
        problem = f"the main backup target {main!r} is of type {main_raw['type']!r}"
        add(env, f"{env}.default_backup", problem, _FIXES["main"])


def _same_address(a: Any, b: Any) -> bool:
    if not (isinstance(a, dict) and isinstance(b, dict) and "ip" in a and "port" in a):
        return False
    return (a.get("ip"), a.get("port")) == (b.get("ip"), b.get("port"))


def _check_staging(env: str, raw: Mapping[str, Any], add: Add) -> None:
    targets, main = _tables(raw, "backup_targets"), raw.get("default_backup")
    for alias, table in _tables(raw, "sources").items():
        if not isinstance(table, dict) or table.get("type") != "mosaiq":
            continue
        key, staging = f"{env}.sources.{alias}.staging_target_alias", table.get("staging_target_alias")
        if staging is None:
            fix = 'add staging_target_alias = "MOSAIQ_STAGE"'
            add(env, key, "missing required key 'staging_target_alias'", fix)
        if not isinstance(staging, str) or not staging.strip():
            continue
        if staging not in targets:
            _unknown_alias(env, key, staging, targets, "backup target", add)
        elif staging == main:
            problem = f"the staging target {staging!r} is the main backup target (default_backup)"
            add(env, key, problem, _FIXES["staging"])
        elif _same_address(targets[staging], targets.get(main) if isinstance(main, str) else None):
            problem = (
                f"the staging target {staging!r} has the same ip:port as the main backup target {main!r}"
            )
            add(env, key, problem, _FIXES["address"])


def _check_duplicate_aets(env: str, raw: Mapping[str, Any], add: Add) -> None:
    """Every AE title in an environment must be unique (case-insensitive).

    C-MOVE names its destination by AE title alone (PS3.4 C.4.2) and the sources map that title to one
    host:port, and Orthanc matches calling AE titles case-insensitively by default, so two aliases with one
    title leave at least one of them unreachable or ambiguous. The same AE registered twice (the main
    Orthanc also listed as a source) would back the archive up into itself, so it is rejected too.
    """
    tables = {"script_ae": raw.get("script_ae")}
    for section in ("sources", "backup_targets"):
        tables.update({f"{section}.{a}": t for a, t in _tables(raw, section).items()})
    seen: dict[str, str] = {}
    for where, table in tables.items():
        aet = table.get("aet") if isinstance(table, dict) and table.get("type") != "mosaiq" else None
        if not isinstance(aet, str) or ae_title_problem(aet):
            continue
        folded, key = aet.strip(" ").upper(), f"{env}.{where}.aet"
        if folded in seen:
            add(env, key, f"AE title {aet.strip(' ')!r} is already used by {seen[folded]}", _FIXES["aet"])
        seen.setdefault(folded, key)


# ------------------------------------------------------------------------------------------ secrets


def _secret(env: str, key: str, var: str, add: Add) -> Secret | None:
    value = os.environ.get(var)
    if value is None:
        add(env, key, f"environment variable {var} is not set", _FIXES["unset"].format(var=var))
    elif not value:
        add(env, key, f"environment variable {var} is empty", f"set {var} to the password")
    return Secret(var, value) if value else None


def _resolve_secrets(cfg: EnvironmentConfig, add: Add) -> EnvironmentConfig:
    env, sources, targets = cfg.name, dict(cfg.sources), dict(cfg.backup_targets)
    for a, s in cfg.mosaiq_sources.items():
        secret = _secret(env, f"{env}.sources.{a}.db_password_env", s.db_password_env, add)
        sources[a] = dataclasses.replace(s, password_secret=secret)
    for a, t in cfg.backup_targets.items():
        if t.rest_password_env:
            secret = _secret(env, f"{env}.backup_targets.{a}.rest_password_env", t.rest_password_env, add)
            targets[a] = dataclasses.replace(t, rest_password_secret=secret)
    return dataclasses.replace(cfg, sources=sources, backup_targets=targets)


def _check_raw_secrets(env: str, raw: Mapping[str, Any], add: Add) -> None:
    """When the selected environment has structural errors, still report its unset variables."""
    for section, key in (("sources", "db_password_env"), ("backup_targets", "rest_password_env")):
        for alias, table in _tables(raw, section).items():
            var = table.get(key) if isinstance(table, dict) else None
            if isinstance(var, str) and ENV_VAR_RE.match(var):
                _secret(env, f"{env}.{section}.{alias}.{key}", var, add)


# ------------------------------------------------------------------------------------------ loading


def _select_environment(
    data: dict[str, Any], names: list[str], requested: str | None, add: Add
) -> str | None:
    default = data.get("default_environment")
    choices = ", ".join(names) or "(none defined)"
    if default is not None and (not isinstance(default, str) or default not in names):
        add(
            None,
            "default_environment",
            f"{shown(default)} is not an environment in this file",
            f"set it to one of: {choices}",
        )
    origin = "requested"
    if requested is None and os.environ.get(ENVIRONMENT_ENV_VAR):
        requested, origin = os.environ[ENVIRONMENT_ENV_VAR], f"${ENVIRONMENT_ENV_VAR}"
    if requested is None and isinstance(default, str) and default in names:
        return default
    if requested is None and len(names) == 1:
        return names[0]
    if requested is None:
        if names:
            problem = f"no environment selected and the file defines {len(names)}"
            add(None, "default_environment", problem, _FIXES["select"].format(choices=choices))
        return None
    if requested not in names:
        problem = f"unknown environment {requested!r} ({origin}){hint(requested, names)}"
        add(
            requested, "(environment)", problem, f"use one of the environments defined in the file: {choices}"
        )
        return None
    return requested


def _read_toml(file: Path, environment: str | None, add: Add) -> dict[str, Any] | None:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        add(environment, "(file)", "file not found", _FIXES["not_found"])
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        add(
            environment,
            "(file)",
            f"cannot read the file ({type(exc).__name__})",
            "point to a readable UTF-8 TOML file",
        )
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = f"line {where.group(1)}, column {where.group(2)}" if where else "an unknown line"
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "invalid TOML"
        fix = f"fix the TOML at {line} (https://toml.io); strings need double quotes, tables [NAME.section]"
        add(environment, f"(TOML syntax, {line})", f"TOML syntax error at {line}: {message}", fix)
    return None


def _environment(name: str, raw: dict[str, Any], folder: Path, add: Add) -> EnvironmentConfig | None:
    if not NAME_RE.match(name):
        fix = "use letters, digits and underscores, starting with a letter"
        add(name, name, f"environment name {name!r} is not a valid name", fix)
    _unknown_keys(EnvironmentConfig, raw, name, name, add)
    model = None
    try:
        model = _ADAPTER.validate_python({"description": "", **raw, "name": name}, context={"dir": folder})
    except ValidationError as exc:
        _add_validation_errors(exc, name, add)
    for rule in (_check_aliases, _check_staging, _check_duplicate_aets):
        rule(name, raw, add)
    return model


def load_config(path: str | os.PathLike[str] | None = None, environment: str | None = None) -> SiteConfig:
    """Load and validate the site configuration; raise ConfigError listing every problem found.

    path defaults to ``$DICOM_BACKUP_CONFIG``; environment to ``$DICOM_BACKUP_ENVIRONMENT``, then the
    file's ``default_environment``, then the only environment if there is just one. Every environment is
    checked structurally; environment variables (secrets) are read only for the selected one.
    """
    path = path if path is not None else (os.environ.get(CONFIG_ENV_VAR) or None)
    if path is None:
        issue = ConfigIssue(
            "(no file)", environment, CONFIG_ENV_VAR, "no configuration file given", _FIXES["path"]
        )
        raise ConfigError([issue])
    file = Path(path).expanduser().absolute()
    issues: list[ConfigIssue] = []

    def add(env: str | None, key: str, problem: str, fix: str) -> None:
        issues.append(ConfigIssue(str(file), env, key, problem, fix))

    data = _read_toml(file, environment, add)
    if data is None:
        raise ConfigError(issues)
    names = [k for k, v in data.items() if k != "default_environment" and isinstance(v, dict)]
    for key in (k for k in data if k != "default_environment" and k not in names):
        suffix, _ = _suggest(key, {"default_environment"})
        add(None, key, f"unknown top-level key {key!r}{suffix}", _FIXES["top"])
    if not names:
        add(None, "(file)", "no environments defined", "add at least one [ENVIRONMENT] table, e.g. [UCLA]")
    selected = _select_environment(data, names, environment, add)
    parsed = {name: _environment(name, data[name], file.parent, add) for name in names}
    result = parsed.get(selected) if selected else None
    if result is not None:
        result = _resolve_secrets(result, add)
    elif selected in parsed:
        _check_raw_secrets(selected, data[selected], add)
    if issues or result is None:
        fallback = ConfigIssue(str(file), selected, "(file)", "invalid configuration", "see the errors above")
        raise ConfigError(issues or [fallback])
    return SiteConfig(file, result, tuple(names))
