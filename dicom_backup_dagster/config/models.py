"""The frozen model of one environment (site), as pydantic dataclasses. ``check(...)`` runs only with a
validation context (load_config's), raising a "config" error whose ``<ENV>``, ``<ALIAS>`` and ``<EXAMPLE>``
the loader fills in; pydantic's own errors get their messages in the loader."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from dicom_backup_dagster.backup.cron import cron_fields
from dicom_backup_dagster.backup.hours import EXAMPLE as BULK_HOURS_EXAMPLE
from dicom_backup_dagster.backup.hours import WorkWindow, WorkWindowError, parse_work_window
from dicom_backup_dagster.dicom.network import Peer, Timeouts, ae_title_problem
from dicom_backup_dagster.mosaiq.connection import MANAGED_ATTRIBUTES, MosaiqConnection, is_sqlite_driver
from dicom_backup_dagster.mosaiq.queries import QueryOverrideError, resolve_queries
from dicom_backup_dagster.notify import settings as checks
from dicom_backup_dagster.notify.settings import (
    MODEL_CONFIG,
    PORT,
    NotificationSettings,
    check,
    fail,
    fail_at,
    hint,
)

# Aliases and environment names become parts of Dagster asset keys, job and pool names, which accept only
# letters, digits and underscores; failing here is clearer than a DagsterInvalidDefinitionError later.
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
SOURCE_TYPES = ("aria", "mim", "mosaiq")
LOADER_KEYS = {"alias", "password_secret", "rest_password_secret"}  # fields the file may not set


@dataclasses.dataclass(frozen=True)
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
        files = ", ".join(sorted({i.file for i in self.issues}))
        lines = [f"{len(self.issues)} configuration errors in {files}:"]
        lines += [f"  {k}. {i}" for k, i in enumerate(self.issues, 1)]
        super().__init__(str(self.issues[0]) if len(self.issues) == 1 else "\n".join(lines))


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


def _secret(env_var: str | None, info: ValidationInfo) -> Secret | None:
    """What an *_env key names, read when loading the selected environment only (the loader says which)."""
    return Secret(env_var, os.environ[env_var]) if env_var and (info.context or {}).get("secrets") else None


def _reveal(secret: Secret | None, env_var: str, owner: str) -> str:
    """The secret load_config read; for models built in code, the variable read now."""
    value = secret.reveal() if secret is not None else os.environ.get(env_var)
    if not value:
        problem = f"environment variable {env_var} is not set or empty"
        fix = f"export {env_var}=<password> before starting the process"
        raise ConfigError([ConfigIssue("(not loaded from a file)", None, owner, problem, fix)])
    return value


# ------------------------------------------------------------------------------------------- checks


def _aet(value: Any, key: str) -> Any:
    problem = ae_title_problem(value) if isinstance(value, str) else None  # not a string: pydantic says so
    if problem:
        fail(
            problem,
            "use 1 to 16 printable ASCII characters without backslash (PS3.5 6.2, VR AE), matching the AE "
            'title configured on the peer, e.g. aet = "<ALIAS>"',
        )
    return value.strip(" ") if isinstance(value, str) else value


def _cron(value: Any, key: str) -> Any:
    """Basic 5-field cron check (minute hour day-of-month month day-of-week), as Dagster schedules use."""
    try:
        if isinstance(value, str):
            cron_fields(value)
    except ValueError as exc:
        fail(
            f"{value!r}: {exc}",
            f"write 5 cron fields (minute hour day month weekday), e.g. {key} = <EXAMPLE>",
        )
    return value


def _timezone(value: Any, key: str) -> Any:
    try:
        if not isinstance(value, str) or zoneinfo.ZoneInfo(value):
            return value
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        pass
    found = hint(value, sorted(zoneinfo.available_timezones()))
    fail(
        f"unknown time zone {value!r}{found}",
        'use an IANA time zone name, e.g. timezone = "America/Los_Angeles"',
    )


def _entries(value: Any, key: str, example: str, entry: Callable[[str, Any], object]) -> Any:
    """Check every entry of a table with ``entry(name, value)``, each failure reported at its own key."""
    if not isinstance(value, dict):
        fail(f"must be a table, got {checks.type_name(value)}", f"write it as [<KEY>] {example}")
    errors = []
    for name, given in value.items():
        try:
            entry(name, given)
        except PydanticCustomError as error:
            errors.append(((name,), (error.context or {})["problem"], (error.context or {})["fix"]))
    if errors:
        fail_at(errors)
    return value


def _query_key(keyword: str, match: Any) -> None:
    from pydicom.datadict import keyword_dict

    if keyword == "QueryRetrieveLevel":
        fail("QueryRetrieveLevel is set by query_level", "remove it and set query_level")
    if keyword not in keyword_dict:
        problem = f"{keyword!r} is not a DICOM keyword{hint(keyword, keyword_dict, 0.7)}"
        fail(problem, "use the attribute keyword from PS3.6 (e.g. Modality, StationName)")


def _odbc_option(name: str, option: Any) -> None:
    if name.lower() in MANAGED_ATTRIBUTES:
        fix = f"remove it from odbc_options and set {MANAGED_ATTRIBUTES[name.lower()]} instead"
        fail(f"{name} is derived from the source's own keys", fix)
    if not name or any(c in name for c in ";={} "):
        fail(f"{name!r} is not a valid ODBC attribute name", "use the driver's attribute name")
    if isinstance(option, bool) or not isinstance(option, (str, int)):
        fix = f'write it as {name} = "..." as the driver documents it'
        fail(f"must be a string or integer, got {checks.type_name(option)}", fix)


def _odbc_options(value: Any, key: str) -> dict[str, str]:
    return {k: str(v) for k, v in _entries(value, key, '{ TDS_Version = "7.4" }', _odbc_option).items()}


def _timeout(name: str, given: Any) -> None:
    known = [f.name for f in dataclasses.fields(Timeouts)]
    if name not in known:
        fail(f"unknown key {name!r}{hint(name, known)}", f"remove it (valid keys here: {', '.join(known)})")
    checks.number(given, name, 0.0, 86400.0, str(int(getattr(Timeouts, name, 10))), True)


def _mosaiq_query(name: str, sql: Any) -> None:
    if not NAME_RE.match(name):
        fix = "rename the query to the name the Mosaiq module documents"
        fail("query names are letters, digits and underscores", fix)
    if not isinstance(sql, str) or not sql.strip():
        fail("must be a non-empty SQL string", 'write it as a TOML string, e.g. name = """SELECT ..."""')
    try:
        resolve_queries({name: sql})
    except QueryOverrideError as error:
        fix = "start from the default query in dicom_backup_dagster/mosaiq/queries.py and keep its parameters"
        fail(str(error), fix + " (start, end)")


def _bulk_hours(value: Any, key: str) -> tuple[str, ...]:
    entries = [value] if isinstance(value, str) else value
    fix = f"write it as e.g. {BULK_HOURS_EXAMPLE} (times in settings.timezone)"
    if not isinstance(entries, list):
        fail(f"must be an array of strings, got {checks.type_name(value)}", fix)
    try:
        parse_work_window(entries)
    except WorkWindowError as error:
        fail(str(error), fix + ", or remove it to allow backfills at any time")
    return tuple(" ".join(e.split()) for e in entries)


class _Absent(str):
    """A SQLite source needs no server: db_server's value when the key is absent."""


_NO_SERVER = _Absent()


def _driver(value: Any, key: str) -> str:
    return checks.string(value, key, "<EXAMPLE>").strip().strip("{}").strip()


def _server(value: Any, key: str) -> Any:
    return value if value is _NO_SERVER else checks.host(value, key, "<EXAMPLE>", checks.host_problem)


def _exported(value: str, info: ValidationInfo) -> str:
    """The variable a password key names must be set, in the selected environment only (the loader says
    which: secrets are read for it alone)."""
    if (info.context or {}).get("secrets") and not os.environ.get(value):
        state = "is empty" if value in os.environ else "is not set"
        fix = (
            f"export {value}=<password> in the environment of the Dagster code server, daemon and run "
            "workers (e.g. the systemd unit's EnvironmentFile or .env)"
        )
        fail(f"environment variable {value} {state}", fix)
    return value


# Shared by several keys, like PORT (notify/settings.py). ``strict``: TOML's 7 and "7" are not the same.
def _int(ge: int, le: int, **info: Any) -> Any:
    return Field(strict=True, ge=ge, le=le, **info)


DAYS, NIGHTS = _int(0, 3650), _int(1, 366)
AETitle = Annotated[str, Field(examples=["<ALIAS>"]), check(_aet)]
Host = Annotated[str, Field(examples=["10.0.0.20"]), check(checks.host, "<EXAMPLE>", checks.host_problem)]
Text = Annotated[str, check(checks.string, "<EXAMPLE>")]
PasswordEnv = Annotated[
    str,
    Field(examples=["<ENV>_<ALIAS>_PASSWORD"]),
    AfterValidator(_exported),
    check(checks.env_var, "<EXAMPLE>"),
]
Cron = Annotated[str, check(_cron)]
_REST_FIX = "set it to Orthanc's REST base URL, e.g. rest_url = <EXAMPLE>"
_REST_SECRET = "set rest_username and name the password's environment variable in rest_password_env"
RestURL = Annotated[str, check(checks.http_url, "<EXAMPLE>", _REST_FIX, _REST_SECRET)]

# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True, config=MODEL_CONFIG)
class ScriptAE:
    """Our own AE title, and the port we listen on (C-MOVE destination; Storage Commitment, PS3.4 J.3)."""

    aet: AETitle
    port: Annotated[int | None, PORT, Field(examples=[11113])] = None


_RELATIONAL = "true or false (true only for a source answering SERIES-level C-FINDs without StudyInstanceUID)"
_LIMIT = "an integer >= 1 (the source's C-FIND match limit)"


@dataclass(frozen=True, config=MODEL_CONFIG)
class QRSource:
    """A DICOM Query/Retrieve SCP we back up from (PS3.4 Annex C): ARIA or MIM."""

    alias: str
    type: Literal["aria", "mim"]
    aet: AETitle
    ip: Host
    port: Annotated[int, PORT, Field(examples=[104])]
    query_level: Literal["STUDY", "SERIES", "IMAGE"] = "IMAGE"
    query_keys: Annotated[dict[str, str], check(_entries, '{ Modality = "CT" }', _query_key)] = field(
        default_factory=dict, hash=False
    )
    transfer: Literal["c-move", "c-get"] = "c-move"
    max_associations: Annotated[int, _int(1, 64)] = 2
    #: "by-study": one IMAGE-level C-FIND per study, walked when short; "walk": SERIES then IMAGE, always.
    inventory: Literal["by-study", "walk"] = "by-study"
    #: Relational queries (PS3.4 C.4.1.2.2.2) also find new series on studies of any age.
    relational: Annotated[bool, Field(strict=True, description=_RELATIONAL)] = False
    #: The source's C-FIND match limit (or below); an answer that reaches it is split (backup/listing.py).
    max_find_results: Annotated[int | None, _int(1, 10_000_000, examples=[1000], description=_LIMIT)] = None
    #: When backfills, sweeps and manual runs may load this source (backup/hours.py); () = any time.
    bulk_hours: Annotated[tuple[str, ...], check(_bulk_hours)] = ()

    @model_validator(mode="after")
    def _aria_moves_only(self, info: ValidationInfo) -> QRSource:
        if info.context is not None and self.type == "aria" and self.transfer == "c-get":
            problem = "ARIA sources are retrieved with C-MOVE only; 'c-get' is not supported"
            fix = 'set transfer = "c-move" (or remove the key) and register the backup target as a move '
            fail_at([(("transfer",), problem, fix + "destination in ARIA")])
        return self

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, self.ip, self.port)

    def bulk_window(self, timezone: str) -> WorkWindow:
        """bulk_hours in the site timezone (settings.timezone); validated when the file was loaded."""
        return parse_work_window(self.bulk_hours, timezone)


@dataclass(frozen=True, config=MODEL_CONFIG)
class MosaiqSource(MosaiqConnection):
    """The Mosaiq SQL database, read through ODBC. ``password`` is resolved from ``db_password_env``."""

    db_server: Annotated[str, Field(examples=["mosaiq-sql.example.org"]), check(_server)]
    db_port: Annotated[int | None, PORT, Field(examples=[1433])]
    db_database: Annotated[Text, Field(examples=["MOSAIQ"])]
    db_username: Annotated[Text, Field(examples=["backup_ro"])]
    odbc_driver: Annotated[str, Field(examples=["FreeTDS"]), check(_driver)]
    odbc_options: Annotated[dict[str, str], check(_odbc_options)] = field(default_factory=dict, hash=False)
    db_password_env: PasswordEnv = field(kw_only=True)
    staging_target_alias: Annotated[Text, Field(examples=["MOSAIQ_STAGE"])] = ""
    password_secret: Secret | None = field(default=None, repr=False, compare=False, hash=False)
    type: Literal["mosaiq"] = field(default="mosaiq", kw_only=True)

    @model_validator(mode="before")
    @classmethod
    def _optional_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context is None or not isinstance(data, dict):
            return data
        driver = data.get("odbc_driver")
        sqlite = isinstance(driver, str) and is_sqlite_driver(driver)
        return {"db_port": None, **({"db_server": _NO_SERVER} if sqlite else {}), **data}

    @model_validator(mode="after")
    def _loaded(self, info: ValidationInfo) -> MosaiqSource:
        if info.context is None:
            return self
        changes: dict[str, Any] = {}
        # Dagster starts processes in different working directories; anchor relative paths to the file.
        if self.is_sqlite and not Path(self.db_database).is_absolute():
            changes["db_database"] = str((info.context["dir"] / self.db_database).resolve())
        return dataclasses.replace(self, **changes, password_secret=_secret(self.db_password_env, info))

    @property
    def password(self) -> str:
        return _reveal(self.password_secret, self.db_password_env, f"sources.{self.alias}.db_password_env")


Source = QRSource | MosaiqSource


@dataclass(frozen=True, config=MODEL_CONFIG)
class BackupTarget:
    """A DICOM Storage SCP we write to: the main Orthanc archive, or a staging SCP."""

    alias: str
    type: Annotated[Literal["orthanc", "dicom_scp"], Field(description="backup target type")]
    aet: AETitle
    ip: Annotated[Host, Field(examples=["10.0.0.30"])]
    port: Annotated[int, PORT, Field(examples=[4242])]
    rest_url: Annotated[RestURL | None, Field(examples=["http://10.0.0.30:8042"])] = None
    rest_username: Annotated[Text | None, Field(examples=["backup"])] = None
    rest_password_env: PasswordEnv | None = None
    rest_password_secret: Secret | None = field(default=None, repr=False, compare=False, hash=False)

    @model_validator(mode="after")
    def _rest_keys(self, info: ValidationInfo) -> BackupTarget:
        if info.context is None:
            return self
        rest = [k for k in ("rest_url", "rest_username", "rest_password_env") if getattr(self, k) is not None]
        problem = f"for a backup target of type {self.type!r}"
        fix = "remove it (only orthanc targets have a REST API)"
        errors = [((k,), f"unknown key {k!r} {problem}", fix) for k in rest if self.type != "orthanc"]
        if self.type == "orthanc" and self.rest_url is None:
            errors.append((("rest_url",), "missing required key 'rest_url'", "add rest_url = <EXAMPLE>"))
        if self.type == "orthanc" and (self.rest_username is None) != (self.rest_password_env is None):
            missing = "rest_password_env" if self.rest_username else "rest_username"
            fix = f"add {missing} (or remove the other one if Orthanc's REST API has no authentication)"
            errors.append(((missing,), "rest_username and rest_password_env go together", fix))
        if errors:
            fail_at(errors)
        return dataclasses.replace(self, rest_password_secret=_secret(self.rest_password_env, info))

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, self.ip, self.port)

    @property
    def rest_password(self) -> str | None:
        if self.rest_password_env is None:
            return None
        owner = f"backup_targets.{self.alias}.rest_password_env"
        return _reveal(self.rest_password_secret, self.rest_password_env, owner)


@dataclass(frozen=True, config=MODEL_CONFIG)
class RestoreTarget:
    """A DICOM AE the restore job may C-MOVE to from main; it must be in main's DicomModalities."""

    alias: str
    aet: AETitle
    ip: Host
    port: Annotated[int, PORT, Field(examples=[104])]
    storage_commitment: bool = False  # ask it to commit what was restored (PS3.4 J; it reports to script_ae)

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, self.ip, self.port)


@dataclass(frozen=True, config=MODEL_CONFIG)
class Settings:
    max_uids_per_run: Annotated[int, _int(1, 10_000_000, description="an integer >= 1")] = 5000
    timezone: Annotated[str, check(_timezone)] = "UTC"
    schedule: Cron = "30 1 * * *"
    lookback_days: Annotated[int, DAYS] = 3
    timeouts: Annotated[Timeouts, check(_entries, "acse = 30", _timeout)] = field(default_factory=Timeouts)
    verification_fraction: Annotated[float, Field(strict=True, ge=0.0, le=1.0, examples=[0.1])] = 0.0
    mosaiq_queries: Annotated[dict[str, str], check(_entries, 'deliveries = "SELECT ..."', _mosaiq_query)] = (
        field(default_factory=dict, hash=False)
    )
    connectivity_schedule: Cron = "*/15 * * * *"
    # Days per backfill run (one C-FIND over the range); nightly runs cover one day.
    backfill_days_per_run: Annotated[int, NIGHTS] = 7
    # A staged Mosaiq RT record is deleted once verified on main and this old (defs/staging_cleanup.py).
    staging_retention_days: Annotated[int, DAYS] = 7
    # Late data (backup/late.py): studies dated this many days back are re-checked nightly (0: off).
    late_series_days: Annotated[int, DAYS] = 30
    # The sweep (backup/sweep.py) re-checks the last sweep_days days every sweep_nights (0 days: off).
    sweep_days: Annotated[int, DAYS] = 180
    sweep_nights: Annotated[int, NIGHTS] = 30
    sweep_max_studies: Annotated[int, _int(1, 1_000_000)] = 2000
    sweep_schedule: Cron = "30 4 * * *"
    # Where every source's daily partitions start (a TOML date or the same as a string).
    first_day: Annotated[dt.date, Field(examples=[dt.date(2024, 7, 1)])] = dt.date(2020, 1, 1)
    # Transient failures are retried max_retries times, after retry_delay_s, then twice as long each time.
    max_retries: Annotated[int, _int(0, 20)] = 3
    retry_delay_s: Annotated[float, Field(ge=0.0, le=86400.0, examples=[30])] = 30.0
    # Downtime reports (backup/reports.py): courses treated in the last `on_treatment_days` days; files (PHI)
    # go only into `reports_dir` (0700), by default <backup storage>/reports.
    on_treatment_days: Annotated[int, DAYS] = 14
    reports_dir: Annotated[str | None, Field(examples=["/var/lib/dicom-backup/reports"])] = None
    # Where steps run: in the run's process, or on Celery workers listening on `celery_queue` (default
    # dicom-backup-<environment>); broker from $DICOM_BACKUP_CELERY_BROKER (defs/__init__.py).
    executor: Literal["in_process", "celery"] = "in_process"
    # Restore drill (defs/drill.py): off unless a [<ENV>.restore_targets.<ALIAS>] scratch AE is named here.
    restore_drill_target: Annotated[str, Field(examples=["SCRATCH"])] = ""
    restore_drill_studies: Annotated[int, _int(1, 100)] = 3
    restore_drill_schedule: Cron = "0 6 * * 0"
    celery_queue: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]*$", examples=["dicom-backup-ucla"])] = ""
    # The restore may add a destination main lacks to its DicomModalities (PUT /modalities/<AE>).
    restore_registers_destinations: bool = False

    # Backup SLOs (monitoring/slo.py): the newest complete and verified day ends at most this many hours
    # ago, and this share of the last `slo_window_nights` nights is verified by `slo_verified_by_hour`.
    slo_recovery_point_hours: Annotated[float, Field(strict=True, ge=1, le=8760, examples=[36])] = 36.0
    slo_verified_by_hour: Annotated[int, _int(0, 23)] = 7
    slo_target_ratio: Annotated[float, Field(strict=True, ge=0.5, le=0.999, examples=[0.95])] = 0.95
    slo_window_nights: Annotated[int, _int(7, 366)] = 30

    @model_validator(mode="after")
    def _slo(self, info: ValidationInfo) -> Settings:
        floor = 24 + self.slo_verified_by_hour  # the newest verified day is this old just before the next
        if info.context is not None and self.slo_recovery_point_hours < floor:
            hours, by = self.slo_recovery_point_hours, self.slo_verified_by_hour
            problem = (
                f"{hours:g} h is breached every night: just before a night is verified by {by:02d}:00, the "
                f"newest verified day ended {floor} h earlier"
            )
            fail_at([(("slo_recovery_point_hours",), problem, f"set it to at least {floor}, e.g. 36")])
        return self

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


def _aliases(value: Any, key: str, what: str) -> Any:
    """Each entry learns its alias (the table's key); an empty table, or a key the loader sets, is refused."""
    if isinstance(value, dict) and not value:
        fail(f"no {what} defined", f"add at least one [<ENV>.{key}.<ALIAS>] table")
    tables = {a: t for a, t in value.items() if isinstance(t, dict)} if isinstance(value, dict) else {}
    set_here = [
        ((a, k), f"unknown key {k!r}", "remove it") for a, t in tables.items() for k in t if k in LOADER_KEYS
    ]
    if set_here:
        fail_at(set_here)
    return {**value, **{a: {**t, "alias": a} for a, t in tables.items()}} if tables else value


@dataclass(frozen=True, config=MODEL_CONFIG)
class EnvironmentConfig:
    name: str
    default_source: Annotated[Text, Field(examples=["ARIA_MAIN"])]
    default_backup: Annotated[Text, Field(examples=["ORTHANC_MAIN"])]
    script_ae: ScriptAE
    sources: Annotated[
        dict[str, Annotated[Source, Field(discriminator="type")]], check(_aliases, "sources")
    ] = field(hash=False)
    backup_targets: Annotated[dict[str, BackupTarget], check(_aliases, "backup targets")] = field(hash=False)
    description: str = ""
    settings: Settings = field(default_factory=Settings)
    notifications: NotificationSettings = field(default_factory=NotificationSettings, hash=False)
    restore_targets: Annotated[dict[str, RestoreTarget], check(_aliases, "restore targets")] = field(
        default_factory=dict, hash=False
    )

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

    def restore_destinations(self) -> dict[str, Peer]:
        """Where a restore may go: every restore target, source (ARIA/MIM) and backup target but main."""
        out = {a: p for a, p in self.peers().items() if a != self.default_backup}
        return {**out, **{a: t.peer for a, t in self.restore_targets.items()}}

    def peers(self) -> dict[str, Peer]:
        """alias -> Peer for every DICOM peer: ARIA/MIM sources and all backup targets."""
        out: dict[str, Peer] = {a: s.peer for a, s in self.qr_sources.items()}
        out.update({a: t.peer for a, t in self.backup_targets.items()})
        return out


@dataclass(frozen=True, config=MODEL_CONFIG)
class SiteConfig:
    path: Path
    environment: EnvironmentConfig
    environment_names: tuple[str, ...] = ()
