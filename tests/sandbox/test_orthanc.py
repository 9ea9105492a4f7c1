"""OrthancServer: authenticated REST, DICOM access only for listed AEs, clean stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_backup_dagster.dicom.network import Peer, make_ae
from dicom_backup_dagster.sandbox.orthanc import OrthancServer
from dicom_backup_dagster.sandbox.processes import free_port, pid_alive
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, generate


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> OrthancServer:
    wd = tmp_path_factory.mktemp("orthanc")
    server = OrthancServer(
        wd,
        "SBX_TEST_OR",
        free_port(),
        free_port(),
        "backup",
        "s3cret",
        {"probe": Peer("PROBE", "127.0.0.1", free_port())},
    )
    with server:
        yield server  # type: ignore[misc]
    assert server.pid is not None and not pid_alive(server.pid)


def test_rest_requires_credentials(orthanc: OrthancServer) -> None:
    assert requests.get(f"{orthanc.rest_url}/system", timeout=5).status_code == 401
    assert requests.get(f"{orthanc.rest_url}/system", auth=("backup", "wrong"), timeout=5).status_code == 401
    assert orthanc.system()["DicomAet"] == "SBX_TEST_OR"


def test_config_has_safety_settings(orthanc: OrthancServer) -> None:
    cfg = orthanc.config()
    assert cfg["RemoteAccessAllowed"] is False and cfg["AuthenticationEnabled"] is True
    assert cfg["DicomAlwaysAllowStore"] is False and cfg["StorageCompression"] is False
    assert oct(orthanc.config_path.stat().st_mode & 0o777) == "0o600"


def _store(peer: Peer, calling: str, path: Path) -> int | None:
    from pydicom import dcmread

    ae = make_ae(calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
    if not assoc.is_established:
        return None
    try:
        st = assoc.send_c_store(dcmread(path))
        return int(st.Status) if st else None
    finally:
        assoc.release()


def test_store_allowed_only_for_listed_aes(orthanc: OrthancServer, tmp_path: Path) -> None:
    manifest = generate(
        tmp_path / "data", SyntheticOptions(patients=1, ct_slices=2, fractions=0, cbct_slices=0, seed=7)
    )
    ct = next(r for r in manifest if r.modality == "CT")
    assert _store(orthanc.peer, "STRANGER", ct.path) is None  # association rejected
    assert not orthanc.has_instance(ct.sop_instance_uid)
    assert _store(orthanc.peer, "PROBE", ct.path) == 0
    assert orthanc.has_instance(ct.sop_instance_uid)
    assert orthanc.count_instances() >= 1
    assert orthanc.delete_instance(ct.sop_instance_uid)
    assert not orthanc.delete_instance(ct.sop_instance_uid)


def test_runtime_modality_and_echo(orthanc: OrthancServer) -> None:
    ae = make_ae("LATECOMER")
    ae.add_requested_context(Verification)
    orthanc.add_modality("late", Peer("LATECOMER", "127.0.0.1", 1))
    assert "late" in orthanc.rest("GET", "/modalities").json()
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title="WRONG_CALLED")
    assert not assoc.is_established  # DicomCheckCalledAet
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
