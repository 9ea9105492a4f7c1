"""Fixtures for the DICOM layer tests: pynetdicom peers on 127.0.0.1 with free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicom_backup_dagster.dicom.network import Timeouts
from dicom_backup_dagster.dicom.scp import StorageSCP

from .fault_scp import FaultSCP
from .synthetic import SyntheticInstance, make_patient

CALLING_AET = "DICOM_BACKUP"
FAST = Timeouts(acse=5, dimse=10, network=10, connect=2)


@pytest.fixture(scope="module")
def _fault_scp_server() -> Iterator[FaultSCP]:
    scp = FaultSCP()
    try:
        yield scp
    finally:
        scp.stop()


@pytest.fixture
def fault_scp(_fault_scp_server: FaultSCP) -> FaultSCP:
    """The module's fault peer, reset to well-behaved defaults (starting one per test costs ~0.5 s)."""
    _fault_scp_server.reset()
    return _fault_scp_server


@pytest.fixture(scope="module")
def _listener_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageSCP]:
    with StorageSCP(CALLING_AET, tmp_path_factory.mktemp("listener-spool"), timeouts=FAST) as scp:
        yield scp


@pytest.fixture
def listener(_listener_server: StorageSCP) -> StorageSCP:
    """Our own listening AE (move destination and commitment report receiver), emptied."""
    _listener_server.clear()
    return _listener_server


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> list[SyntheticInstance]:
    return make_patient(tmp_path_factory.mktemp("patient"))


ORTHANC_USER = "backup"
ORTHANC_PASSWORD = "sandbox-test-pw"
