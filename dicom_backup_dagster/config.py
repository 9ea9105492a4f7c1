"""Site configuration: environments.toml -> typed, validated, frozen model.

One TOML file holds one table per environment (site), e.g. ``[UCLA]`` and ``[TJU]``. Which file and which
environment are used is chosen by ``$DICOM_BACKUP_CONFIG`` and ``$DICOM_BACKUP_ENVIRONMENT`` (or the
file's ``default_environment``). Secrets never live in the file: it names environment variables
(``db_password_env``, ``rest_password_env``) that are read only for the selected environment, and their
values never appear in ``repr``/``str`` of the models or in any error message.

Validation collects every problem it can find and raises one :class:`ConfigError` whose message names the
file, the environment, the dotted key (``UCLA.sources.ARIA_MAIN.port``) and the fix, so an operator can
correct a file in one pass. docs/configuration.md is the reference for every key.

CLI: ``python -m dicom_backup_dagster.config check [--config PATH] [--environment NAME]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import ipaddress
import os
import re
import sys
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib  # type: ignore[no-redef]

from dicom_backup_dagster.backup.hours import EXAMPLE as BULK_HOURS_EXAMPLE
from dicom_backup_dagster.backup.hours import WorkWindow, WorkWindowError, parse_work_window
from dicom_backup_dagster.dicom.network import Peer, Timeouts
from dicom_backup_dagster.mosaiq.queries import QueryOverrideError, resolve_queries
from dicom_backup_dagster.notify.settings import (
    CHANNELS,
    SEVERITIES,
    EmailSettings,
    NotificationSettings,
    PagerDutySettings,
    SlackSettings,
)

__all__ = [
    "CONFIG_ENV_VAR",
    "ENVIRONMENT_ENV_VAR",
    "BackupTarget",
    "ConfigError",
    "ConfigIssue",
    "EnvironmentConfig",
    "MosaiqSource",
    "QRSource",
    "ScriptAE",
    "Secret",
    "Settings",
    "SiteConfig",
    "Source",
    "ae_title_problem",
    "is_sqlite_driver",
    "load_config",
]

_T = TypeVar("_T")

CONFIG_ENV_VAR = "DICOM_BACKUP_CONFIG"
ENVIRONMENT_ENV_VAR = "DICOM_BACKUP_ENVIRONMENT"

QR_SOURCE_TYPES = ("aria", "mim")
SOURCE_TYPES = ("aria", "mim", "mosaiq")
TARGET_TYPES = ("orthanc", "dicom_scp")
QUERY_LEVELS = ("STUDY", "SERIES", "IMAGE")
TRANSFERS = ("c-move", "c-get")
INVENTORY_MODES = ("by-study", "walk")

# Aliases and environment names become parts of Dagster asset keys, job and pool names, which accept only
# letters, digits and underscores; failing here is clearer than a DagsterInvalidDefinitionError later.
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_ENV_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")

# Keys of the original (pre-Dagster) environments.toml and their replacements here.
_RENAMED_KEYS = {
    "dicom_query_level": "query_level",
    "dicom_query_keys": "query_keys",
    "mosaiq_backup_sql_query": "mosaiq_queries",
    "modality_to_query": 'query_keys (e.g. query_keys = { Modality = "CT" } on the source)',
    "ae_title": "aet",
    "host": "ip",
}
_SECRET_KEY_FIX = (
    "never put a password in the file: export it as an environment variable and name that variable "
    'with {new} (e.g. {new} = "<SITE>_<ALIAS>_PASSWORD")'
)


# --------------------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ConfigIssue:
    """One validation problem: where (file, environment, dotted key), what, and how to fix it."""

    file: str
    environment: str | None
    key: str
    problem: str
    fix: str

    def __str__(self) -> str:
        env = f"environment {self.environment}, " if self.environment else ""
        stop = "" if self.problem.endswith(("?", ".", "!")) else "."
        return f"{self.file}: {env}{self.key}: {self.problem}{stop} Fix: {self.fix}"


class ConfigError(ValueError):
    """The configuration cannot be used. ``issues`` lists every problem found (not just the first)."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        n = len(self.issues)
        if n == 1:
            message = str(self.issues[0])
        else:
            files = sorted({i.file for i in self.issues})
            lines = [f"{n} configuration errors in {', '.join(files)}:"]
            lines += [f"  {k}. {issue}" for k, issue in enumerate(self.issues, 1)]
            message = "\n".join(lines)
        super().__init__(message)


# --------------------------------------------------------------------------------------------------------
# Model


class Secret:
    """A value read from an environment variable. Its repr/str show only the variable's name."""

    __slots__ = ("_value", "env_var")

    def __init__(self, env_var: str, value: str) -> None:
        self.env_var = env_var
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(${self.env_var})"

    __str__ = __repr__


def _read_secret(env_var: str, owner: str) -> str:
    """Fallback for models built in code rather than by load_config: read the variable now."""
    value = os.environ.get(env_var)
    if not value:
        raise ConfigError(
            [
                ConfigIssue(
                    "(not loaded from a file)",
                    None,
                    owner,
                    f"environment variable {env_var} is not set or empty",
                    f"export {env_var}=<password> before starting the process",
                )
            ]
        )
    return value


@dataclass(frozen=True)
class ScriptAE:
    """Our own AE: the calling AE title, and optionally the port we listen on (C-MOVE destination,
    N-EVENT-REPORT for Storage Commitment, PS3.4 J.3)."""

    aet: str
    port: int | None = None


@dataclass(frozen=True)
class QRSource:
    """A DICOM Query/Retrieve SCP we back up from (PS3.4 Annex C): ARIA or MIM."""

    alias: str
    type: Literal["aria", "mim"]
    aet: str
    ip: str
    port: int
    query_level: Literal["STUDY", "SERIES", "IMAGE"] = "IMAGE"
    query_keys: dict[str, str] = field(default_factory=dict, hash=False)
    transfer: Literal["c-move", "c-get"] = "c-move"
    max_associations: int = 2
    #: "by-study": one IMAGE-level C-FIND per study, a study walked only when that answer is refused, empty
    #: or short of its NumberOfStudyRelatedInstances; "walk": SERIES then IMAGE per series, always.
    inventory: Literal["by-study", "walk"] = "by-study"
    #: The source answers relational queries (SERIES level without a StudyInstanceUID, PS3.4 C.4.1.2.2.2):
    #: the nightly inventory then also finds series dated in its window on studies of any age (SeriesDate).
    relational: bool = False
    #: The most matches the source returns for one C-FIND (e.g. Orthanc's LimitFindResults); an answer
    #: that reaches it is split (backup/listing.py). Set it to the source's limit or below, never above.
    max_find_results: int | None = None
    #: When backfills, sweeps and manual runs may load this source (backup/hours.py); () = any time.
    bulk_hours: tuple[str, ...] = ()

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, self.ip, self.port)

    def bulk_window(self, timezone: str) -> WorkWindow:
        """bulk_hours in the site timezone (settings.timezone); validated when the file was loaded."""
        return parse_work_window(self.bulk_hours, timezone)


@dataclass(frozen=True)
class MosaiqSource:
    """The Mosaiq SQL database, read through ODBC. ``password`` is resolved from ``db_password_env``."""

    alias: str
    db_server: str
    db_port: int | None
    db_database: str
    db_username: str
    db_password_env: str
    odbc_driver: str
    odbc_options: dict[str, str] = field(default_factory=dict, hash=False)
    staging_target_alias: str = ""
    password_secret: Secret | None = field(default=None, repr=False, compare=False, hash=False)
    type: Literal["mosaiq"] = field(default="mosaiq", kw_only=True)

    @property
    def password(self) -> str:
        if self.password_secret is not None:
            return self.password_secret.reveal()
        return _read_secret(self.db_password_env, f"sources.{self.alias}.db_password_env")

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite_driver(self.odbc_driver)


Source = QRSource | MosaiqSource


@dataclass(frozen=True)
class BackupTarget:
    """A DICOM Storage SCP we write to: the main Orthanc archive, or a staging SCP."""

    alias: str
    type: Literal["orthanc", "dicom_scp"]
    aet: str
    ip: str
    port: int
    rest_url: str | None = None
    rest_username: str | None = None
    rest_password_env: str | None = None
    rest_password_secret: Secret | None = field(default=None, repr=False, compare=False, hash=False)

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, self.ip, self.port)

    @property
    def rest_password(self) -> str | None:
        if self.rest_password_env is None:
            return None
        if self.rest_password_secret is not None:
            return self.rest_password_secret.reveal()
        return _read_secret(self.rest_password_env, f"backup_targets.{self.alias}.rest_password_env")


@dataclass(frozen=True)
class Settings:
    max_uids_per_run: int = 5000
    timezone: str = "UTC"
    schedule: str = "30 1 * * *"
    lookback_days: int = 3
    timeouts: Timeouts = field(default_factory=Timeouts)
    verification_fraction: float = 0.0
    mosaiq_queries: dict[str, str] = field(default_factory=dict, hash=False)
    connectivity_schedule: str = "*/15 * * * *"
    # A backfill covers up to this many days per run (one C-FIND over the range, one process); nightly
    # runs always cover one day. Per-day figures stay per partition (backup/partitions.py).
    backfill_days_per_run: int = 7
    # The staging cleanup job deletes a staged Mosaiq RT record only once it is verified on main AND was
    # received by staging at least this many days ago (defs/staging_cleanup.py).
    staging_retention_days: int = 7
    # Late data (backup/late.py): the nightly inventory compares the studies dated this many days before
    # its window with the archive and inventories those that grew (0: off).
    late_series_days: int = 30
    # The reconciliation sweep (backup/sweep.py): every study dated in the last `sweep_days` days is
    # re-inventoried and compared with the archive at least once every `sweep_nights` nights, at most
    # `sweep_max_studies` studies a night; the sweep job runs on `sweep_schedule` (0 days: no sweep).
    sweep_days: int = 180
    sweep_nights: int = 30
    sweep_max_studies: int = 2000
    sweep_schedule: str = "30 4 * * *"

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


@dataclass(frozen=True)
class EnvironmentConfig:
    name: str
    description: str
    default_source: str
    default_backup: str
    script_ae: ScriptAE
    sources: dict[str, Source] = field(hash=False)
    backup_targets: dict[str, BackupTarget] = field(hash=False)
    settings: Settings = field(default_factory=Settings)
    notifications: NotificationSettings = field(default_factory=NotificationSettings, hash=False)

    @property
    def main_target(self) -> BackupTarget:
        """The main archive (``default_backup``)."""
        return self.backup_targets[self.default_backup]

    @property
    def qr_sources(self) -> dict[str, QRSource]:
        return {a: s for a, s in self.sources.items() if isinstance(s, QRSource)}

    @property
    def mosaiq_sources(self) -> dict[str, MosaiqSource]:
        return {a: s for a, s in self.sources.items() if isinstance(s, MosaiqSource)}

    def staging_target(self, source: str | MosaiqSource) -> BackupTarget:
        """The staging SCP that a Mosaiq source's RT records are stored to before they move to main."""
        src = self.sources[source] if isinstance(source, str) else source
        if not isinstance(src, MosaiqSource):
            raise ValueError(
                f"source {src.alias} is of type {src.type}; only mosaiq sources have a staging target"
            )
        return self.backup_targets[src.staging_target_alias]

    def peers(self) -> dict[str, Peer]:
        """alias -> Peer for every DICOM peer: ARIA/MIM sources and all backup targets."""
        out: dict[str, Peer] = {a: s.peer for a, s in self.qr_sources.items()}
        out.update({a: t.peer for a, t in self.backup_targets.items()})
        return out


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    environment: EnvironmentConfig
    environment_names: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------------
# Single-value checks (public where other modules may want them)


def is_sqlite_driver(driver: str) -> bool:
    return driver.strip().strip("{}").strip().lower().startswith("sqlite")


def ae_title_problem(aet: str) -> str | None:
    """Why ``aet`` is not a valid AE title, or None. PS3.5 6.2 (VR AE): at most 16 characters of the
    default character repertoire, no backslash or control characters, not all spaces; leading and
    trailing spaces are not significant (so they are stripped before the length check)."""
    value = aet.strip(" ")
    if not value:
        return "an AE title may not be empty or all spaces"
    bad = sorted({c for c in value if not (0x20 <= ord(c) <= 0x7E) or c == "\\"})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"AE title {value!r} contains characters not allowed in an AE title ({shown})"
    if len(value) > 16:
        return f"AE title {value!r} is {len(value)} characters long; the maximum is 16"
    return None


def _host_problem(host: str) -> str | None:
    if not host.strip():
        return "empty host"
    if host != host.strip() or any(c.isspace() for c in host):
        return f"host {host!r} contains spaces"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            return f"{host!r} is not a valid IPv6 address (and a host name may not contain ':')"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not a valid IPv4 address"
        return None
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_HOST_LABEL_RE.match(label) for label in name.split(".")):
        return f"{host!r} is not a valid host name"
    return None


_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_CRON_NAMES = {
    3: {
        m: i
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
        )
    },
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}


def _cron_problem(expr: str) -> str | None:
    """Basic 5-field cron check (minute hour day-of-month month day-of-week), as Dagster schedules use."""
    parts = expr.split()
    if len(parts) != 5:
        return f"{expr!r} has {len(parts)} fields; a cron expression needs 5 (minute hour day month weekday)"
    for index, (part, (label, low, high)) in enumerate(zip(parts, _CRON_FIELDS, strict=True)):
        names = _CRON_NAMES.get(index, {})

        def value(
            token: str, label: str = label, low: int = low, high: int = high, names: dict[str, int] = names
        ) -> int:
            number = names.get(token.lower()) if not token.isdigit() else int(token)
            if number is None or not low <= number <= high:
                raise ValueError(f"{label} value {token!r} is outside {low}-{high}")
            return number

        for item in part.split(","):
            base, _, step = item.partition("/")
            try:
                if step and (not step.isdigit() or int(step) < 1):
                    raise ValueError(f"step {step!r} in the {label} field must be a positive integer")
                if base == "*":
                    continue
                first, dash, last = base.partition("-")
                if not first or (dash and not last):
                    raise ValueError(f"{label} field item {item!r} is malformed")
                if dash and value(first) > value(last):
                    raise ValueError(f"{label} range {base!r} runs backwards")
                value(first)
            except ValueError as exc:
                return f"{expr!r}: {exc}"
    return None


# --------------------------------------------------------------------------------------------------------
# Parsing and validation


def _close(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``word`` (case-insensitive), or None."""
    by_folded = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(word.lower(), list(by_folded), n=1, cutoff=cutoff)
    return by_folded[match[0]] if match else None


def _suggest(key: str, allowed: Iterable[str]) -> tuple[str, str]:
    """(problem suffix, fix) for an unknown key."""
    allowed = sorted(allowed)
    listing = ", ".join(allowed)
    if "password" in key and not key.endswith("_env"):
        secret_key = next((a for a in allowed if a.endswith("password_env")), None)
        if secret_key:
            return f", did you mean {secret_key!r}?", _SECRET_KEY_FIX.format(new=secret_key)
    if key in _RENAMED_KEYS:
        new = _RENAMED_KEYS[key]
        first = new.split()[0]
        if first in allowed or " " in new:  # a renamed key here, or an explanation of where it went
            return f", did you mean {first!r}?", f"use {new} instead (valid keys here: {listing})"
    best = (
        _close(key, allowed)
        or next((a for a in allowed if len(a) >= 3 and (a in key or key in a)), None)
        or _close(key, allowed, 0.5)
    )
    if best:
        return f", did you mean {best!r}?", f"rename it to {best!r} (valid keys here: {listing})"
    return "", f"remove it (valid keys here: {listing})"


class _Validator:
    def __init__(self, file: Path) -> None:
        self.file = str(file)
        self.issues: list[ConfigIssue] = []

    def add(self, env: str | None, key: str, problem: str, fix: str) -> None:
        self.issues.append(ConfigIssue(self.file, env, key, problem, fix))

    def unknown_keys(
        self,
        env: str | None,
        prefix: str,
        table: Mapping[str, Any],
        allowed: Iterable[str],
        context: str = "",
    ) -> None:
        allowed = set(allowed)
        for key in table:
            if key not in allowed:
                suffix, fix = _suggest(key, allowed)
                where = f" {context}" if context else ""
                self.add(env, f"{prefix}.{key}", f"unknown key {key!r}{where}{suffix}", fix)

    def table(self, env: str | None, path: str, value: Any, *, required: bool, example: str) -> dict | None:
        if value is None:
            if required:
                self.add(env, path, "missing required table", f"add a [{path}] table, e.g. {example}")
            return None
        if not isinstance(value, dict):
            self.add(
                env, path, f"must be a table, got {_type_name(value)}", f"write it as [{path}] {example}"
            )
            return None
        return value

    def present(
        self, env: str, path: str, table: Mapping[str, Any], key: str, *, required: bool, example: str
    ) -> bool:
        """Whether `key` is in `table`; a missing key that is `required` is reported."""
        if key in table:
            return True
        if required:
            self.add(env, f"{path}.{key}", f"missing required key {key!r}", f"add {key} = {example}")
        return False

    def subtable(
        self, env: str, path: str, table: Mapping[str, Any], key: str, *, required: bool, example: str
    ) -> dict | None:
        """The table under `key` (None if it is missing or not a table)."""
        return self.table(env, f"{path}.{key}", table.get(key), required=required, example=example)

    def string(
        self,
        env: str,
        path: str,
        table: Mapping[str, Any],
        key: str,
        *,
        required: bool,
        example: str,
        default: str | None = None,
    ) -> str | None:
        if not self.present(env, path, table, key, required=required, example=example):
            return default
        dotted = f"{path}.{key}"
        value = table[key]
        if not isinstance(value, str):
            self.add(
                env, dotted, f"must be a string, got {_type_name(value)}", f"write it as {key} = {example}"
            )
            return default
        if not value.strip():
            self.add(env, dotted, "must not be empty", f"set it, e.g. {key} = {example}")
            return default
        return value

    def integer(
        self,
        env: str,
        path: str,
        table: Mapping[str, Any],
        key: str,
        *,
        required: bool,
        low: int,
        high: int,
        example: str,
        default: int | None = None,
        what: str = "",
    ) -> int | None:
        if not self.present(env, path, table, key, required=required, example=example):
            return default
        dotted = f"{path}.{key}"
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            shown = repr(value) if isinstance(value, (int, float, str, bool)) else _type_name(value)
            kind = what or f"an integer between {low} and {high}"
            self.add(
                env,
                dotted,
                f"must be {kind}, got {shown}",
                f"set {key} to an integer between {low} and {high} (no quotes), e.g. {key} = {example}",
            )
            return default
        return value

    def port(
        self, env: str, path: str, table: Mapping[str, Any], key: str, *, required: bool, example: str
    ) -> int | None:
        """A TCP port (integer 1..65535) under `key`."""
        return self.integer(
            env,
            path,
            table,
            key,
            required=required,
            low=1,
            high=65535,
            example=example,
            what="a TCP port (integer 1..65535)",
        )

    def number(
        self,
        env: str,
        path: str,
        table: Mapping[str, Any],
        key: str,
        *,
        low: float,
        high: float,
        default: float,
        example: str,
        low_inclusive: bool = True,
    ) -> float:
        dotted = f"{path}.{key}"
        if key not in table:
            return default
        value = table[key]
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok_range = ok_type and (value >= low if low_inclusive else value > low) and value <= high
        if not ok_range:
            bound = f"{'' if low_inclusive else 'above '}{low} to {high}"
            shown = repr(value) if isinstance(value, (int, float, str, bool)) else _type_name(value)
            self.add(
                env,
                dotted,
                f"must be a number from {bound}, got {shown}",
                f"set {key} to a number from {bound} (no quotes), e.g. {key} = {example}",
            )
            return default
        return float(value)

    def aet(self, env: str, path: str, table: Mapping[str, Any], example: str) -> str | None:
        if not self.present(env, path, table, "aet", required=True, example=example):
            return None
        dotted = f"{path}.aet"
        raw = table["aet"]
        if not isinstance(raw, str):
            self.add(env, dotted, f"must be a string, got {_type_name(raw)}", f"write it as aet = {example}")
            return None
        problem = ae_title_problem(raw)
        if problem:
            self.add(
                env,
                dotted,
                problem,
                "use 1 to 16 printable ASCII characters without backslash (PS3.5 6.2, VR AE), "
                f"matching the AE title configured on the peer, e.g. aet = {example}",
            )
            return None
        return raw.strip(" ")

    def host(
        self, env: str, path: str, table: Mapping[str, Any], key: str, example: str, required: bool = True
    ) -> str | None:
        dotted = f"{path}.{key}"
        if key in table and isinstance(table[key], str) and not table[key].strip():
            self.add(
                env, dotted, "empty host", f"set {key} to an IP address or DNS name, e.g. {key} = {example}"
            )
            return None
        value = self.string(env, path, table, key, required=required, example=example)
        if value is None:
            return None
        problem = _host_problem(value)
        if problem:
            self.add(env, dotted, problem, f"set {key} to an IP address or DNS name, e.g. {key} = {example}")
            return None
        return value

    def env_var_name(
        self, env: str, path: str, table: Mapping[str, Any], key: str, example: str, required: bool
    ) -> str | None:
        dotted = f"{path}.{key}"
        if key not in table:
            if required:
                self.add(
                    env,
                    dotted,
                    f"missing required key {key!r}",
                    f"add {key} = {example} and export {example.strip(chr(34))}=<password>",
                )
            return None
        value = table[key]
        # Never echo the value: a password pasted here by mistake must not end up in a log.
        if not isinstance(value, str) or not _ENV_VAR_RE.match(value):
            self.add(
                env,
                dotted,
                "must be the NAME of an environment variable (letters, digits, underscore), not the "
                "password itself (value not shown)",
                f"set {key} = {example} and export that variable with the password",
            )
            return None
        return value


def _type_name(value: Any) -> str:
    return {
        dict: "a table",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
    }.get(type(value), type(value).__name__)


_ENV_KEYS = (
    "description",
    "default_source",
    "default_backup",
    "script_ae",
    "sources",
    "backup_targets",
    "settings",
    "notifications",
)
_QR_KEYS = (
    "type",
    "aet",
    "ip",
    "port",
    "query_level",
    "query_keys",
    "transfer",
    "max_associations",
    "inventory",
    "relational",
    "max_find_results",
    "bulk_hours",
)
_MOSAIQ_KEYS = (
    "type",
    "db_server",
    "db_port",
    "db_database",
    "db_username",
    "db_password_env",
    "odbc_driver",
    "odbc_options",
    "staging_target_alias",
)
_TARGET_KEYS = ("type", "aet", "ip", "port", "rest_url", "rest_username", "rest_password_env")
_REST_KEYS = ("rest_url", "rest_username", "rest_password_env")
_SETTINGS_KEYS = (
    "max_uids_per_run",
    "timezone",
    "schedule",
    "lookback_days",
    "timeouts",
    "verification_fraction",
    "mosaiq_queries",
    "connectivity_schedule",
    "backfill_days_per_run",
    "staging_retention_days",
    "late_series_days",
    "sweep_days",
    "sweep_nights",
    "sweep_max_studies",
    "sweep_schedule",
)
_TIMEOUT_KEYS = ("acse", "dimse", "network", "connect")
# Attributes connect() derives from the source's own keys; setting them in odbc_options would conflict.
_MANAGED_ODBC = {
    "driver": "odbc_driver",
    "server": "db_server",
    "port": "db_port",
    "database": "db_database",
    "uid": "db_username",
    "pwd": "db_password_env",
    "dsn": "odbc_driver/db_server (DSNs are not used)",
}


def _choice(
    v: _Validator,
    env: str,
    path: str,
    table: Mapping[str, Any],
    key: str,
    choices: tuple[str, ...],
    default: str | None,
    what: str,
) -> str | None:
    dotted = f"{path}.{key}"
    if key not in table:
        if default is None:
            v.add(
                env,
                dotted,
                f"missing required key {key!r}",
                f"add {key} = one of {', '.join(map(repr, choices))}",
            )
        return default
    value = table[key]
    if value in choices:
        return value
    hint = ""
    if isinstance(value, str):
        folded = [c for c in choices if c.lower() == value.strip().lower().replace("_", "-")]
        close = folded or [c for c in [_close(value, choices, 0.5)] if c]
        if close:
            hint = f", did you mean {close[0]!r}?"
    shown = repr(value) if isinstance(value, str) else _type_name(value)
    v.add(
        env, dotted, f"unknown {what} {shown}{hint}", f"set {key} to one of {', '.join(map(repr, choices))}"
    )
    return None


def _parse_query_keys(v: _Validator, env: str, path: str, raw: Any) -> dict[str, str]:
    from pydicom.datadict import keyword_dict

    table = v.table(env, f"{path}.query_keys", raw, required=False, example='{ Modality = "CT" }')
    out: dict[str, str] = {}
    for keyword, match in (table or {}).items():
        dotted = f"{path}.query_keys.{keyword}"
        if keyword == "QueryRetrieveLevel":
            v.add(env, dotted, "QueryRetrieveLevel is set by query_level", "remove it and set query_level")
            continue
        if keyword not in keyword_dict:
            close = [c for c in [_close(keyword, keyword_dict, 0.7)] if c]
            hint = f", did you mean {close[0]!r}?" if close else ""
            v.add(
                env,
                dotted,
                f"{keyword!r} is not a DICOM keyword{hint}",
                "use the attribute keyword from PS3.6 (e.g. Modality, StationName)",
            )
            continue
        if not isinstance(match, str):
            v.add(
                env,
                dotted,
                f"match value must be a string, got {_type_name(match)}",
                f'quote it, e.g. {keyword} = "{match}"',
            )
            continue
        out[keyword] = match
    return out


def _parse_qr_source(v: _Validator, env: str, alias: str, path: str, raw: dict, kind: str) -> QRSource | None:
    v.unknown_keys(env, path, raw, _QR_KEYS, f"for a source of type {kind!r}")
    aet = v.aet(env, path, raw, f'"{alias[:16]}"')
    ip = v.host(env, path, raw, "ip", '"10.0.0.20"')
    port = v.port(env, path, raw, "port", required=True, example="104")
    level = _choice(v, env, path, raw, "query_level", QUERY_LEVELS, "IMAGE", "query_level")
    transfer = _choice(v, env, path, raw, "transfer", TRANSFERS, "c-move", "transfer")
    if kind == "aria" and transfer == "c-get":
        v.add(
            env,
            f"{path}.transfer",
            "ARIA sources are retrieved with C-MOVE only; 'c-get' is not supported",
            'set transfer = "c-move" (or remove the key) and register the backup target as a move '
            "destination in ARIA",
        )
        transfer = None
    keys = _parse_query_keys(v, env, path, raw.get("query_keys"))
    max_assoc = v.integer(
        env, path, raw, "max_associations", required=False, low=1, high=64, example="2", default=2
    )
    inventory = _choice(v, env, path, raw, "inventory", INVENTORY_MODES, "by-study", "inventory")
    relational = raw.get("relational", False)
    if not isinstance(relational, bool):
        v.add(
            env,
            f"{path}.relational",
            f"must be true or false, got {_type_name(relational)}",
            "set relational = true only if the source answers SERIES-level C-FINDs without a "
            "StudyInstanceUID (MIM does; ARIA does not)",
        )
        return None
    max_find = v.integer(
        env,
        path,
        raw,
        "max_find_results",
        required=False,
        low=1,
        high=10_000_000,
        example="1000",
        what="an integer >= 1 (the source's C-FIND match limit)",
    )
    if max_find is None and "max_find_results" in raw:
        return None
    bulk_hours = _parse_bulk_hours(v, env, path, raw)
    if None in (aet, ip, port, level, transfer, max_assoc, inventory, bulk_hours):
        return None
    return QRSource(
        alias,
        kind,  # type: ignore[arg-type]
        aet,  # type: ignore[arg-type]
        ip,  # type: ignore[arg-type]
        port,  # type: ignore[arg-type]
        level,  # type: ignore[arg-type]
        keys,
        transfer,  # type: ignore[arg-type]
        max_assoc,  # type: ignore[arg-type]
        inventory,  # type: ignore[arg-type]
        relational=relational,
        max_find_results=max_find,
        bulk_hours=bulk_hours,  # type: ignore[arg-type]
    )


def _parse_bulk_hours(v: _Validator, env: str, path: str, raw: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A source's bulk_hours: one window string or an array of them; () when unset (any time)."""
    if "bulk_hours" not in raw:
        return ()
    value = raw["bulk_hours"]
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        v.add(
            env,
            f"{path}.bulk_hours",
            f"must be an array of strings, got {_type_name(value)}",
            f"write it as {BULK_HOURS_EXAMPLE} (times in settings.timezone)",
        )
        return None
    try:
        parse_work_window(entries)
    except WorkWindowError as error:
        v.add(
            env,
            f"{path}.bulk_hours",
            str(error),
            f"write it as e.g. {BULK_HOURS_EXAMPLE} (times in settings.timezone), or remove it to allow "
            "backfills at any time",
        )
        return None
    return tuple(" ".join(e.split()) for e in entries)


def _parse_mosaiq_source(
    v: _Validator, env: str, alias: str, path: str, raw: dict, config_dir: Path
) -> MosaiqSource | None:
    v.unknown_keys(env, path, raw, _MOSAIQ_KEYS, "for a source of type 'mosaiq'")
    driver = v.string(env, path, raw, "odbc_driver", required=True, example='"FreeTDS"')
    sqlite = driver is not None and is_sqlite_driver(driver)
    server = v.host(env, path, raw, "db_server", '"mosaiq-sql.example.org"', required=not sqlite)
    port = v.port(env, path, raw, "db_port", required=False, example="1433")
    database = v.string(
        env,
        path,
        raw,
        "db_database",
        required=True,
        example='"/var/lib/mosaiq.sqlite"' if sqlite else '"MOSAIQ"',
    )
    if sqlite and database is not None and not Path(database).is_absolute():
        # Dagster starts processes in different working directories; anchor relative paths to the file.
        database = str((config_dir / database).resolve())
    username = v.string(env, path, raw, "db_username", required=True, example='"backup_ro"')
    password_env = v.env_var_name(
        env, path, raw, "db_password_env", f'"{env}_{alias}_PASSWORD"', required=True
    )
    options_raw = v.subtable(
        env, path, raw, "odbc_options", required=False, example='{ TDS_Version = "7.4" }'
    )
    options: dict[str, str] = {}
    for key, value in (options_raw or {}).items():
        dotted = f"{path}.odbc_options.{key}"
        if key.lower() in _MANAGED_ODBC:
            v.add(
                env,
                dotted,
                f"{key} is derived from the source's own keys",
                f"remove it from odbc_options and set {_MANAGED_ODBC[key.lower()]} instead",
            )
        elif not key or any(c in key for c in ";={} "):
            v.add(
                env, dotted, f"{key!r} is not a valid ODBC attribute name", "use the driver's attribute name"
            )
        elif isinstance(value, bool) or not isinstance(value, (str, int)):
            v.add(
                env,
                dotted,
                f"must be a string or integer, got {_type_name(value)}",
                f'write it as {key} = "..." as the driver documents it',
            )
        else:
            options[key] = str(value)
    staging = v.string(env, path, raw, "staging_target_alias", required=True, example='"MOSAIQ_STAGE"')
    if None in (driver, database, username, password_env, staging) or (server is None and not sqlite):
        return None
    return MosaiqSource(
        alias=alias,
        db_server=server or "",
        db_port=port,
        db_database=database,  # type: ignore[arg-type]
        db_username=username,  # type: ignore[arg-type]
        db_password_env=password_env,  # type: ignore[arg-type]
        odbc_driver=driver.strip().strip("{}").strip(),  # type: ignore[union-attr]
        odbc_options=options,
        staging_target_alias=staging,  # type: ignore[arg-type]
    )


def _parse_target(v: _Validator, env: str, alias: str, path: str, raw: dict) -> BackupTarget | None:
    kind = _choice(v, env, path, raw, "type", TARGET_TYPES, None, "backup target type")
    if kind is None:
        return None
    allowed = _TARGET_KEYS if kind == "orthanc" else tuple(k for k in _TARGET_KEYS if k not in _REST_KEYS)
    v.unknown_keys(env, path, raw, allowed, f"for a backup target of type {kind!r}")
    aet = v.aet(env, path, raw, f'"{alias[:16]}"')
    ip = v.host(env, path, raw, "ip", '"10.0.0.30"')
    port = v.port(env, path, raw, "port", required=True, example="4242")
    rest_url = rest_user = rest_env = None
    if kind == "orthanc":
        rest_url = v.string(env, path, raw, "rest_url", required=True, example='"http://10.0.0.30:8042"')
        if rest_url is not None:
            parts = urlsplit(rest_url)
            try:
                url_port_ok = parts.port is None or parts.port > 0
            except ValueError:
                url_port_ok = False
            if parts.username or parts.password:
                # Not echoed: the URL carries credentials.
                v.add(
                    env,
                    f"{path}.rest_url",
                    "must not contain a user name or password (value not shown)",
                    "remove them from the URL; set rest_username and name the password's environment "
                    "variable in rest_password_env",
                )
                rest_url = None
            elif parts.scheme not in ("http", "https") or not parts.hostname or not url_port_ok:
                v.add(
                    env,
                    f"{path}.rest_url",
                    f"{rest_url!r} is not an http(s) URL with a host",
                    'set it to Orthanc\'s REST base URL, e.g. rest_url = "http://10.0.0.30:8042"',
                )
                rest_url = None
            else:
                rest_url = rest_url.rstrip("/")
        rest_user = v.string(env, path, raw, "rest_username", required=False, example='"backup"')
        rest_env = v.env_var_name(
            env, path, raw, "rest_password_env", f'"{env}_{alias}_PASSWORD"', required=False
        )
        if ("rest_username" in raw) != ("rest_password_env" in raw):
            missing = "rest_password_env" if "rest_username" in raw else "rest_username"
            v.add(
                env,
                f"{path}.{missing}",
                "rest_username and rest_password_env go together",
                f"add {missing} (or remove the other one if Orthanc's REST API has no authentication)",
            )
    if None in (aet, ip, port) or (kind == "orthanc" and rest_url is None):
        return None
    return BackupTarget(alias, kind, aet, ip, port, rest_url, rest_user, rest_env)  # type: ignore[arg-type]


def _parse_settings(v: _Validator, env: str, raw: Any) -> Settings:
    path = f"{env}.settings"
    table = v.table(env, path, raw, required=False, example="max_uids_per_run = 5000")
    if table is None:
        return Settings()
    v.unknown_keys(env, path, table, _SETTINGS_KEYS)
    d = Settings()
    max_uids = v.integer(
        env,
        path,
        table,
        "max_uids_per_run",
        required=False,
        low=1,
        high=10_000_000,
        example="5000",
        default=d.max_uids_per_run,
        what="an integer >= 1",
    )
    lookback = v.integer(
        env,
        path,
        table,
        "lookback_days",
        required=False,
        low=0,
        high=3650,
        example="3",
        default=d.lookback_days,
    )
    days_per_run = v.integer(
        env,
        path,
        table,
        "backfill_days_per_run",
        required=False,
        low=1,
        high=366,
        example="7",
        default=d.backfill_days_per_run,
    )
    retention = v.integer(
        env,
        path,
        table,
        "staging_retention_days",
        required=False,
        low=0,
        high=3650,
        example="7",
        default=d.staging_retention_days,
    )
    late_days, sweep_days, sweep_nights, sweep_max = (
        v.integer(
            env, path, table, key, required=False, low=low, high=high, example=str(default), default=default
        )
        for key, low, high, default in (
            ("late_series_days", 0, 3650, d.late_series_days),
            ("sweep_days", 0, 3650, d.sweep_days),
            ("sweep_nights", 1, 366, d.sweep_nights),
            ("sweep_max_studies", 1, 1_000_000, d.sweep_max_studies),
        )
    )
    timezone = d.timezone
    if "timezone" in table:
        tz = table["timezone"]
        try:
            if not isinstance(tz, str) or not tz:
                raise ValueError
            zoneinfo.ZoneInfo(tz)
            timezone = tz
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            shown = repr(tz) if isinstance(tz, str) else _type_name(tz)
            close = difflib.get_close_matches(
                str(tz), sorted(zoneinfo.available_timezones()), n=1, cutoff=0.6
            )
            hint = f", did you mean {close[0]!r}?" if close else ""
            v.add(
                env,
                f"{path}.timezone",
                f"unknown time zone {shown}{hint}",
                'use an IANA time zone name, e.g. timezone = "America/Los_Angeles"',
            )
    crons = {}
    for key, default in (
        ("schedule", d.schedule),
        ("connectivity_schedule", d.connectivity_schedule),
        ("sweep_schedule", d.sweep_schedule),
    ):
        crons[key] = default
        if key in table:
            expr = table[key]
            problem = (
                _cron_problem(expr) if isinstance(expr, str) else f"must be a string, got {_type_name(expr)}"
            )
            if problem:
                v.add(
                    env,
                    f"{path}.{key}",
                    problem,
                    f'write 5 cron fields (minute hour day month weekday), e.g. {key} = "{default}"',
                )
            else:
                crons[key] = expr
    fraction = v.number(
        env,
        path,
        table,
        "verification_fraction",
        low=0.0,
        high=1.0,
        example="0.1",
        default=d.verification_fraction,
    )
    timeouts = Timeouts()
    t_raw = v.subtable(env, path, table, "timeouts", required=False, example="acse = 30")
    if t_raw is not None:
        v.unknown_keys(env, f"{path}.timeouts", t_raw, _TIMEOUT_KEYS)
        values = {
            k: v.number(
                env,
                f"{path}.timeouts",
                t_raw,
                k,
                low=0.0,
                high=86400.0,
                low_inclusive=False,
                default=getattr(timeouts, k),
                example=str(int(getattr(timeouts, k))),
            )
            for k in _TIMEOUT_KEYS
        }
        timeouts = Timeouts(**values)
    queries: dict[str, str] = {}
    q_raw = v.subtable(
        env, path, table, "mosaiq_queries", required=False, example='deliveries = "SELECT ..."'
    )
    for name, sql in (q_raw or {}).items():
        if not _NAME_RE.match(name):
            v.add(
                env,
                f"{path}.mosaiq_queries.{name}",
                "query names are letters, digits and underscores",
                "rename the query to the name the Mosaiq module documents",
            )
        elif not isinstance(sql, str) or not sql.strip():
            v.add(
                env,
                f"{path}.mosaiq_queries.{name}",
                "must be a non-empty SQL string",
                'write it as a TOML string, e.g. name = """SELECT ..."""',
            )
        else:
            try:
                resolve_queries({name: sql})
            except QueryOverrideError as error:
                v.add(
                    env,
                    f"{path}.mosaiq_queries.{name}",
                    str(error),
                    "start from the default query in dicom_backup_dagster/mosaiq/queries.py and keep its "
                    "parameters (start, end)",
                )
            else:
                queries[name] = sql
    return Settings(
        max_uids,
        timezone,
        crons["schedule"],
        lookback,
        timeouts,
        fraction,  # type: ignore[arg-type]
        queries,
        crons["connectivity_schedule"],
        days_per_run,
        staging_retention_days=retention,  # type: ignore[arg-type]
        late_series_days=late_days,  # type: ignore[arg-type]
        sweep_days=sweep_days,  # type: ignore[arg-type]
        sweep_nights=sweep_nights,  # type: ignore[arg-type]
        sweep_max_studies=sweep_max,  # type: ignore[arg-type]
        sweep_schedule=crons["sweep_schedule"],
    )


# --------------------------------------------------------------------------------------------------------
# [<ENV>.notifications] (notify/settings.py holds the model; defs/alerts.py uses it)

_NOTIFY_KEYS = ("dagster_ui_url", "runbook_base_url", "timeout_s", "routes", "slack", "pagerduty", "email")
_SLACK_KEYS = ("webhook_url_env", "token_env", "channel", "base_url")
_PAGERDUTY_KEYS = ("routing_key_env", "events_url")
_EMAIL_KEYS = ("smtp_host", "smtp_port", "starttls", "from", "to", "username", "password_env")
_EMAIL_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")


def _http_url(
    v: _Validator, env: str, path: str, table: Mapping[str, Any], key: str, example: str
) -> str | None:
    """An optional http(s) URL with a host and without credentials (those go in environment variables)."""
    value = v.string(env, path, table, key, required=False, example=example)
    if value is None:
        return None
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.username or parts.password:
        v.add(
            env,
            f"{path}.{key}",
            "must not contain a user name or password (value not shown)",
            "remove them from the URL; secrets are named by the *_env keys",
        )
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        v.add(
            env,
            f"{path}.{key}",
            f"{value!r} is not an http(s) URL with a host",
            f"write it as {key} = {example}",
        )
        return None
    return value


def _parse_notifications(v: _Validator, env: str, raw: Any) -> NotificationSettings:
    path = f"{env}.notifications"
    table = v.table(
        env, path, raw, required=False, example='dagster_ui_url = "http://dagster.example.org:3000"'
    )
    if table is None:
        return NotificationSettings()
    v.unknown_keys(env, path, table, _NOTIFY_KEYS)
    d = NotificationSettings()
    ui_url = _http_url(v, env, path, table, "dagster_ui_url", '"http://dagster.example.org:3000"')
    runbooks = v.string(
        env,
        path,
        table,
        "runbook_base_url",
        required=False,
        example='"https://git.example.org/dicom-backup/-/blob/main/docs/runbooks"',
        default=d.runbook_base_url,
    )
    timeout = v.number(
        env,
        path,
        table,
        "timeout_s",
        low=0.0,
        high=300.0,
        low_inclusive=False,
        default=d.timeout_s,
        example="10",
    )

    slack = None
    s_raw = v.subtable(
        env, path, table, "slack", required=False, example='webhook_url_env = "UCLA_SLACK_WEBHOOK_URL"'
    )
    if s_raw is not None:
        s_path = f"{path}.slack"
        v.unknown_keys(env, s_path, s_raw, _SLACK_KEYS)
        webhook = v.env_var_name(
            env, s_path, s_raw, "webhook_url_env", f'"{env}_SLACK_WEBHOOK_URL"', required=False
        )
        token = v.env_var_name(env, s_path, s_raw, "token_env", f'"{env}_SLACK_BOT_TOKEN"', required=False)
        channel = v.string(env, s_path, s_raw, "channel", required=False, example='"#radonc-backup"')
        base_url = _http_url(v, env, s_path, s_raw, "base_url", '"https://slack.com/api/"')
        if "webhook_url_env" in s_raw and "token_env" in s_raw:
            v.add(
                env,
                s_path,
                "both webhook_url_env and token_env are set",
                "choose one: an incoming webhook (webhook_url_env) or a bot token (token_env + channel)",
            )
        elif "webhook_url_env" not in s_raw and not ("token_env" in s_raw and "channel" in s_raw):
            v.add(
                env,
                s_path,
                "no way to post: set webhook_url_env, or token_env and channel",
                f'add webhook_url_env = "{env}_SLACK_WEBHOOK_URL" and export that variable with the '
                "incoming webhook URL (it is a secret)",
            )
        elif webhook or (token and channel):
            slack = SlackSettings(webhook, token, channel, base_url or SlackSettings.base_url)

    pagerduty = None
    p_raw = v.subtable(
        env,
        path,
        table,
        "pagerduty",
        required=False,
        example='routing_key_env = "UCLA_PAGERDUTY_ROUTING_KEY"',
    )
    if p_raw is not None:
        p_path = f"{path}.pagerduty"
        v.unknown_keys(env, p_path, p_raw, _PAGERDUTY_KEYS)
        key_env = v.env_var_name(
            env, p_path, p_raw, "routing_key_env", f'"{env}_PAGERDUTY_ROUTING_KEY"', required=True
        )
        events_url = _http_url(
            v, env, p_path, p_raw, "events_url", '"https://events.pagerduty.com/v2/enqueue"'
        )
        if key_env:
            pagerduty = PagerDutySettings(key_env, events_url or PagerDutySettings.events_url)

    email = None
    e_raw = v.subtable(env, path, table, "email", required=False, example='smtp_host = "smtp.example.org"')
    if e_raw is not None:
        e_path = f"{path}.email"
        v.unknown_keys(env, e_path, e_raw, _EMAIL_KEYS)
        host = v.host(env, e_path, e_raw, "smtp_host", '"smtp.example.org"')
        port = v.port(env, e_path, e_raw, "smtp_port", required=False, example="587") or 587
        starttls = e_raw.get("starttls", True)
        if not isinstance(starttls, bool):
            v.add(
                env,
                f"{e_path}.starttls",
                f"must be true or false, got {_type_name(starttls)}",
                "write starttls = true",
            )
            starttls = True
        sender = v.string(env, e_path, e_raw, "from", required=True, example='"dicom-backup@example.org"')
        if sender is not None and not _EMAIL_RE.match(sender.strip()):
            v.add(
                env,
                f"{e_path}.from",
                f"{sender!r} is not an email address",
                'write from = "dicom-backup@example.org"',
            )
            sender = None
        to = e_raw.get("to")
        recipients: tuple[str, ...] = ()
        if to is None:
            v.add(env, f"{e_path}.to", "missing required key 'to'", 'add to = ["radonc-it@example.org"]')
        elif (
            not isinstance(to, list)
            or not to
            or not all(isinstance(a, str) and _EMAIL_RE.match(a.strip()) for a in to)
        ):
            v.add(
                env,
                f"{e_path}.to",
                "must be a non-empty array of email addresses",
                'write to = ["radonc-it@example.org", "physics@example.org"]',
            )
        else:
            recipients = tuple(a.strip() for a in to)
        username = v.string(env, e_path, e_raw, "username", required=False, example='"dicom-backup"')
        password_env = v.env_var_name(
            env, e_path, e_raw, "password_env", f'"{env}_SMTP_PASSWORD"', required=False
        )
        if ("username" in e_raw) != ("password_env" in e_raw):
            missing = "password_env" if "username" in e_raw else "username"
            v.add(
                env,
                f"{e_path}.{missing}",
                "username and password_env go together",
                f"add {missing} (or remove the other one if the SMTP relay needs no authentication)",
            )
        if host and sender and recipients:
            email = EmailSettings(host, sender.strip(), recipients, port, starttls, username, password_env)

    routes = dict(d.routes)
    r_raw = v.subtable(
        env, path, table, "routes", required=False, example='critical = ["pagerduty", "slack"]'
    )
    configured = {"slack": s_raw is not None, "pagerduty": p_raw is not None, "email": e_raw is not None}
    for severity, channels in (r_raw or {}).items():
        dotted = f"{path}.routes.{severity}"
        if severity not in SEVERITIES:
            suffix, _ = _suggest(severity, SEVERITIES)
            v.add(
                env, dotted, f"unknown severity {severity!r}{suffix}", f"use one of: {', '.join(SEVERITIES)}"
            )
            continue
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            v.add(
                env,
                dotted,
                f"must be an array of channel names, got {_type_name(channels)}",
                f'write {severity} = ["slack"]',
            )
            continue
        good = True
        for channel in channels:
            if channel not in CHANNELS:
                close = [c for c in [_close(channel, CHANNELS, 0.5)] if c]
                hint = f", did you mean {close[0]!r}?" if close else ""
                v.add(
                    env,
                    dotted,
                    f"unknown channel {channel!r}{hint}",
                    f"use channels from: {', '.join(CHANNELS)}",
                )
                good = False
            elif not configured[channel]:
                v.add(
                    env,
                    dotted,
                    f"routes {severity} alerts to {channel!r} but [{path}.{channel}] is not configured",
                    f"add a [{path}.{channel}] table or remove {channel!r} from this route",
                )
                good = False
        if good:
            routes[severity] = tuple(dict.fromkeys(channels))  # type: ignore[assignment]
    return NotificationSettings(
        dagster_ui_url=ui_url.rstrip("/") if ui_url else None,
        runbook_base_url=(runbooks or d.runbook_base_url).rstrip("/"),
        timeout_s=timeout,
        routes=routes,  # type: ignore[arg-type]
        slack=slack,
        pagerduty=pagerduty,
        email=email,
    )


def _check_aliases(v: _Validator, env: str, section: str, table: Mapping[str, Any]) -> None:
    for alias in table:
        if not _NAME_RE.match(alias):
            v.add(
                env,
                f"{env}.{section}.{alias}",
                f"alias {alias!r} is not a valid name",
                "use letters, digits and underscores, starting with a letter (aliases become Dagster "
                "asset, job and pool names)",
            )


def _parse_aliases(
    v: _Validator,
    env: str,
    raw: dict,
    section: str,
    what: str,
    example_alias: str,
    example_type: str,
    parse: Callable[[str, str, dict], _T | None],
) -> tuple[dict | None, dict[str, _T]]:
    """Check the [env.<section>] table of aliases (sources or backup targets) and parse each entry.

    Returns the table as written (None if it is missing or not a table), for the cross-reference checks, and
    alias -> parse(alias, dotted path, entry) for every entry that is a table and parses.
    """
    section_raw = v.subtable(
        env,
        env,
        raw,
        section,
        required=True,
        example=f'[{env}.{section}.{example_alias}] type = "{example_type}" ...',
    )
    if section_raw is not None and not section_raw:
        v.add(
            env, f"{env}.{section}", f"no {what} defined", f"add at least one [{env}.{section}.<ALIAS>] table"
        )
    _check_aliases(v, env, section, section_raw or {})
    parsed: dict[str, _T] = {}
    for alias, item in (section_raw or {}).items():
        path = f"{env}.{section}.{alias}"
        table = v.table(env, path, item, required=True, example=f'type = "{example_type}"')
        if table is None:
            continue
        value = parse(alias, path, table)
        if value is not None:
            parsed[alias] = value
    return section_raw, parsed


def _parse_environment(v: _Validator, env: str, raw: dict, config_dir: Path) -> EnvironmentConfig | None:
    start = len(v.issues)
    v.unknown_keys(env, env, raw, _ENV_KEYS, "in an environment")
    description = v.string(env, env, raw, "description", required=False, example='"..."', default="") or ""
    default_source = v.string(env, env, raw, "default_source", required=True, example='"ARIA_MAIN"')
    default_backup = v.string(env, env, raw, "default_backup", required=True, example='"ORTHANC_MAIN"')

    script_ae: ScriptAE | None = None
    s_raw = v.subtable(env, env, raw, "script_ae", required=True, example='aet = "DICOM_BACKUP"')
    if s_raw is not None:
        v.unknown_keys(env, f"{env}.script_ae", s_raw, ("aet", "port"))
        aet = v.aet(env, f"{env}.script_ae", s_raw, '"DICOM_BACKUP"')
        port = v.port(env, f"{env}.script_ae", s_raw, "port", required=False, example="11113")
        if aet is not None:
            script_ae = ScriptAE(aet, port)

    def parse_source(alias: str, path: str, table: dict) -> Source | None:
        kind = _choice(v, env, path, table, "type", SOURCE_TYPES, None, "source type")
        if kind is None:
            return None
        if kind == "mosaiq":
            return _parse_mosaiq_source(v, env, alias, path, table, config_dir)
        return _parse_qr_source(v, env, alias, path, table, kind)

    def parse_target(alias: str, path: str, table: dict) -> BackupTarget | None:
        return _parse_target(v, env, alias, path, table)

    src_raw, sources = _parse_aliases(v, env, raw, "sources", "sources", "ARIA_MAIN", "aria", parse_source)
    tgt_raw, targets = _parse_aliases(
        v, env, raw, "backup_targets", "backup targets", "ORTHANC_MAIN", "orthanc", parse_target
    )

    settings = _parse_settings(v, env, raw.get("settings"))
    notifications = _parse_notifications(v, env, raw.get("notifications"))

    # Cross-references. Checked against the aliases written in the file (not only the valid ones) so a
    # broken source table does not also produce a misleading "unknown alias" error.
    source_names = list(src_raw or {})
    target_names = list(tgt_raw or {})
    for alias in sorted(set(source_names) & set(target_names)):
        v.add(
            env,
            f"{env}.backup_targets.{alias}",
            f"alias {alias!r} is used both as a source and as a target",
            "give the target a different alias (peers are looked up by alias)",
        )
    if default_source is not None and default_source not in source_names:
        _unknown_alias(v, env, f"{env}.default_source", default_source, source_names, "source")
    raw_sources = {a: t for a, t in (src_raw or {}).items() if isinstance(t, dict)}
    raw_targets = {a: t for a, t in (tgt_raw or {}).items() if isinstance(t, dict)}
    main_raw = raw_targets.get(default_backup) if isinstance(default_backup, str) else None
    if default_backup is not None and default_backup not in target_names:
        _unknown_alias(v, env, f"{env}.default_backup", default_backup, target_names, "backup target")
    elif main_raw is not None and main_raw.get("type") in TARGET_TYPES and main_raw["type"] != "orthanc":
        v.add(
            env,
            f"{env}.default_backup",
            f"the main backup target {default_backup!r} is of type {main_raw['type']!r}",
            "point default_backup at an orthanc target (verification and restore use Orthanc's REST API)",
        )
    for alias, table in raw_sources.items():
        staging = table.get("staging_target_alias")
        if table.get("type") != "mosaiq" or not isinstance(staging, str) or not staging.strip():
            continue
        key = f"{env}.sources.{alias}.staging_target_alias"
        staging_raw = raw_targets.get(staging)
        if staging not in target_names:
            _unknown_alias(v, env, key, staging, target_names, "backup target")
        elif staging == default_backup:
            v.add(
                env,
                key,
                f"the staging target {staging!r} is the main backup target (default_backup)",
                "point staging_target_alias at a separate staging SCP: RT records are staged there, "
                "moved to main, verified, and only then deleted from staging",
            )
        elif (
            staging_raw is not None
            and main_raw is not None
            and "ip" in staging_raw
            and "port" in staging_raw
            and (staging_raw.get("ip"), staging_raw.get("port")) == (main_raw.get("ip"), main_raw.get("port"))
        ):
            v.add(
                env,
                key,
                f"the staging target {staging!r} has the same ip:port as the main backup target "
                f"{default_backup!r}",
                "staging must be a separate SCP; give it its own ip/port",
            )

    aets: list[tuple[str, Any]] = [(f"{env}.script_ae.aet", (s_raw or {}).get("aet"))]
    aets += [
        (f"{env}.sources.{a}.aet", t.get("aet"))
        for a, t in raw_sources.items()
        if t.get("type") in QR_SOURCE_TYPES
    ]
    aets += [(f"{env}.backup_targets.{a}.aet", t.get("aet")) for a, t in raw_targets.items()]
    _check_duplicate_aets(v, env, aets)

    if len(v.issues) > start or script_ae is None:
        return None
    return EnvironmentConfig(
        env,
        description,
        default_source,
        default_backup,
        script_ae,  # type: ignore[arg-type]
        sources,
        targets,
        settings,
        notifications=notifications,
    )


def _unknown_alias(v: _Validator, env: str, key: str, alias: str, known: list[str], what: str) -> None:
    close = [c for c in [_close(alias, known)] if c]
    hint = f", did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(sorted(known)) or "(none defined)"
    v.add(
        env, key, f"{alias!r} is not a {what} alias in this environment{hint}", f"set it to one of: {listing}"
    )


def _check_duplicate_aets(v: _Validator, env: str, aets: list[tuple[str, Any]]) -> None:
    """Every AE title in an environment must be unique (case-insensitive).

    C-MOVE names its destination by AE title alone (PS3.4 C.4.2) and the sources map that title to
    one host:port, and Orthanc matches calling AE titles case-insensitively by default, so two aliases
    with one title leave at least one of them unreachable or ambiguous. The only "legitimate" sharing would
    be the same AE registered twice (same ip:port), e.g. the main Orthanc also listed as a source; that
    would back the archive up into itself, so it is rejected too.
    """
    seen: dict[str, str] = {}
    entries = [
        (key, aet.strip(" ")) for key, aet in aets if isinstance(aet, str) and not ae_title_problem(aet)
    ]
    for key, aet in entries:
        folded = aet.upper()
        if folded in seen:
            v.add(
                env,
                key,
                f"AE title {aet!r} is already used by {seen[folded]}",
                "give every peer and the script AE its own AE title (C-MOVE destinations are resolved by "
                "AE title alone)",
            )
        else:
            seen[folded] = key


def _secret(v: _Validator, env: str, key: str, var: str) -> Secret | None:
    value = os.environ.get(var)
    if value is None:
        v.add(
            env,
            key,
            f"environment variable {var} is not set",
            f"export {var}=<password> in the environment of the Dagster code server, daemon and run "
            "workers (e.g. the systemd unit's EnvironmentFile or .env)",
        )
        return None
    if not value:
        v.add(env, key, f"environment variable {var} is empty", f"set {var} to the password")
        return None
    return Secret(var, value)


def _resolve_secrets(v: _Validator, cfg: EnvironmentConfig) -> EnvironmentConfig:
    env = cfg.name
    sources: dict[str, Source] = {}
    for alias, src in cfg.sources.items():
        if isinstance(src, MosaiqSource):
            key = f"{env}.sources.{alias}.db_password_env"
            src = replace(src, password_secret=_secret(v, env, key, src.db_password_env))
        sources[alias] = src
    targets: dict[str, BackupTarget] = {}
    for alias, tgt in cfg.backup_targets.items():
        if tgt.rest_password_env:
            key = f"{env}.backup_targets.{alias}.rest_password_env"
            tgt = replace(tgt, rest_password_secret=_secret(v, env, key, tgt.rest_password_env))
        targets[alias] = tgt
    return replace(cfg, sources=sources, backup_targets=targets)


def _check_raw_secrets(v: _Validator, env: str, raw: Mapping[str, Any]) -> None:
    """When the selected environment has structural errors, still report its unset variables."""
    for section, key in (("sources", "db_password_env"), ("backup_targets", "rest_password_env")):
        tables = raw.get(section)
        for alias, table in tables.items() if isinstance(tables, dict) else ():
            var = table.get(key) if isinstance(table, dict) else None
            if isinstance(var, str) and _ENV_VAR_RE.match(var):
                _secret(v, env, f"{env}.{section}.{alias}.{key}", var)


def _select_environment(v: _Validator, data: dict, names: list[str], requested: str | None) -> str | None:
    default = data.get("default_environment")
    if default is not None and (not isinstance(default, str) or default not in names):
        shown = repr(default) if isinstance(default, str) else _type_name(default)
        v.add(
            None,
            "default_environment",
            f"{shown} is not an environment in this file",
            f"set it to one of: {', '.join(names) or '(none defined)'}",
        )
    if requested is not None:
        origin = "requested"
    elif os.environ.get(ENVIRONMENT_ENV_VAR):
        requested, origin = os.environ[ENVIRONMENT_ENV_VAR], f"${ENVIRONMENT_ENV_VAR}"
    elif isinstance(default, str) and default in names:
        return default
    elif len(names) == 1:
        return names[0]
    else:
        if names:
            v.add(
                None,
                "default_environment",
                f"no environment selected and the file defines {len(names)}",
                f"set {ENVIRONMENT_ENV_VAR} to one of {', '.join(names)}, pass --environment, or add "
                'default_environment = "..." at the top of the file',
            )
        return None
    if requested not in names:
        close = [c for c in [_close(requested, names)] if c]
        hint = f", did you mean {close[0]!r}?" if close else ""
        v.add(
            requested,
            "(environment)",
            f"unknown environment {requested!r} ({origin}){hint}",
            f"use one of the environments defined in the file: {', '.join(names) or '(none defined)'}",
        )
        return None
    return requested


def load_config(path: str | os.PathLike[str] | None = None, environment: str | None = None) -> SiteConfig:
    """Load and validate the site configuration; raise ConfigError listing every problem found.

    path defaults to ``$DICOM_BACKUP_CONFIG``; environment to ``$DICOM_BACKUP_ENVIRONMENT``, then the
    file's ``default_environment``, then the only environment if there is just one. Every environment is
    checked structurally; environment variables (secrets) are read only for the selected one.
    """
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or None
        if path is None:
            raise ConfigError(
                [
                    ConfigIssue(
                        "(no file)",
                        environment,
                        CONFIG_ENV_VAR,
                        "no configuration file given",
                        f"set {CONFIG_ENV_VAR}=/path/to/environments.toml or pass the path "
                        "(CLI: --config PATH); config/environments.example.toml is a template",
                    )
                ]
            )
    file = Path(path).expanduser().absolute()
    v = _Validator(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        v.add(
            environment,
            "(file)",
            "file not found",
            f"check the path (from {CONFIG_ENV_VAR} or --config); copy config/environments.example.toml "
            "to start a new one",
        )
        raise ConfigError(v.issues) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        v.add(
            environment,
            "(file)",
            f"cannot read the file ({type(exc).__name__})",
            "point to a readable UTF-8 TOML file",
        )
        raise ConfigError(v.issues) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = f"line {where.group(1)}, column {where.group(2)}" if where else "an unknown line"
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "invalid TOML"
        v.add(
            environment,
            f"(TOML syntax, {line})",
            f"TOML syntax error at {line}: {message}",
            f"fix the TOML at {line} (https://toml.io); strings need double quotes, tables [NAME.section]",
        )
        raise ConfigError(v.issues) from None

    names: list[str] = []
    for key, value in data.items():
        if key == "default_environment":
            continue
        if isinstance(value, dict):
            names.append(key)
        else:
            suffix, _ = _suggest(key, ["default_environment"])
            v.add(
                None,
                key,
                f"unknown top-level key {key!r}{suffix}",
                "the top level holds only default_environment and one [ENVIRONMENT] table per site",
            )
    if not names:
        v.add(None, "(file)", "no environments defined", "add at least one [ENVIRONMENT] table, e.g. [UCLA]")
    for name in names:
        if not _NAME_RE.match(name):
            v.add(
                name,
                name,
                f"environment name {name!r} is not a valid name",
                "use letters, digits and underscores, starting with a letter",
            )
    selected = _select_environment(v, data, names, environment)

    parsed: dict[str, EnvironmentConfig | None] = {
        name: _parse_environment(v, name, data[name], file.parent) for name in names
    }
    result = parsed.get(selected) if selected else None
    if result is not None:
        result = _resolve_secrets(v, result)
    elif selected in parsed:
        _check_raw_secrets(v, selected, data[selected])
    if v.issues or result is None:
        raise ConfigError(
            v.issues
            or [ConfigIssue(str(file), selected, "(file)", "invalid configuration", "see the errors above")]
        )
    return SiteConfig(file, result, tuple(names))


# --------------------------------------------------------------------------------------------------------
# CLI


def _summary(site: SiteConfig) -> list[str]:
    env = site.environment
    s = env.settings
    others = [n for n in site.environment_names if n != env.name]
    lines = [
        f"config: {site.path}",
        f"environment: {env.name}"
        + (f" ({env.description})" if env.description else "")
        + (f"; also defined: {', '.join(others)}" if others else ""),
        f"script AE: {env.script_ae.aet}"
        + (f" listening on port {env.script_ae.port}" if env.script_ae.port else " (no listening port)"),
        "sources:",
    ]
    for alias, src in env.sources.items():
        mark = " (default)" if alias == env.default_source else ""
        if isinstance(src, QRSource):
            lines.append(
                f"  {alias}{mark}: {src.type} {src.peer} query_level={src.query_level} "
                f"transfer={src.transfer} max_associations={src.max_associations}"
                + (" relational" if src.relational else "")
                + (f" max_find_results={src.max_find_results}" if src.max_find_results else "")
                + (f" query_keys={sorted(src.query_keys)}" if src.query_keys else "")
                + (
                    f"; backfills, sweeps and manual runs only {src.bulk_window(s.timezone).describe()}"
                    if src.bulk_hours
                    else ""
                )
            )
        else:
            where = (
                src.db_database
                if src.is_sqlite
                else (f"{src.db_server}{':' + str(src.db_port) if src.db_port else ''}/{src.db_database}")
            )
            lines.append(
                f"  {alias}{mark}: mosaiq via ODBC driver {src.odbc_driver!r} {where} as "
                f"{src.db_username}, password from ${src.db_password_env}; staging -> "
                f"{src.staging_target_alias}"
            )
    lines.append("backup targets:")
    for alias, tgt in env.backup_targets.items():
        mark = " (main)" if alias == env.default_backup else ""
        rest = ""
        if tgt.rest_url:
            rest = f" REST {tgt.rest_url}" + (
                f" as {tgt.rest_username}, password from ${tgt.rest_password_env}"
                if tgt.rest_username
                else ""
            )
        lines.append(f"  {alias}{mark}: {tgt.type} {tgt.peer}{rest}")
    lines.append(
        f"settings: schedule {s.schedule!r} ({s.timezone}), connectivity {s.connectivity_schedule!r}, "
        f"lookback_days={s.lookback_days}, max_uids_per_run={s.max_uids_per_run}, "
        f"backfill_days_per_run={s.backfill_days_per_run}, "
        f"staging_retention_days={s.staging_retention_days}, late_series_days={s.late_series_days}, "
        f"sweep: {s.sweep_days} days within {s.sweep_nights} nights, at most {s.sweep_max_studies} "
        f"studies a night, {s.sweep_schedule!r}, "
        f"verification_fraction={s.verification_fraction}, timeouts acse={s.timeouts.acse} "
        f"dimse={s.timeouts.dimse} network={s.timeouts.network} connect={s.timeouts.connect}"
        + (f", mosaiq_queries={sorted(s.mosaiq_queries)}" if s.mosaiq_queries else "")
    )
    n = env.notifications
    lines.append(
        "notifications: "
        + (
            ", ".join(f"{sev} -> {'+'.join(n.routes.get(sev, ())) or 'nobody'}" for sev in n.routes)
            + f" (configured: {', '.join(n.configured_channels)}; Dagster UI {n.dagster_ui_url or 'not set'})"
            if n.enabled
            else "none configured (alerts are only logged)"
        )
    )
    return lines


def _warnings(site: SiteConfig) -> list[str]:
    # Notification secrets are read at send time, so a missing one fails that channel, not the code
    # location: the check reports it here instead of refusing the file.
    out: list[str] = [
        f"warning: {site.environment.name}.{key}: environment variable {var} is not set; that channel "
        "will fail until it is exported"
        for key, var in site.environment.notifications.env_vars().items()
        if not os.environ.get(var)
    ]
    out.extend(_bulk_hours_warnings(site.environment))
    mosaiq = site.environment.mosaiq_sources
    if mosaiq:
        try:
            import pyodbc

            installed = pyodbc.drivers()
        except Exception as exc:  # the check must still report the configuration itself
            return [f"warning: cannot list ODBC drivers ({type(exc).__name__})"]
        for alias, src in mosaiq.items():
            if src.odbc_driver not in installed:
                out.append(
                    f"warning: {site.environment.name}.sources.{alias}.odbc_driver: ODBC driver "
                    f"{src.odbc_driver!r} is not installed here (installed: {', '.join(installed) or 'none'})"
                )
    return out


def _cron_values(part: str, index: int) -> set[int]:
    """The values one field of a cron expression (already checked by _cron_problem) matches."""
    _label, low, high = _CRON_FIELDS[index]
    names = _CRON_NAMES.get(index, {})

    def number(token: str) -> int:
        return int(token) if token.isdigit() else names[token.lower()]

    out: set[int] = set()
    for item in part.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            first, last = low, high
        else:
            a, dash, b = base.partition("-")
            first = number(a)
            last = number(b) if dash else (high if step else first)  # "5/15": from 5 every 15
        out.update(range(first, last + 1, int(step or 1)))
    return out


def _bulk_hours_warnings(env: EnvironmentConfig) -> list[str]:
    """Nightly runs are never paused, but a paused backfill step keeps its slot in the source's pool: a
    nightly tick outside bulk_hours may then wait for the window like the backfill does."""
    minutes, hours, _dom, _month, weekdays = env.settings.schedule.split()
    cron_days = {d % 7 for d in _cron_values(weekdays, 4)}  # cron: 0 and 7 are Sunday
    out = []
    for alias, src in env.qr_sources.items():
        if not src.bulk_hours:
            continue
        window = src.bulk_window(env.settings.timezone)
        monday = dt.datetime(2026, 1, 5, tzinfo=window.tzinfo)  # a week without DST changes (north)
        outside = next(
            (
                tick
                for day in range(7)
                if (day + 1) % 7 in cron_days
                for hour in sorted(_cron_values(hours, 1))
                for minute in sorted(_cron_values(minutes, 0))
                if not window.allows(tick := monday + dt.timedelta(days=day, hours=hour, minutes=minute))
            ),
            None,
        )
        if outside is not None:
            out.append(
                f"warning: {env.name}.sources.{alias}.bulk_hours: the nightly schedule "
                f"{env.settings.schedule!r} ({env.settings.timezone}) fires outside {alias}'s bulk hours "
                f"(e.g. {outside:%a %H:%M}); nightly runs are never paused, but backfill or manual runs "
                f"paused then hold {alias}'s pool slots and can delay the nightly run until the window "
                "opens: move settings.schedule into the window or widen bulk_hours"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dicom_backup_dagster.config",
        description="Validate the DICOM backup site configuration.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate the file and print a summary (never prints secrets)")
    check.add_argument("--config", help=f"path of the TOML file (default: ${CONFIG_ENV_VAR})")
    check.add_argument(
        "--environment",
        help=f"environment to check (default: ${ENVIRONMENT_ENV_VAR}, then the file's default_environment)",
    )
    args = parser.parse_args(argv)
    try:
        site = load_config(args.config, args.environment)
    except ConfigError as exc:
        print(f"configuration INVALID:\n{exc}", file=sys.stderr)
        return 2
    for line in _summary(site):
        print(line)
    for line in _warnings(site):
        print(line)
    print(f"configuration OK: {site.path} environment {site.environment.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
