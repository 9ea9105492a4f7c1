"""Helpers for the configuration tests: a valid two-environment config as a dict, and a small TOML writer
(the tests mutate the dict, write it, and load it)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicom_backup_dagster.config import CONFIG_ENV_VAR, ENVIRONMENT_ENV_VAR

SECRETS = {
    "SITE_A_MOSAIQ_PW": "mosaiq-Secret;}1",
    "SITE_A_MAIN_PW": "orthanc-main-Secret2",
    "SITE_A_STAGE_PW": "orthanc-stage-Secret3",
}
OTHER_SECRETS = {"SITE_B_MAIN_PW": "site-b-Secret4"}


DELIVERIES_OVERRIDE = 'SELECT "DHS_ID" FROM "Dose_Hst" WHERE ? <= "Tx_DtTm" AND "Tx_DtTm" < ?'


def valid_config() -> dict[str, Any]:
    return copy.deepcopy(
        {
            "default_environment": "SITE_A",
            "SITE_A": {
                "description": "site A",
                "default_source": "ARIA",
                "default_backup": "ORTHANC_MAIN",
                "script_ae": {"aet": "DICOM_BACKUP", "port": 11113},
                "sources": {
                    "ARIA": {"type": "aria", "aet": "ARIA_SIM", "ip": "127.0.0.1", "port": 40001},
                    "MIM": {
                        "type": "mim",
                        "aet": "MIM_SIM",
                        "ip": "mim.example.org",
                        "port": 40002,
                        "transfer": "c-get",
                        "query_level": "SERIES",
                        "query_keys": {"Modality": "RTPLAN"},
                    },
                    "MOSAIQ": {
                        "type": "mosaiq",
                        "db_server": "127.0.0.1",
                        "db_database": "/abs/mosaiq.sqlite",
                        "db_username": "mosaiq_ro",
                        "db_password_env": "SITE_A_MOSAIQ_PW",
                        "odbc_driver": "SQLite3",
                        "staging_target_alias": "ORTHANC_STAGE",
                    },
                },
                "backup_targets": {
                    "ORTHANC_MAIN": {
                        "type": "orthanc",
                        "aet": "ORTHANC_MAIN",
                        "ip": "127.0.0.1",
                        "port": 40003,
                        "rest_url": "http://127.0.0.1:40004/",
                        "rest_username": "backup",
                        "rest_password_env": "SITE_A_MAIN_PW",
                    },
                    "ORTHANC_STAGE": {
                        "type": "orthanc",
                        "aet": "ORTHANC_STAGE",
                        "ip": "127.0.0.1",
                        "port": 40005,
                        "rest_url": "http://127.0.0.1:40006",
                        "rest_username": "backup",
                        "rest_password_env": "SITE_A_STAGE_PW",
                    },
                },
                "settings": {
                    "max_uids_per_run": 100,
                    "timezone": "America/New_York",
                    "schedule": "30 1 * * *",
                    "lookback_days": 2,
                    "verification_fraction": 0.5,
                    "timeouts": {"acse": 5, "dimse": 60, "network": 30, "connect": 3},
                    "mosaiq_queries": {"deliveries": DELIVERIES_OVERRIDE},
                },
            },
            "SITE_B": {
                "default_source": "ARIA",
                "default_backup": "ORTHANC",
                "script_ae": {"aet": "B_BACKUP"},
                "sources": {"ARIA": {"type": "aria", "aet": "B_ARIA", "ip": "10.1.1.1", "port": 104}},
                "backup_targets": {
                    "ORTHANC": {
                        "type": "orthanc",
                        "aet": "B_ORTHANC",
                        "ip": "10.1.1.2",
                        "port": 4242,
                        "rest_url": "https://orthanc.example.org/orthanc",
                        "rest_username": "backup",
                        "rest_password_env": "SITE_B_MAIN_PW",
                    }
                },
            },
        }
    )


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dt.date):
        return value.isoformat()  # a TOML local date
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def dump_toml(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """Scalars and inline tables first, then sub-tables as [a.b] sections."""
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []
    for key, value in data.items():
        if isinstance(value, dict) and key not in _INLINE:
            tables.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {_value(value)}")
    out = ""
    if prefix:
        out += "[" + ".".join(json.dumps(p) for p in prefix) + "]\n"
    out += "".join(line + "\n" for line in lines)
    for key, value in tables:
        out += "\n" + dump_toml(value, (*prefix, key))
    return out


_INLINE = {"query_keys", "odbc_options"}


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(data: dict[str, Any] | str, name: str = "environments.toml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else dump_toml(data), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no selection variables and exactly site A's secrets set."""
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    monkeypatch.delenv(ENVIRONMENT_ENV_VAR, raising=False)
    for name in OTHER_SECRETS:
        monkeypatch.delenv(name, raising=False)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
