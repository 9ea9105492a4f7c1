"""Several sites in one Dagster instance: one code location per environment of the TOML, and nothing two
locations define collides (asset keys, checks); a remote AE two sites share is one pool."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest
from dagster import AssetKey, Definitions

from dicom_backup_dagster import sites
from dicom_backup_dagster.config import load_config, main
from dicom_backup_dagster.defs import build_definitions
from tests.config.conftest import OTHER_SECRETS, SECRETS, dump_toml, valid_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "environments.example.toml"


@pytest.fixture
def example_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in set(re.findall(r'_env = "([A-Z_]+)"', EXAMPLE.read_text(encoding="utf-8"))):
        monkeypatch.setenv(name, "x")


def _pools(defs: Definitions) -> dict[str, str]:
    out = {}
    for assets in defs.resolve_asset_graph().assets_defs:
        if assets.is_executable and assets.op.pool:
            out.update({k.to_user_string(): assets.op.pool for k in assets.keys})
    return out


def test_two_locations_of_the_example_file_do_not_collide(
    example_secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOM_BACKUP_CONFIG", str(EXAMPLE))
    # As workspace.yaml loads them: python_module dicom_backup_dagster.sites, attribute <site>.
    ucla, tju = sites.UCLA, sites.TJU
    assert isinstance(ucla, Definitions) and sites.UCLA is ucla
    graphs = {name: d.resolve_asset_graph() for name, d in (("UCLA", ucla), ("TJU", tju))}
    keys = {name: set(g.get_all_asset_keys()) for name, g in graphs.items()}
    checks = {name: set(g.asset_check_keys) for name, g in graphs.items()}
    assert keys["UCLA"] and keys["TJU"] and not keys["UCLA"] & keys["TJU"]
    assert checks["UCLA"] and not checks["UCLA"] & checks["TJU"]
    assert AssetKey(["nightly_summary", "UCLA"]) in keys["UCLA"]
    assert AssetKey(["nightly_summary", "TJU"]) in keys["TJU"]
    assert AssetKey(["alerts", "history", "UCLA"]) in keys["UCLA"]
    assert AssetKey(["alerts", "history", "TJU"]) in keys["TJU"]
    assert (
        AssetKey(["ARIA_MAIN", "archived"]) in keys["UCLA"] and AssetKey(["ARIA", "archived"]) in keys["TJU"]
    )
    # Pools by AE@host:port: the sources of two sites are different AEs, so different pools.
    pools = {name: set(_pools(d).values()) for name, d in (("UCLA", ucla), ("TJU", tju))}
    assert "dicom_ARIA_QR@10.10.1.20:104" in pools["UCLA"], pools
    assert not pools["UCLA"] & pools["TJU"]
    # Jobs, schedules and sensors carry the same names in both locations: Dagster keeps them apart by
    # location (runs, sensor cursors and schedule ticks are stored per location origin).
    assert {j.name for j in ucla.resolve_all_job_defs()} >= {"connectivity_check", "summarize_night"}
    with pytest.raises(AttributeError):
        _ = sites.__wrapped__  # tools probing the module load nothing


def test_a_single_site_file_keeps_its_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    data = valid_config()
    del data["SITE_B"], data["default_environment"]
    path = tmp_path / "one.toml"
    path.write_text(dump_toml(data), encoding="utf-8")
    defs = build_definitions(load_config(path))
    keys = set(defs.resolve_asset_graph().get_all_asset_keys())
    assert AssetKey("nightly_summary") in keys and AssetKey(["ARIA", "archived"]) in keys
    assert _pools(defs)["ARIA/archived"] == "dicom_ARIA_SIM"


def test_a_remote_ae_shared_by_two_sites_shares_its_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**SECRETS, **OTHER_SECRETS}.items():
        monkeypatch.setenv(name, value)
    data = valid_config()
    a_aria = data["SITE_A"]["sources"]["ARIA"]
    # SITE_B backs up the same ARIA (AE@host:port) under its own alias, and has an AE of SITE_A's MIM
    # title on another host.
    data["SITE_B"]["sources"] = {
        "ARIA_B": dict(a_aria),
        "MIM_B": {"type": "mim", "aet": "MIM_SIM", "ip": "10.1.1.9", "port": 40002},
    }
    data["SITE_B"]["default_source"] = "ARIA_B"
    path = tmp_path / "two.toml"
    path.write_text(dump_toml(data), encoding="utf-8")
    a, b = (_pools(build_definitions(load_config(path, site))) for site in ("SITE_A", "SITE_B"))
    assert a["ARIA/archived"] == b["ARIA_B/archived"] == "dicom_ARIA_SIM@127.0.0.1:40001"
    assert a["MIM/archived"] == "dicom_MIM_SIM@mim.example.org:40002" != b["MIM_B/archived"]
    assert a["MOSAIQ/archived"] == "dicom_ORTHANC_STAGE@127.0.0.1:40005"  # the staging AE's pool


def test_config_check_all_checks_every_site_and_refuses_a_shared_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {**SECRETS, **OTHER_SECRETS}.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "two.toml"
    path.write_text(dump_toml(valid_config()), encoding="utf-8")  # both sites call a source ARIA
    assert main(["check", "--all", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "environment: SITE_A" in out and "environment: SITE_B" in out and "2 sites: INVALID" in out
    assert "alias 'ARIA' is defined by SITE_A.sources.ARIA and SITE_B.sources.ARIA" in err
    assert "rename it in all but one site (e.g. ARIA_SITE_B)" in err
    data = valid_config()
    data["SITE_B"]["sources"] = {"ARIA_B": data["SITE_B"]["sources"]["ARIA"]}
    data["SITE_B"]["default_source"] = "ARIA_B"
    path.write_text(dump_toml(data), encoding="utf-8")
    assert main(["check", "--all", "--config", str(path)]) == 0
    assert "2 sites: all OK" in capsys.readouterr().out


def test_flows_of_every_site(example_secrets: None, capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_backup_dagster.flows import main as flows

    assert flows(["--config", str(EXAMPLE), "--env", "TJU"]) == 0
    tju = capsys.readouterr().out
    assert flows(["--config", str(EXAMPLE), "--all"]) == 0
    both = capsys.readouterr().out
    assert tju.startswith("# site TJU:") and both.startswith("# site UCLA+TJU:")
    assert "UCLA_ARIA" in both or "ARIA_MAIN" in both
    assert set(tju.splitlines()[1:]) <= set(both.splitlines()[1:])


def test_two_sites_keep_their_own_alert_ledgers_and_the_exporter_sums_them() -> None:
    """Each site's sensors rewrite their ledger whole: one shared value would lose the other site's
    entries. The exporter's open-alert figure counts both."""
    from dicom_backup_dagster.monitoring.exporter import open_alerts
    from dicom_backup_dagster.notify import Alert, AlertKind
    from dicom_backup_dagster.notify.history import History

    with dg.instance_for_test() as instance:
        store = instance.run_storage
        for site, source in (("UCLA", "ARIA_MAIN"), ("TJU", "ARIA")):
            alert = Alert(kind=AlertKind.BACKUP_FAILED, environment=site, subject=source, severity="critical")
            History(store, site=site).record("trigger", alert, [])
        ucla, tju = History(store, site="UCLA").entries(), History(store, site="TJU").entries()
        assert [e.key for e in ucla] == ["dicom-backup/UCLA/ARIA_MAIN/backup-failed"]
        assert [e.key for e in tju] == ["dicom-backup/TJU/ARIA/backup-failed"]
        assert History(store).entries() == []
        assert open_alerts(instance, ("UCLA", "TJU"))["critical"] == 2
        assert open_alerts(instance, ("",))["critical"] == 0
