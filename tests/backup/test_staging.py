"""backup.staging against the sandbox's real staging Orthanc (REST with authentication): what the cleanup
deletes and keeps, with an explicit clock for the retention, and how REST failures read.

The staging Orthanc is shared with other tests: records here get UIDs of their own (a per-test source key),
and assertions are about those records only.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from dicom_backup_dagster.backup.staging import VerifiedRecord, clean_staging, staging_client
from dicom_backup_dagster.dicom.digest import content_digest
from dicom_backup_dagster.orthanc import OrthancClient, OrthancRestError
from dicom_backup_dagster.rtrecord.builder import RecordOptions, RenderedRecord, render_rt_record
from dicom_backup_dagster.sandbox.processes import free_port
from tests.rtrecord.test_model import static_delivery, vmat_delivery

WEEK = dt.timedelta(days=7)


def _stage(sandbox: Any, tmp_path: Path, n: int) -> list[RenderedRecord]:
    """n fresh records (UIDs nobody else uses) uploaded to the staging Orthanc."""
    options = RecordOptions(source_key=f"STAGING-TEST-{uuid.uuid4()}")
    records = []
    for i in range(n):
        delivery = (static_delivery if i % 2 == 0 else vmat_delivery)(dhs_id=9000 + i)
        record = render_rt_record(delivery, options)
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(record.data)
        sandbox.stage.upload(path)
        records.append(record)
    return records


def _client(sandbox: Any, password: str | None = None, port: int | None = None) -> OrthancClient:
    stage = sandbox.stage
    url = stage.rest_url if port is None else f"http://127.0.0.1:{port}"
    return staging_client(url, stage.username, password or stage.password, label="ORTHANC_STAGE REST API")


def _verified(record: RenderedRecord, digest: str | None = None) -> VerifiedRecord:
    return VerifiedRecord(
        record.sop_instance_uid, record.study_instance_uid, digest or content_digest(record.data)
    )


def test_deletes_only_verified_unchanged_records_on_main_after_the_retention(sandbox, tmp_path):
    ok, changed, missing, unverified = _stage(sandbox, tmp_path, 4)
    verified = {
        r.sop_instance_uid: v
        for r, v in (
            (ok, _verified(ok)),
            (changed, _verified(changed, digest="0" * 64)),  # staging copy differs from what main holds
            (missing, _verified(missing)),
        )
    }
    asked: list[str] = []

    def on_main(study: str) -> set[str]:
        asked.append(study)
        return {ok.sop_instance_uid, changed.sop_instance_uid}  # `missing` is not on main (any more)

    ours = [ok, changed, missing, unverified]
    with _client(sandbox) as staging:
        now = dt.datetime.now(dt.UTC)
        young = clean_staging(staging, verified, on_main, now=now, retention=WEEK)
        assert young.deleted == 0 and young.kept_too_young == 3 and asked == []  # nothing old: no C-FIND
        assert young.examined >= 4 and young.kept_not_on_main >= 1
        assert all(sandbox.stage.has_instance(r.sop_instance_uid) for r in ours)

        later = clean_staging(
            staging, verified, on_main, now=now + WEEK + dt.timedelta(hours=1), retention=WEEK
        )
    assert later.deleted == 1 and later.kept_changed == 1 and later.changed_uids == [changed.sop_instance_uid]
    assert later.missing_on_main_uids == [missing.sop_instance_uid]
    assert later.kept_not_on_main >= 2  # `missing` and `unverified`
    assert later.studies_queried == len(set(asked)) >= 1
    assert not sandbox.stage.has_instance(ok.sop_instance_uid)
    for record in (changed, missing, unverified):
        assert sandbox.stage.has_instance(record.sop_instance_uid)
        sandbox.stage.delete_instance(record.sop_instance_uid)


def test_retention_zero_deletes_as_soon_as_verified(sandbox, tmp_path):
    (record,) = _stage(sandbox, tmp_path, 1)
    verified = {record.sop_instance_uid: _verified(record)}
    with _client(sandbox) as staging:
        result = clean_staging(
            staging,
            verified,
            lambda study: {record.sop_instance_uid},
            now=dt.datetime.now(dt.UTC),
            retention=dt.timedelta(0),
        )
    assert result.deleted == 1 and not sandbox.stage.has_instance(record.sop_instance_uid)


def test_a_failing_main_query_stops_before_any_delete(sandbox, tmp_path):
    records = _stage(sandbox, tmp_path, 2)
    verified = {r.sop_instance_uid: _verified(r) for r in records}
    calls = 0

    def on_main(study: str) -> set[str]:
        nonlocal calls
        calls += 1
        raise ConnectionError("main archive down")

    with _client(sandbox) as staging, pytest.raises(ConnectionError):
        clean_staging(staging, verified, on_main, now=dt.datetime.now(dt.UTC), retention=dt.timedelta(0))
    assert calls == 1
    for record in records:
        assert sandbox.stage.has_instance(record.sop_instance_uid)
        sandbox.stage.delete_instance(record.sop_instance_uid)


def test_rest_errors_name_the_call_and_never_the_password(sandbox):
    with _client(sandbox, password="not-the-password-42") as staging, pytest.raises(OrthancRestError) as bad:
        list(staging.instances())
    text = str(bad.value)
    assert "HTTP 401" in text and "rest_username" in text and sandbox.stage.rest_url in text
    assert "not-the-password-42" not in text and sandbox.stage.password not in text

    port = free_port()
    with _client(sandbox, port=port) as staging, pytest.raises(OrthancRestError) as down:
        list(staging.instances())
    text = str(down.value)
    assert f"127.0.0.1:{port}" in text and "check that Orthanc is running" in text
    assert sandbox.stage.password not in text


def test_reception_date_is_read_as_utc(sandbox, tmp_path):
    (record,) = _stage(sandbox, tmp_path, 1)
    with _client(sandbox) as staging:
        oid = sandbox.stage.lookup_instance(record.sop_instance_uid)
        received = staging.received_at(oid)
        assert staging.received_at("no-such-instance") is None
    assert received is not None and abs(dt.datetime.now(dt.UTC) - received) < dt.timedelta(minutes=2)
    sandbox.stage.delete_instance(record.sop_instance_uid)
