"""load_config: the valid shape, environment selection, secrets, and one test per kind of bad input.

Every bad-input test checks that the message names the file, the environment, the dotted key and a fix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicom_backup_dagster.config import (
    ConfigError,
    ConfigIssue,
    MosaiqSource,
    QRSource,
    _summary,
    ae_title_problem,
    load_config,
)
from dicom_backup_dagster.dicom.network import Peer, Timeouts

from .conftest import DELIVERIES_OVERRIDE, OTHER_SECRETS, SECRETS, valid_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "environments.example.toml"

Writer = Callable[..., Path]


def load_error(
    write_config: Writer, data: dict[str, Any] | str, environment: str | None = None
) -> ConfigError:
    path = write_config(data)
    with pytest.raises(ConfigError) as info:
        load_config(path, environment)
    return info.value


def issue(err: ConfigError, key: str, *fragments: str, environment: str | None = "SITE_A") -> ConfigIssue:
    """The issue for `key`; asserts the rendered message names file, environment, key and the fragments."""
    matches = [i for i in err.issues if i.key == key]
    assert matches, f"no issue for {key}; got {[i.key for i in err.issues]}:\n{err}"
    found = matches[0]
    text = str(err)
    assert "environments.toml" in text and found.file.endswith("environments.toml")
    assert key in text
    if environment:
        assert found.environment == environment
        assert f"environment {environment}" in text
    assert found.fix and f"Fix: {found.fix}" in text
    rendered = f"{found.problem} {found.fix}"
    for fragment in fragments:
        assert fragment in rendered, f"{fragment!r} not in {rendered!r}"
    return found


# ---------------------------------------------------------------------------------------------- valid


def test_valid_config_builds_the_typed_model(write_config: Writer) -> None:
    site = load_config(write_config(valid_config()))
    env = site.environment
    assert site.path.name == "environments.toml" and site.environment_names == ("SITE_A", "SITE_B")
    assert env.name == "SITE_A" and env.description == "site A"
    assert env.script_ae.aet == "DICOM_BACKUP" and env.script_ae.port == 11113
    aria, mim, mosaiq = env.sources["ARIA"], env.sources["MIM"], env.sources["MOSAIQ"]
    assert isinstance(aria, QRSource) and aria.query_level == "IMAGE" and aria.transfer == "c-move"
    assert aria.max_associations == 2 and aria.query_keys == {} and aria.inventory == "by-study"
    assert isinstance(mim, QRSource) and mim.transfer == "c-get" and mim.query_keys == {"Modality": "RTPLAN"}
    assert isinstance(mosaiq, MosaiqSource) and mosaiq.password == SECRETS["SITE_A_MOSAIQ_PW"]
    assert mosaiq.db_port is None and mosaiq.odbc_options == {}
    main = env.main_target
    assert main.alias == "ORTHANC_MAIN" and main.rest_url == "http://127.0.0.1:40004"  # trailing / dropped
    assert main.rest_password == SECRETS["SITE_A_MAIN_PW"]
    assert env.staging_target("MOSAIQ").alias == "ORTHANC_STAGE"
    assert env.staging_target(mosaiq).rest_password == SECRETS["SITE_A_STAGE_PW"]
    with pytest.raises(ValueError, match="only mosaiq sources"):
        env.staging_target("ARIA")
    assert env.peers() == {
        "ARIA": Peer("ARIA_SIM", "127.0.0.1", 40001),
        "MIM": Peer("MIM_SIM", "mim.example.org", 40002),
        "ORTHANC_MAIN": Peer("ORTHANC_MAIN", "127.0.0.1", 40003),
        "ORTHANC_STAGE": Peer("ORTHANC_STAGE", "127.0.0.1", 40005),
    }
    s = env.settings
    assert (s.max_uids_per_run, s.timezone, s.lookback_days, s.verification_fraction) == (
        100,
        "America/New_York",
        2,
        0.5,
    )
    assert s.timeouts == Timeouts(acse=5, dimse=60, network=30, connect=3)
    assert s.mosaiq_queries == {"deliveries": DELIVERIES_OVERRIDE} and s.tzinfo.key == "America/New_York"
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.name = "X"  # type: ignore[misc]


def test_defaults_when_optional_keys_are_absent(write_config: Writer) -> None:
    data = valid_config()
    del data["SITE_A"]["settings"], data["SITE_A"]["description"], data["SITE_A"]["script_ae"]["port"]
    env = load_config(write_config(data)).environment
    assert env.description == "" and env.script_ae.port is None
    s = env.settings
    assert (
        s.max_uids_per_run,
        s.timezone,
        s.schedule,
        s.lookback_days,
        s.verification_fraction,
        s.connectivity_schedule,
        s.mosaiq_queries,
    ) == (5000, "UTC", "30 1 * * *", 3, 0.0, "*/15 * * * *", {})
    assert s.timeouts == Timeouts()
    assert s.first_day == dt.date(2020, 1, 1)


@pytest.mark.parametrize("written", [dt.date(2026, 11, 4), "2026-11-04"])
def test_first_day_is_a_toml_date_or_an_iso_string(write_config: Writer, written: object) -> None:
    data = valid_config()
    data["SITE_A"]["settings"]["first_day"] = written
    assert load_config(write_config(data)).environment.settings.first_day == dt.date(2026, 11, 4)


def test_first_day_that_is_no_date_says_how_to_write_it(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["settings"]["first_day"] = "last monday"
    with pytest.raises(ConfigError) as err:
        load_config(write_config(data))
    assert "SITE_A.settings.first_day: 'last monday' is not a date" in str(err.value)
    assert "first_day = 2024-07-01" in str(err.value)


def test_example_file_loads_for_both_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UCLA_MOSAIQ_DB_PASSWORD", "UCLA_ORTHANC_MAIN_PASSWORD", "UCLA_ORTHANC_STAGE_PASSWORD"):
        monkeypatch.setenv(name, "pw-" + name)
    ucla = load_config(EXAMPLE).environment
    assert ucla.name == "UCLA"
    assert {s.type for s in ucla.sources.values()} == {"aria", "mim", "mosaiq"}
    assert ucla.main_target.type == "orthanc" and ucla.staging_target("MOSAIQ_DB").alias == "ORTHANC_STAGE"
    # TJU's secrets are not needed for UCLA, and UCLA's are not needed for TJU.
    for name in ("UCLA_MOSAIQ_DB_PASSWORD", "UCLA_ORTHANC_MAIN_PASSWORD", "UCLA_ORTHANC_STAGE_PASSWORD"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("TJU_MOSAIQ_DB_PASSWORD", "a")
    monkeypatch.setenv("TJU_ORTHANC_PASSWORD", "b")
    tju = load_config(EXAMPLE, "TJU").environment
    assert tju.staging_target("MOSAIQ").type == "dicom_scp"
    assert tju.sources["MOSAIQ"].odbc_options == {"Encrypt": "yes", "TrustServerCertificate": "yes"}


def test_ae_title_rules_follow_ps3_5_vr_ae() -> None:
    assert ae_title_problem("ARIA_QR") is None
    assert ae_title_problem("  PADDED  ") is None  # leading/trailing spaces are not significant
    assert ae_title_problem("A" * 16) is None
    assert "maximum is 16" in (ae_title_problem("A" * 17) or "")
    assert "not allowed" in (ae_title_problem("BAD\\AE") or "")
    assert "not allowed" in (ae_title_problem("BAD\tAE") or "")
    assert "not allowed" in (ae_title_problem("ÄRIA") or "")
    assert "all spaces" in (ae_title_problem("    ") or "")


def test_aet_spaces_are_stripped(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["aet"] = " ARIA_SIM "
    assert load_config(write_config(data)).environment.sources["ARIA"].aet == "ARIA_SIM"


def test_sqlite_relative_database_is_relative_to_the_file(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MOSAIQ"]["db_database"] = "data/mosaiq.sqlite"
    path = write_config(data)
    assert load_config(path).environment.sources["MOSAIQ"].db_database == str(
        path.parent / "data/mosaiq.sqlite"
    )


# ---------------------------------------------------------------------------------------------- selection


def test_path_and_environment_from_environment_variables(
    write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(valid_config())
    monkeypatch.setenv("DICOM_BACKUP_CONFIG", str(path))
    assert load_config().environment.name == "SITE_A"  # default_environment
    monkeypatch.setenv("DICOM_BACKUP_ENVIRONMENT", "SITE_B")
    monkeypatch.setenv("SITE_B_MAIN_PW", OTHER_SECRETS["SITE_B_MAIN_PW"])
    assert load_config().environment.name == "SITE_B"
    assert load_config(environment="SITE_A").environment.name == "SITE_A"  # argument wins


def test_single_environment_needs_no_selection(write_config: Writer) -> None:
    data = valid_config()
    del data["default_environment"], data["SITE_B"]
    assert load_config(write_config(data)).environment.name == "SITE_A"


def test_no_selection_with_several_environments(write_config: Writer) -> None:
    data = valid_config()
    del data["default_environment"]
    err = load_error(write_config, data)
    issue(err, "default_environment", "DICOM_BACKUP_ENVIRONMENT", "SITE_A, SITE_B", environment=None)


def test_no_path_anywhere_says_how_to_set_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "DICOM_BACKUP_CONFIG" in str(info.value) and "--config" in str(info.value)


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "environments.toml")
    text = str(info.value)
    assert str(tmp_path / "environments.toml") in text and "file not found" in text
    assert "environments.example.toml" in text


def test_toml_syntax_error_names_the_line(write_config: Writer) -> None:
    err = load_error(write_config, 'default_environment = "A"\n\n[A]\ndefault_source = ARIA\n')
    assert len(err.issues) == 1
    assert "line 4" in str(err) and "environments.toml" in str(err) and "toml.io" in err.issues[0].fix


def test_unknown_environment_lists_the_available_ones(
    write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = load_error(write_config, valid_config(), "SITE_C")
    issue(err, "(environment)", "unknown environment 'SITE_C'", "SITE_A, SITE_B", environment="SITE_C")
    monkeypatch.setenv("DICOM_BACKUP_ENVIRONMENT", "site_a")
    err = load_error(write_config, valid_config())
    issue(err, "(environment)", "$DICOM_BACKUP_ENVIRONMENT", "did you mean 'SITE_A'?", environment="site_a")


def test_default_environment_pointing_nowhere(write_config: Writer) -> None:
    data = valid_config()
    data["default_environment"] = "SITE_X"
    err = load_error(write_config, data, "SITE_A")
    issue(err, "default_environment", "'SITE_X' is not an environment", "SITE_A, SITE_B", environment=None)


# ---------------------------------------------------------------------------------------------- secrets


def test_missing_secret_names_the_variable(write_config: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SITE_A_MOSAIQ_PW")
    monkeypatch.setenv("SITE_A_MAIN_PW", "")
    err = load_error(write_config, valid_config())
    issue(
        err, "SITE_A.sources.MOSAIQ.db_password_env", "SITE_A_MOSAIQ_PW is not set", "export SITE_A_MOSAIQ_PW"
    )
    issue(err, "SITE_A.backup_targets.ORTHANC_MAIN.rest_password_env", "SITE_A_MAIN_PW is empty")
    assert SECRETS["SITE_A_STAGE_PW"] not in str(err)


def test_only_the_selected_environment_needs_its_secrets(
    write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(valid_config())
    load_config(path, "SITE_A")  # SITE_B_MAIN_PW is not set: fine
    for name in SECRETS:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SITE_B_MAIN_PW", OTHER_SECRETS["SITE_B_MAIN_PW"])
    site = load_config(path, "SITE_B")
    assert site.environment.main_target.rest_password == OTHER_SECRETS["SITE_B_MAIN_PW"]


def test_secrets_never_appear_in_repr_str_or_pickle_free_text(write_config: Writer) -> None:
    site = load_config(write_config(valid_config()))
    env = site.environment
    texts = [
        repr(site),
        str(site),
        repr(env),
        str(env.sources["MOSAIQ"]),
        repr(env.backup_targets),
        str(dataclasses.asdict(env)),
        repr(env.sources["MOSAIQ"].password_secret),
    ]
    for text in texts:
        for secret in SECRETS.values():
            assert secret not in text
    assert "SITE_A_MOSAIQ_PW" in repr(env.sources["MOSAIQ"].password_secret)
    # A pickled copy (Dagster may ship config to run workers) still resolves the secret.
    assert pickle.loads(pickle.dumps(env)).sources["MOSAIQ"].password == SECRETS["SITE_A_MOSAIQ_PW"]


def test_password_pasted_into_an_env_key_is_not_echoed(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MOSAIQ"]["db_password_env"] = "hunter2 secret!"
    data["SITE_A"]["backup_targets"]["ORTHANC_MAIN"]["rest_url"] = "http://backup:topsecret9@127.0.0.1:40004"
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.MOSAIQ.db_password_env", "NAME of an environment variable")
    issue(err, "SITE_A.backup_targets.ORTHANC_MAIN.rest_url", "must not contain a user name or password")
    assert "hunter2" not in str(err) and "topsecret9" not in str(err)


def test_plaintext_password_key_is_refused_without_echo(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MOSAIQ"]["db_password"] = "plain-text-pw"
    data["SITE_A"]["backup_targets"]["ORTHANC_MAIN"]["password"] = "other-plain-pw"
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.MOSAIQ.db_password", "did you mean 'db_password_env'?", "environment variable")
    issue(err, "SITE_A.backup_targets.ORTHANC_MAIN.password", "did you mean 'rest_password_env'?")
    assert "plain-text-pw" not in str(err) and "other-plain-pw" not in str(err)


def test_models_built_in_code_read_the_variable_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    src = MosaiqSource(
        alias="M",
        db_server="h",
        db_port=None,
        db_database="db",
        db_username="u",
        db_password_env="LAZY_PW_VAR",
        odbc_driver="SQLite3",
    )
    with pytest.raises(ConfigError, match="LAZY_PW_VAR is not set"):
        _ = src.password
    monkeypatch.setenv("LAZY_PW_VAR", "lazy-secret")
    assert src.password == "lazy-secret" and "lazy-secret" not in repr(src)


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_aliases(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["default_source"] = "ARIA_MAIN"
    data["SITE_A"]["default_backup"] = "ORTHANC"
    data["SITE_A"]["sources"]["MOSAIQ"]["staging_target_alias"] = "MOSAIQ_STAGE"
    err = load_error(write_config, data)
    issue(err, "SITE_A.default_source", "'ARIA_MAIN' is not a source alias", "ARIA, MIM, MOSAIQ")
    issue(
        err, "SITE_A.default_backup", "'ORTHANC' is not a backup target alias", "ORTHANC_MAIN, ORTHANC_STAGE"
    )
    issue(err, "SITE_A.sources.MOSAIQ.staging_target_alias", "'MOSAIQ_STAGE'", "ORTHANC_MAIN, ORTHANC_STAGE")
    assert len(err.issues) == 3


@pytest.mark.parametrize("port", [0, 70000, -1, "104", True, 104.0])
def test_bad_port(write_config: Writer, port: object) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["port"] = port
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.ARIA.port", "TCP port", "between 1 and 65535")


def test_missing_port_and_aet(write_config: Writer) -> None:
    data = valid_config()
    del data["SITE_A"]["backup_targets"]["ORTHANC_STAGE"]["port"]
    del data["SITE_A"]["sources"]["MIM"]["aet"]
    err = load_error(write_config, data)
    issue(err, "SITE_A.backup_targets.ORTHANC_STAGE.port", "missing required key 'port'", "port = ")
    issue(err, "SITE_A.sources.MIM.aet", "missing required key 'aet'", "aet = ")


@pytest.mark.parametrize(
    ("ip", "fragment"),
    [
        ("", "empty host"),
        ("   ", "empty host"),
        ("10.0.0.300", "not a valid IPv4"),
        ("bad host", "spaces"),
        ("under_score..example", "not a valid host name"),
    ],
)
def test_bad_host(write_config: Writer, ip: str, fragment: str) -> None:
    data = valid_config()
    data["SITE_A"]["backup_targets"]["ORTHANC_MAIN"]["ip"] = ip
    err = load_error(write_config, data)
    issue(err, "SITE_A.backup_targets.ORTHANC_MAIN.ip", fragment, "IP address or DNS name")


@pytest.mark.parametrize(
    ("aet", "fragment"),
    [
        ("A_VERY_LONG_AE_TITLE", "maximum is 16"),
        ("BACK\\SLASH", "not allowed"),
        ("TAB\tAE", "not allowed"),
        ("    ", "all spaces"),
    ],
)
def test_bad_ae_title(write_config: Writer, aet: str, fragment: str) -> None:
    data = valid_config()
    data["SITE_A"]["script_ae"]["aet"] = aet
    err = load_error(write_config, data)
    issue(err, "SITE_A.script_ae.aet", fragment, "PS3.5", "1 to 16")


def test_duplicate_ae_titles(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MIM"]["aet"] = "aria_sim"  # case-insensitive duplicate of ARIA
    data["SITE_A"]["backup_targets"]["ORTHANC_STAGE"]["aet"] = "DICOM_BACKUP"  # the script AE's title
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.MIM.aet", "already used by SITE_A.sources.ARIA.aet", "its own AE title")
    issue(err, "SITE_A.backup_targets.ORTHANC_STAGE.aet", "already used by SITE_A.script_ae.aet")


def test_same_ae_title_in_different_environments_is_fine(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_B"]["sources"]["ARIA"]["aet"] = "ARIA_SIM"
    assert load_config(write_config(data)).environment.sources["ARIA"].aet == "ARIA_SIM"


def test_unknown_source_and_target_types(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["type"] = "Aria"
    data["SITE_A"]["backup_targets"]["ORTHANC_STAGE"]["type"] = "pacs"
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.ARIA.type", "unknown source type 'Aria', did you mean 'aria'?", "'mosaiq'")
    issue(err, "SITE_A.backup_targets.ORTHANC_STAGE.type", "unknown backup target type 'pacs'", "'dicom_scp'")


def test_unknown_keys_suggest_the_right_one(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["aet_title"] = "X"
    data["SITE_A"]["sources"]["ARIA"]["dicom_query_level"] = "IMAGE"
    data["SITE_A"]["settings"]["time_zone"] = "UTC"
    data["SITE_A"]["script_ae"]["prot"] = 1
    data["SITE_A"]["sources"]["MOSAIQ"]["transfer"] = "c-move"  # valid for aria/mim only
    data["SITE_A"]["backup_targets"]["ORTHANC_STAGE"]["type"] = "dicom_scp"  # then rest_* are unknown
    data["SITE_A"]["colour"] = "blue"
    data["defaultenvironment"] = "SITE_A"
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.ARIA.aet_title", "unknown key 'aet_title'", "did you mean 'aet'?")
    issue(err, "SITE_A.sources.ARIA.dicom_query_level", "did you mean 'query_level'?")
    issue(err, "SITE_A.settings.time_zone", "did you mean 'timezone'?")
    issue(err, "SITE_A.script_ae.prot", "did you mean 'port'?")
    issue(err, "SITE_A.sources.MOSAIQ.transfer", "for a source of type 'mosaiq'", "valid keys here")
    issue(err, "SITE_A.backup_targets.ORTHANC_STAGE.rest_url", "for a backup target of type 'dicom_scp'")
    issue(err, "SITE_A.colour", "unknown key 'colour'", "remove it")
    issue(err, "defaultenvironment", "did you mean 'default_environment'?", environment=None)


def test_bad_query_level_and_keys(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["query_level"] = "INSTANCE"
    data["SITE_A"]["sources"]["MIM"]["query_keys"] = {"Modalty": "CT", "QueryRetrieveLevel": "STUDY"}
    err = load_error(write_config, data)
    issue(
        err, "SITE_A.sources.ARIA.query_level", "unknown query_level 'INSTANCE'", "'STUDY', 'SERIES', 'IMAGE'"
    )
    issue(err, "SITE_A.sources.MIM.query_keys.Modalty", "did you mean 'Modality'?", "PS3.6")
    issue(err, "SITE_A.sources.MIM.query_keys.QueryRetrieveLevel", "set by query_level")


def test_c_get_is_refused_for_aria(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["transfer"] = "c-get"
    data["SITE_A"]["sources"]["MIM"]["transfer"] = "C-GET"
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.ARIA.transfer", "C-MOVE only", 'transfer = "c-move"')
    issue(err, "SITE_A.sources.MIM.transfer", "did you mean 'c-get'?")


def test_inventory_mode_is_checked(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MIM"]["inventory"] = "walk"
    assert load_config(write_config(data)).environment.sources["MIM"].inventory == "walk"  # type: ignore[union-attr]
    data["SITE_A"]["sources"]["ARIA"]["inventory"] = "per-series"
    issue(load_error(write_config, data), "SITE_A.sources.ARIA.inventory", "'by-study', 'walk'")


def test_max_find_results_is_checked_and_shown(write_config: Writer) -> None:
    data = valid_config()
    assert load_config(write_config(data)).environment.sources["ARIA"].max_find_results is None  # type: ignore[union-attr]
    data["SITE_A"]["sources"]["MIM"]["max_find_results"] = 500
    site = load_config(write_config(data))
    assert site.environment.sources["MIM"].max_find_results == 500  # type: ignore[union-attr]
    assert any("MIM" in line and "max_find_results=500" in line for line in _summary(site))
    for bad in (0, -3, "500", 2.5, True):
        data["SITE_A"]["sources"]["ARIA"]["max_find_results"] = bad
        issue(
            load_error(write_config, data),
            "SITE_A.sources.ARIA.max_find_results",
            "an integer >= 1",
            "max_find_results = 1000",
        )


@pytest.mark.parametrize("tz", ["America/NewYork", "EST5", "", "Mars/Olympus"])
def test_bad_timezone(write_config: Writer, tz: str) -> None:
    data = valid_config()
    data["SITE_A"]["settings"]["timezone"] = tz
    err = load_error(write_config, data)
    found = issue(err, "SITE_A.settings.timezone", "unknown time zone", "IANA")
    if tz == "America/NewYork":
        assert "did you mean 'America/New_York'?" in found.problem


@pytest.mark.parametrize(
    ("cron", "fragment"),
    [
        ("30 1 * *", "4 fields"),
        ("61 1 * * *", "outside 0-59"),
        ("0 24 * * *", "outside 0-23"),
        ("0 1 * * mon-xyz", "'xyz'"),
        ("*/0 * * * *", "step"),
        ("0 5-2 * * *", "backwards"),
        ("@daily", "1 fields"),
    ],
)
def test_bad_cron(write_config: Writer, cron: str, fragment: str) -> None:
    data = valid_config()
    data["SITE_A"]["settings"]["connectivity_schedule"] = cron
    err = load_error(write_config, data)
    issue(err, "SITE_A.settings.connectivity_schedule", fragment, "minute hour day month weekday")


@pytest.mark.parametrize(
    "cron", ["*/15 * * * *", "0 2 * * 1-5", "30 1 1,15 jan-mar sun", "0 0 * * 7", "5-59/10 8-18 * * MON"]
)
def test_good_cron(write_config: Writer, cron: str) -> None:
    data = valid_config()
    data["SITE_A"]["settings"]["schedule"] = cron
    assert load_config(write_config(data)).environment.settings.schedule == cron


def test_numeric_settings_ranges(write_config: Writer) -> None:
    data = valid_config()
    settings = data["SITE_A"]["settings"]
    settings.update({"verification_fraction": 1.5, "max_uids_per_run": 0, "lookback_days": -1})
    settings["timeouts"]["dimse"] = 0
    err = load_error(write_config, data)
    issue(err, "SITE_A.settings.verification_fraction", "from 0.0 to 1.0, got 1.5")
    issue(err, "SITE_A.settings.max_uids_per_run", "an integer >= 1, got 0")
    issue(err, "SITE_A.settings.lookback_days", "got -1")
    issue(err, "SITE_A.settings.timeouts.dimse", "above 0.0")


def test_verification_fraction_bounds_are_inclusive(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["settings"]["verification_fraction"] = 1
    assert load_config(write_config(data)).environment.settings.verification_fraction == 1.0
    data["SITE_A"]["settings"]["verification_fraction"] = -0.1
    issue(load_error(write_config, data), "SITE_A.settings.verification_fraction", "got -0.1")


def test_slo_settings(write_config: Writer) -> None:
    data = valid_config()
    settings = data["SITE_A"]["settings"]
    s = load_config(write_config(data)).environment.settings
    assert (s.slo_recovery_point_hours, s.slo_verified_by_hour, s.slo_target_ratio, s.slo_window_nights) == (
        36.0,
        7,
        0.95,
        30,
    )
    settings.update({"slo_recovery_point_hours": 30, "slo_verified_by_hour": 6, "slo_target_ratio": 0.9})
    assert load_config(write_config(data)).environment.settings.slo_recovery_point_hours == 30.0  # 24 + 6
    settings.update({"slo_recovery_point_hours": 30, "slo_verified_by_hour": 8})
    err = load_error(write_config, data)
    issue(err, "SITE_A.settings.slo_recovery_point_hours", "30 h is breached every night", "at least 32")
    settings.update({"slo_recovery_point_hours": 36, "slo_target_ratio": 1, "slo_window_nights": 3})
    err = load_error(write_config, data)
    issue(err, "SITE_A.settings.slo_target_ratio", "from 0.5 to 0.999, got 1")
    issue(err, "SITE_A.settings.slo_window_nights", "between 7 and 366, got 3")


def test_staging_must_differ_from_main(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MOSAIQ"]["staging_target_alias"] = "ORTHANC_MAIN"
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.MOSAIQ.staging_target_alias", "is the main backup target", "separate staging")
    data = valid_config()
    data["SITE_A"]["backup_targets"]["ORTHANC_STAGE"]["port"] = 40003
    issue(load_error(write_config, data), "SITE_A.sources.MOSAIQ.staging_target_alias", "same ip:port")


def test_main_target_must_be_orthanc_with_rest(write_config: Writer) -> None:
    data = valid_config()
    main = data["SITE_A"]["backup_targets"]["ORTHANC_MAIN"]
    main["type"] = "dicom_scp"
    for key in ("rest_url", "rest_username", "rest_password_env"):
        del main[key]
    issue(load_error(write_config, data), "SITE_A.default_backup", "of type 'dicom_scp'", "orthanc target")
    data = valid_config()
    del data["SITE_A"]["backup_targets"]["ORTHANC_MAIN"]["rest_url"]
    del data["SITE_A"]["backup_targets"]["ORTHANC_STAGE"]["rest_username"]
    err = load_error(write_config, data)
    issue(err, "SITE_A.backup_targets.ORTHANC_MAIN.rest_url", "missing required key")
    issue(err, "SITE_A.backup_targets.ORTHANC_STAGE.rest_username", "go together")


def test_mosaiq_source_checks(write_config: Writer) -> None:
    data = valid_config()
    mosaiq = data["SITE_A"]["sources"]["MOSAIQ"]
    mosaiq.update(
        {
            "odbc_driver": "FreeTDS",
            "db_server": "",
            "db_port": 99999,
            "odbc_options": {"PWD": "x", "TDS_Version": "7.4", "Bad": [1]},
        }
    )
    del mosaiq["db_username"]
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.MOSAIQ.db_server", "empty host")
    issue(err, "SITE_A.sources.MOSAIQ.db_port", "TCP port")
    issue(err, "SITE_A.sources.MOSAIQ.db_username", "missing required key")
    issue(
        err, "SITE_A.sources.MOSAIQ.odbc_options.PWD", "derived from the source's own keys", "db_password_env"
    )
    issue(err, "SITE_A.sources.MOSAIQ.odbc_options.Bad", "string or integer")
    assert not [i for i in err.issues if i.key.endswith("TDS_Version")]


def test_bad_alias_and_environment_names(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA-2"] = dict(data["SITE_A"]["sources"]["ARIA"], aet="ARIA2")
    data["SITE_A"]["backup_targets"]["ARIA"] = dict(
        data["SITE_A"]["backup_targets"]["ORTHANC_STAGE"], aet="X", port=1
    )
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.ARIA-2", "not a valid name", "letters, digits and underscores")
    issue(err, "SITE_A.backup_targets.ARIA", "both as a source and as a target")


def test_wrong_shapes(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["script_ae"] = "DICOM_BACKUP"
    data["SITE_A"]["sources"]["MIM"] = "mim"
    del data["SITE_A"]["backup_targets"]
    err = load_error(write_config, data)
    issue(err, "SITE_A.script_ae", "must be a table, got a string")
    issue(err, "SITE_A.sources.MIM", "must be a table")
    issue(err, "SITE_A.backup_targets", "missing required table")


def test_all_errors_are_collected_across_environments(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["port"] = 0
    data["SITE_A"]["settings"]["timezone"] = "Nowhere"
    data["SITE_A"]["sources"]["MIM"]["aet"] = "X" * 20
    data["SITE_B"]["sources"]["ARIA"]["ip"] = ""  # not selected: still checked structurally
    err = load_error(write_config, data, "SITE_A")
    assert len(err.issues) == 4
    assert str(err).startswith("4 configuration errors in ")
    issue(err, "SITE_B.sources.ARIA.ip", "empty host", environment="SITE_B")


def test_unset_secrets_are_reported_alongside_structural_errors(
    write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SITE_A_MAIN_PW")
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["port"] = "104"
    data["SITE_A"]["sources"]["MOSAIQ"]["staging_target_alias"] = "ORTHANC_MAIN"
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.ARIA.port", "got '104'", "(no quotes)")
    issue(err, "SITE_A.sources.MOSAIQ.staging_target_alias", "is the main backup target")
    issue(err, "SITE_A.backup_targets.ORTHANC_MAIN.rest_password_env", "SITE_A_MAIN_PW is not set")
    assert len(err.issues) == 3


def test_unusable_mosaiq_query_override_is_reported_at_load(write_config: Writer) -> None:
    """An override that writes fails when the file loads, not in the middle of a night."""
    data = valid_config()
    data["SITE_A"]["settings"]["mosaiq_queries"] = {"deliveries": "DELETE FROM Dose_Hst WHERE DHS_ID = ?"}
    err = load_error(write_config, data)
    issue(err, "SITE_A.settings.mosaiq_queries.deliveries", "must start with SELECT or WITH", "(start, end)")


def test_mosaiq_query_override_with_wrong_parameters_is_reported(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["settings"]["mosaiq_queries"] = {
        "deliveries": 'SELECT "DHS_ID" FROM "Dose_Hst" WHERE ? < 1'
    }
    err = load_error(write_config, data)
    issue(
        err, "SITE_A.settings.mosaiq_queries.deliveries", "has 1 '?' placeholder(s) but must have exactly 2"
    )


def test_late_data_and_sweep_settings(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MIM"]["relational"] = True
    data["SITE_A"]["settings"].update(
        late_series_days=45,
        sweep_days=365,
        sweep_nights=14,
        sweep_max_studies=800,
        sweep_schedule="0 5 * * *",
    )
    env = load_config(write_config(data)).environment
    assert env.qr_sources["MIM"].relational and not env.qr_sources["ARIA"].relational
    s = env.settings
    assert (s.late_series_days, s.sweep_days, s.sweep_nights, s.sweep_max_studies) == (45, 365, 14, 800)
    assert s.sweep_schedule == "0 5 * * *"


def test_bad_late_data_and_sweep_settings_name_the_key(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MIM"]["relational"] = "yes"
    data["SITE_A"]["settings"].update(sweep_nights=0, sweep_schedule="every night")
    text = str(load_error(write_config, data))
    assert "SITE_A.sources.MIM.relational" in text and "true or false" in text
    assert "SITE_A.settings.sweep_nights" in text
    assert "SITE_A.settings.sweep_schedule" in text


# ---------------------------------------------------------------------------------------------- bulk_hours


def test_bulk_hours_defaults_to_any_time_and_accepts_a_string_or_an_array(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["settings"] = {"timezone": "America/New_York"}
    data["SITE_A"]["sources"]["ARIA"]["bulk_hours"] = ["Mon-Fri  19:00-07:00", "Sat-Sun 00:00-24:00"]
    data["SITE_A"]["sources"]["MIM"]["bulk_hours"] = "Fri 19:00 - Mon 07:00"
    env = load_config(write_config(data)).environment
    aria, mim = env.sources["ARIA"], env.sources["MIM"]
    assert isinstance(aria, QRSource) and isinstance(mim, QRSource)
    assert aria.bulk_hours == ("Mon-Fri 19:00-07:00", "Sat-Sun 00:00-24:00")
    assert mim.bulk_hours == ("Fri 19:00 - Mon 07:00",)
    window = aria.bulk_window(env.settings.timezone)
    assert window.describe() == "weekdays 19:00-07:00 next day and all weekend, America/New_York"
    unset = load_config(write_config(valid_config())).environment.sources["ARIA"]
    assert isinstance(unset, QRSource) and unset.bulk_hours == () and unset.bulk_window("UTC").always


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        (["Mon-Fri 7pm-7am"], ("'Mon-Fri 7pm-7am' is not a window", 'bulk_hours = ["Mon-Thu 19:00-07:00"')),
        (["Mon-Fri 19:00-07:00", "Sun 25:00-26:00"], ("'25:00' is not a time of day", "settings.timezone")),
        ({"start": "19:00"}, ("must be an array of strings, got a table",)),
        ([19], ("is not a string; write each window in quotes",)),
    ],
)
def test_bad_bulk_hours_name_the_key_and_an_example(
    write_config: Writer, value: Any, fragments: tuple[str, ...]
) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["bulk_hours"] = value
    issue(load_error(write_config, data), "SITE_A.sources.ARIA.bulk_hours", *fragments)


def test_bulk_hours_is_not_a_mosaiq_key(write_config: Writer) -> None:
    data = valid_config()
    data["SITE_A"]["sources"]["MOSAIQ"]["bulk_hours"] = ["Mon-Fri 19:00-07:00"]
    issue(load_error(write_config, data), "SITE_A.sources.MOSAIQ.bulk_hours", "unknown key 'bulk_hours'")


def test_keys_the_loader_sets_are_refused_in_a_source_table(write_config: Writer) -> None:
    # 'alias' and 'password_secret' are set by the loader; in a source table they once crashed the loader
    # (StopIteration while locating the error inside the sources' union) instead of naming the key.
    data = valid_config()
    data["SITE_A"]["sources"]["ARIA"]["alias"] = "X"
    data["SITE_A"]["sources"]["MOSAIQ"]["password_secret"] = "Y"
    err = load_error(write_config, data)
    issue(err, "SITE_A.sources.ARIA.alias", "unknown key 'alias'", "remove it")
    issue(err, "SITE_A.sources.MOSAIQ.password_secret", "unknown key 'password_secret'", "remove it")
