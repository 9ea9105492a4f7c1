"""load_config: TOML -> EnvironmentConfig, every problem reported at once: pydantic's errors become issues
through one table of messages, then the cross-references (aliases, staging, AE titles) run as a second pass
on the tables as written. Secrets are read only for the selected environment."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dicom_backup_dagster.config.models import (
    LOADER_KEYS,
    NAME_RE,
    SOURCE_TYPES,
    ConfigError,
    ConfigIssue,
    EnvironmentConfig,
    SiteConfig,
)
from dicom_backup_dagster.dicom.network import ae_title_problem
from dicom_backup_dagster.notify.settings import close_match, hint, shown, type_name

CONFIG_ENV_VAR = "DICOM_BACKUP_CONFIG"
ENVIRONMENT_ENV_VAR = "DICOM_BACKUP_ENVIRONMENT"

Add = Callable[[str | None, str, str, str], None]

# Keys of the original (pre-Dagster) environments.toml and their replacements here.
_RENAMED_KEYS = {
    "dicom_query_level": "query_level",
    "dicom_query_keys": "query_keys",
    "ae_title": "aet",
    "host": "ip",
    "mosaiq_backup_sql_query": "mosaiq_queries",
    "modality_to_query": 'query_keys (e.g. query_keys = { Modality = "CT" } on the source)',
}
# Examples of a table (the fix when it is missing or not a table).
_TABLES = {
    "script_ae": 'aet = "DICOM_BACKUP"',
    "settings": "max_uids_per_run = 5000",
    "sources": '[<ENV>.sources.ARIA_MAIN] type = "aria" ...',
    "backup_targets": '[<ENV>.backup_targets.ORTHANC_MAIN] type = "orthanc" ...',
    "notifications": 'dagster_ui_url = "http://dagster.example.org:3000"',
    "slack": 'webhook_url_env = "<ENV>_SLACK_WEBHOOK_URL"',
    "email": 'smtp_host = "smtp.example.org"',
    "pagerduty": 'routing_key_env = "<ENV>_PAGERDUTY_ROUTING_KEY"',
}
# pydantic's error types (numbers and dates by the field's type) -> (problem, fix). {name}: the key, {got}:
# the value (or {a}: its type), {what}: what it must be, {example}: a valid value, {choices}: the valid ones.
_MESSAGES = {
    "missing": ("missing required key {name!r}", "add {name} = {example}{export}"),
    "union_tag_not_found": ("missing required key 'type'", "add type = one of {choices}"),
    "union_tag_invalid": ("unknown source type {got}{hint}", "set type to one of {choices}"),
    "literal_error": ("unknown {what} {got}{hint}", "set {name} to one of {choices}"),
    "number": (
        "must be {what}, got {got}",
        "set {name} to {a_number} {range} (no quotes), e.g. {name} = {example}",
    ),
    "bool_type": ("must be {what}, got {a}", "write {name} = true or {name} = false (no quotes)"),
    "string_type": ("must be a string, got {got}", "write it as {name} = {example}"),
    "date": ("{got} is not a date", "write it as {name} = {example} (YYYY-MM-DD)"),
    "table": ("must be a table, got {a}", "write it as [<KEY>] {table}"),
}
_TABLE_ERRORS = ("dataclass_type", "dataclass_exact_type", "dict_type", "model_attributes_type")
_RANGE_ERRORS = ("int_type", "float_type", "greater_than", "greater_than_equal", "less_than_equal")
_SECRET_KEY_FIX = (
    "never put a password in the file: export it as an environment variable and name that variable "
    'with {new} (e.g. {new} = "<SITE>_<ALIAS>_PASSWORD")'
)
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


def _members(tp: Any) -> tuple[Any, ...]:
    """The types of a union without None, else (tp,)."""
    union = get_origin(tp) in (Union, types.UnionType)
    return tuple(m for m in get_args(tp) if m is not type(None)) if union else (tp,)


def _bare(tp: Any) -> Any:
    """The type inside ``Annotated`` and ``Optional``; the members of any other union."""
    while get_origin(tp) is Annotated or (len(_members(tp)) == 1 and _members(tp) != (tp,)):
        tp = get_args(tp)[0] if get_origin(tp) is Annotated else _members(tp)[0]
    return _members(tp) if len(_members(tp)) > 1 else tp


def _keys(model: Any) -> set[str]:
    infos = getattr(model, "__pydantic_fields__", {})
    names = [f.name for f in dataclasses.fields(model) if f.name not in {*LOADER_KEYS, "name"}]
    return {getattr(infos.get(n), "alias", None) or n for n in names}


def _locate(loc: Iterable[Any]) -> tuple[list[str], str, Any, list[FieldInfo]]:
    """Where a pydantic error is: the keys without the union's tag, the tag (the source's type), the model
    holding the last key, and the infos of its field (also those of an ``Annotated`` type inside it)."""
    tp: Any = EnvironmentConfig
    keys, tag, model, infos = [], "", None, []
    for part in map(str, loc):
        tp = _bare(tp)
        if isinstance(tp, tuple):  # the sources' union: this part is the tag, unless no member has it
            member = next((m for m in tp if part in get_args(m.__pydantic_fields__["type"].annotation)), None)
            if member is not None:
                tag, tp = part, member
                continue
        keys.append(part)
        fields = {(f.alias or n): f for n, f in getattr(tp, "__pydantic_fields__", {}).items()}
        model, info = (tp, fields.get(part)) if dataclasses.is_dataclass(tp) else (model, None)
        inner = [a for a in _members(info.annotation) if get_origin(a) is Annotated] if info else []
        infos = [info, *map(FieldInfo.from_annotation, inner)] if info else []
        tp = info.annotation if info else get_args(tp)[-1] if get_origin(tp) is dict else None
    return keys, tag, model, infos


def _example(name: str, infos: list[FieldInfo]) -> str:
    """A valid value for the key, as TOML: the field's example or default, else one of its choices."""
    examples = [i.examples[0] for i in infos if i.examples]
    default = infos[0].default if infos else None
    if not examples and default not in (None, PydanticUndefined, "", ()):
        examples = [default]
    if examples or not _choices(infos):
        value = examples[0] if examples else "..."
        return value.isoformat() if hasattr(value, "isoformat") else json.dumps(value)
    return f"one of {_choices(infos)}"


def _choices(infos: list[FieldInfo]) -> str:
    literals = [m for info in infos[:1] for m in _members(info.annotation) if get_origin(m) is Literal]
    return ", ".join(repr(c) for m in literals for c in get_args(m))


def _values(error: Mapping[str, Any], name: str, infos: list[FieldInfo]) -> dict[str, Any]:
    """What the messages of _MESSAGES name, for one error."""
    base: Any = _members(infos[0].annotation)[0] if infos else None
    bounds = {
        k: getattr(m, k) for i in infos for m in i.metadata for k in ("ge", "gt", "le") if hasattr(m, k)
    }
    low = f"above {bounds['gt']}" if "gt" in bounds else bounds.get("ge")
    span = f"between {low} and {bounds.get('le')}" if base is int else f"from {low} to {bounds.get('le')}"
    ctx, example = error.get("ctx", {}), _example(name, infos)
    choices = ctx.get("expected_tags") or _choices(infos) or ", ".join(map(repr, SOURCE_TYPES))
    a_number = {int: "an integer", float: "a number"}.get(base)
    what = f"{a_number} {span}" if a_number else "true or false" if base is bool else name
    return {
        "name": name,
        "got": shown(ctx.get("tag", error["input"])),
        "a": type_name(error["input"]),
        "what": next((i.description for i in infos if i.description), what),
        "example": example,
        "choices": choices,
        "hint": hint(str(ctx.get("tag", error["input"])), re.findall(r"'([^']*)'", choices), 0.5),
        "range": span,
        "table": _TABLES.get(name, ""),
        "export": f" and export {example.strip(chr(34))}=<password>" if name.endswith("_env") else "",
        "a_number": a_number,
        "kind": "number" if error["type"] in _RANGE_ERRORS and a_number else error["type"],
    }


def _explain(
    error: Mapping[str, Any], keys: list[str], tag: str, model: Any, infos: list[FieldInfo]
) -> tuple[str, str]:
    """(problem, fix) for one pydantic error."""
    kind, name = error["type"], keys[-1] if keys else ""
    if kind == "config":
        return error["ctx"]["problem"], error["ctx"]["fix"]
    if kind == "unexpected_keyword_argument":
        where = " in an environment" if model is EnvironmentConfig else ""
        where = f" for a source of type {tag!r}" if tag else where
        suffix, fix = _suggest(name, _keys(model))
        return f"unknown key {name!r}{where}{suffix}", fix
    if kind == "missing" and name in _TABLES:
        return "missing required table", f"add a [<KEY>] table, e.g. {_TABLES[name]}"
    values = _values(error, name, infos)
    kind = "date" if kind.startswith("date") else "table" if kind in _TABLE_ERRORS else values["kind"]
    if kind not in _MESSAGES:
        return f"{error['msg']}, got {values['got']}", "see docs/configuration.md for this key"
    return _MESSAGES[kind][0].format(**values), _MESSAGES[kind][1].format(**values)


def _add_validation_errors(exc: ValidationError, env: str, add: Add) -> None:
    for error in exc.errors(include_url=False):
        keys, tag, model, infos = _locate(error["loc"])
        keys += ["type"] if error["type"].startswith("union_tag") else []
        key = ".".join([env, *keys])
        problem, fix = _explain(error, keys, tag, model, infos)
        alias = keys[1] if len(keys) > 1 and keys[0] in ("sources", "backup_targets") else "DICOM_BACKUP"
        fix = fix.replace("<EXAMPLE>", _example(keys[-1] if keys else "", infos)).replace("<KEY>", key)
        add(env, key, problem, fix.replace("<ENV>", env).replace("<ALIAS>", alias))


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
}


def _refers(alias: Any, known: Mapping[str, Any], what: str, env: str, key: str, add: Add) -> TypeGuard[str]:
    """Whether the alias a key holds names an entry of ``known``; a set one that does not is reported (a
    value that is no alias at all is the model's to report)."""
    if isinstance(alias, str) and alias.strip() and alias not in known:
        problem = f"{alias!r} is not a {what} alias in this environment{hint(alias, known)}"
        add(env, key, problem, f"set it to one of: {', '.join(sorted(known)) or '(none defined)'}")
    return isinstance(alias, str) and alias in known


def _is(table: Any, kind: str) -> bool:
    return isinstance(table, dict) and table.get("type") == kind


def _check_aliases(env: str, raw: Mapping[str, Any], add: Add) -> None:
    sources, targets = _tables(raw, "sources"), _tables(raw, "backup_targets")
    for section, table in (("sources", sources), ("backup_targets", targets)):
        for alias in (a for a in table if not NAME_RE.match(a)):
            add(env, f"{env}.{section}.{alias}", f"alias {alias!r} is not a valid name", _FIXES["alias"])
    for alias in sorted(set(sources) & set(targets)):
        problem = f"alias {alias!r} is used both as a source and as a target"
        add(env, f"{env}.backup_targets.{alias}", problem, _FIXES["both"])
    _refers(raw.get("default_source"), sources, "source", env, f"{env}.default_source", add)
    main, key = raw.get("default_backup"), f"{env}.default_backup"
    if _refers(main, targets, "backup target", env, key, add) and _is(targets[main], "dicom_scp"):
        add(env, key, f"the main backup target {main!r} is of type 'dicom_scp'", _FIXES["main"])


def _check_drill(env: str, raw: Mapping[str, Any], add: Add) -> None:
    drill, scratch = _tables(raw, "settings").get("restore_drill_target"), _tables(raw, "restore_targets")
    _refers(drill, scratch, "restore target", env, f"{env}.settings.restore_drill_target", add)  # run weekly


def _same_address(a: Any, b: Any) -> bool:
    if not (isinstance(a, dict) and isinstance(b, dict) and "ip" in a and "port" in a):
        return False
    return (a.get("ip"), a.get("port")) == (b.get("ip"), b.get("port"))


def _check_staging(env: str, raw: Mapping[str, Any], add: Add) -> None:
    targets, main = _tables(raw, "backup_targets"), raw.get("default_backup")
    for alias, table in _tables(raw, "sources").items():
        if not _is(table, "mosaiq"):
            continue
        key, staging = f"{env}.sources.{alias}.staging_target_alias", table.get("staging_target_alias")
        if staging is None:
            fix = 'add staging_target_alias = "MOSAIQ_STAGE"'
            add(env, key, "missing required key 'staging_target_alias'", fix)
        if not _refers(staging, targets, "backup target", env, key, add) or not staging.strip():
            continue
        if staging == main:
            problem = f"the staging target {staging!r} is the main backup target (default_backup)"
            add(env, key, problem, _FIXES["staging"])
        elif _same_address(targets[staging], targets.get(main) if isinstance(main, str) else None):
            problem = f"the staging target {staging!r} has the same ip:port as the main target {main!r}"
            add(env, key, problem, _FIXES["address"])


def _check_duplicate_aets(env: str, raw: Mapping[str, Any], add: Add) -> None:
    """AE titles are unique per environment, case-insensitively: C-MOVE names its destination by AE title
    alone (PS3.4 C.4.2) and Orthanc folds case; the same AE twice would back the archive up into itself."""
    tables = {"script_ae": raw.get("script_ae")}
    for section in ("sources", "backup_targets"):
        tables.update({f"{section}.{a}": t for a, t in _tables(raw, section).items()})
    seen: dict[str, str] = {}
    for where, table in tables.items():
        aet = table.get("aet") if isinstance(table, dict) and not _is(table, "mosaiq") else None
        if not isinstance(aet, str) or ae_title_problem(aet):
            continue
        folded, key = aet.strip(" ").upper(), f"{env}.{where}.aet"
        if folded in seen:
            add(env, key, f"AE title {aet.strip(' ')!r} is already used by {seen[folded]}", _FIXES["aet"])
        seen.setdefault(folded, key)


# ------------------------------------------------------------------------------------------ loading


def _select_environment(data: dict[str, Any], names: list[str], wanted: str | None, add: Add) -> str | None:
    default, choices = data.get("default_environment"), ", ".join(names) or "(none defined)"
    if default is not None and (not isinstance(default, str) or default not in names):
        problem = f"{shown(default)} is not an environment in this file"
        add(None, "default_environment", problem, f"set it to one of: {choices}")
    origin = "requested"
    if wanted is None and os.environ.get(ENVIRONMENT_ENV_VAR):
        wanted, origin = os.environ[ENVIRONMENT_ENV_VAR], f"${ENVIRONMENT_ENV_VAR}"
    if wanted is None:
        known = isinstance(default, str) and default in names
        wanted = default if known else names[0] if len(names) == 1 else None
        if wanted is None and names:
            problem = f"no environment selected and the file defines {len(names)}"
            add(None, "default_environment", problem, _FIXES["select"].format(choices=choices))
        return wanted
    if wanted not in names:
        problem = f"unknown environment {wanted!r} ({origin}){hint(wanted, names)}"
        add(wanted, "(environment)", problem, f"use one of the environments defined in the file: {choices}")
        return None
    return wanted


def _read_toml(file: Path, environment: str | None, add: Add) -> dict[str, Any] | None:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        add(environment, "(file)", "file not found", _FIXES["not_found"])
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        problem = f"cannot read the file ({type(exc).__name__})"
        add(environment, "(file)", problem, "point to a readable UTF-8 TOML file")
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = f"line {where.group(1)}, column {where.group(2)}" if where else "an unknown line"
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "invalid TOML"
        fix = f"fix the TOML at {line} (https://toml.io); strings need double quotes, tables [NAME.section]"
        add(environment, f"(TOML syntax, {line})", f"TOML syntax error at {line}: {message}", fix)
    return None


def _environment(
    name: str, raw: dict[str, Any], folder: Path, selected: bool, add: Add
) -> EnvironmentConfig | None:
    if not NAME_RE.match(name):
        fix = "use letters, digits and underscores, starting with a letter"
        add(name, name, f"environment name {name!r} is not a valid name", fix)
    if "name" in raw:  # the table's name is the environment's
        add(name, f"{name}.name", "unknown key 'name' in an environment", "remove it")
    model = None
    try:
        context = {"dir": folder, "secrets": selected}
        model = _ADAPTER.validate_python({**raw, "name": name}, context=context, by_name=False)
    except ValidationError as exc:
        _add_validation_errors(exc, name, add)
    for rule in (_check_aliases, _check_staging, _check_duplicate_aets, _check_drill):
        rule(name, raw, add)
    return model


def load_config(path: str | os.PathLike[str] | None = None, environment: str | None = None) -> SiteConfig:
    """Load and validate the site configuration; raise ConfigError listing every problem found. environment
    defaults to ``$DICOM_BACKUP_ENVIRONMENT``, the file's ``default_environment``, or the only one."""
    path = path if path is not None else (os.environ.get(CONFIG_ENV_VAR) or None)
    if path is None:
        problem = "no configuration file given"
        raise ConfigError([ConfigIssue("(no file)", environment, CONFIG_ENV_VAR, problem, _FIXES["path"])])
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
    parsed = {name: _environment(name, data[name], file.parent, name == selected, add) for name in names}
    result = parsed.get(selected) if selected else None
    if issues or result is None:
        fallback = ConfigIssue(str(file), selected, "(file)", "invalid configuration", "see the errors above")
        raise ConfigError(issues or [fallback])
    return SiteConfig(file, result, tuple(names))
