"""deploy/orthanc/*.json enforce their rules when Debian's Orthanc runs them.

Both files are started as they are, with only the site values substituted: paths, ports, hosts
(127.0.0.1) and passwords. Then: an unknown AE cannot echo, store, find or
move; a listed AE only gets the services its entry allows; REST refuses requests without credentials;
and the backup's own flows work (store to staging, C-MOVE staging -> main, C-FIND and C-GET on main,
C-MOVE from main to the backup AE).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import Dataset, dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    RTPlanStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_backup_dagster.dicom.network import Peer, make_ae
from dicom_backup_dagster.sandbox.orthanc import OrthancServer
from dicom_backup_dagster.sandbox.processes import free_port
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, generate

REPO = Path(__file__).resolve().parents[2]
ORTHANC_DIR = REPO / "deploy" / "orthanc"
BACKUP_AET, STRANGER = "UCLA_BACKUP", "STRANGER"
SAFETY = {
    "AuthenticationEnabled": True,
    "SslEnabled": False,
    "RemoteAccessAllowed": False,
    "DicomCheckCalledAet": True,
    "DicomCheckModalityHost": True,
    "OverwriteInstances": False,
    "StorageCompression": False,
    "ExecuteLuaEnabled": False,
    "LuaScripts": [],
    "DicomModalitiesInDatabase": False,
    "DicomAlwaysAllowEcho": False,
    "DicomAlwaysAllowStore": False,
    "DicomAlwaysAllowFind": False,
    "DicomAlwaysAllowGet": False,
    "DicomAlwaysAllowMove": False,
    "TcpNoDelay": True,
}


def load_commented_json(path: Path) -> dict[str, Any]:
    """Orthanc's configuration files allow // and /* */ comments; strip them outside strings."""
    text = path.read_text()
    out, i, in_string = [], 0, False
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i):
            i = text.find("\n", i) - 1 if "\n" in text[i:] else len(text)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 1
        else:
            out.append(c)
        i += 1
    return dict(json.loads("".join(out)))


class ProductionOrthanc(OrthancServer):
    """OrthancServer started from a production file instead of the sandbox's configuration."""

    def __init__(self, production: dict[str, Any], workdir: Path, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.production = production

    def config(self) -> dict[str, Any]:
        return dict(self.production)


def site_values(cfg: dict[str, Any], workdir: Path, aet_ports: dict[str, int], http: int) -> dict[str, Any]:
    """The production file with this test's paths, ports, hosts and password; every rule unchanged."""
    cfg = json.loads(json.dumps(cfg))
    cfg["StorageDirectory"] = cfg["IndexDirectory"] = str(workdir / "db")
    cfg["HttpPort"], cfg["DicomPort"] = http, aet_ports[cfg["DicomAet"]]
    cfg["RegisteredUsers"] = {"backup": "s3cret"}
    for modality in cfg["DicomModalities"].values():
        modality["Host"], modality["Port"] = "127.0.0.1", aet_ports[modality["AET"]]
    return cfg


@pytest.fixture(scope="module")
def backup_scp() -> Iterator[tuple[Peer, list[Dataset]]]:
    """The backup AE's own Storage SCP (script_ae.port): the destination of a C-MOVE from main."""
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0

    ae = AE(BACKUP_AET)
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(RTPlanStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    yield Peer(BACKUP_AET, "127.0.0.1", port), received
    server.shutdown()


@pytest.fixture(scope="module")
def orthancs(
    tmp_path_factory: pytest.TempPathFactory, backup_scp: Any
) -> Iterator[dict[str, ProductionOrthanc]]:
    main_cfg = load_commented_json(ORTHANC_DIR / "orthanc-main.json")
    stage_cfg = load_commented_json(ORTHANC_DIR / "orthanc-staging.json")
    aets = {m["AET"] for c in (main_cfg, stage_cfg) for m in c["DicomModalities"].values()}
    ports = {aet: free_port() for aet in aets | {main_cfg["DicomAet"], stage_cfg["DicomAet"]}}
    ports[BACKUP_AET] = backup_scp[0].port
    servers: dict[str, ProductionOrthanc] = {}
    for name, cfg in (("main", main_cfg), ("staging", stage_cfg)):
        wd = tmp_path_factory.mktemp(f"orthanc-{name}")
        http = free_port()
        prod = site_values(cfg, wd, ports, http)
        servers[name] = ProductionOrthanc(
            prod, wd, aet=prod["DicomAet"], dicom_port=prod["DicomPort"], http_port=http,
            username="backup", password="s3cret",
        )  # fmt: skip
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    manifest = generate(
        tmp_path_factory.mktemp("data"),
        SyntheticOptions(patients=1, ct_slices=2, fractions=1, cbct_slices=0, seed=11),
    )
    return {
        "ct": next(r.path for r in manifest if r.modality == "CT"),
        "record": next(r.path for r in manifest if r.modality == "RTPLAN"),
    }


# --- DICOM helpers: None when the association is refused, else the final status -----------------------------
def _assoc(calling: str, server: OrthancServer, contexts: list[str], called: str | None = None) -> Any:
    ae = make_ae(calling)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=called or server.aet)
    return assoc if assoc.is_established else None


def echo(calling: str, server: OrthancServer, called: str | None = None) -> int | None:
    assoc = _assoc(calling, server, [Verification], called)
    if assoc is None:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else None
    finally:
        assoc.release()


def store(calling: str, server: OrthancServer, path: Path) -> int | None:
    ds = dcmread(path)
    assoc = _assoc(calling, server, [ds.SOPClassUID])
    if assoc is None:
        return None
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if status else None
    finally:
        assoc.release()


def _query(ds: Dataset) -> Dataset:
    """An IMAGE-level identifier of exactly this instance."""
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID, q.SeriesInstanceUID = ds.StudyInstanceUID, ds.SeriesInstanceUID
    q.SOPInstanceUID = ds.SOPInstanceUID
    return q


def find(calling: str, server: OrthancServer, target: Dataset) -> tuple[int | None, int]:
    """(final status, number of matches)."""
    assoc = _assoc(calling, server, [StudyRootQueryRetrieveInformationModelFind])
    if assoc is None:
        return None, 0
    try:
        matches, final = 0, None
        for status, identifier in assoc.send_c_find(
            _query(target), StudyRootQueryRetrieveInformationModelFind
        ):
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                matches += 1
            elif status:
                final = int(status.Status)
        return final, matches
    finally:
        assoc.release()


def move(calling: str, server: OrthancServer, target: Dataset, destination: str) -> tuple[int | None, int]:
    """(final status, completed sub-operations)."""
    assoc = _assoc(calling, server, [StudyRootQueryRetrieveInformationModelMove])
    if assoc is None:
        return None, 0
    try:
        final, completed = None, 0
        for status, _ in assoc.send_c_move(
            _query(target), destination, StudyRootQueryRetrieveInformationModelMove
        ):
            if status:
                final = int(status.Status)
                completed = int(getattr(status, "NumberOfCompletedSuboperations", completed) or completed)
        return final, completed
    finally:
        assoc.release()


def get(calling: str, server: OrthancServer, target: Dataset) -> tuple[int | None, int]:
    """(final status, instances received over the association)."""
    from pynetdicom import build_role

    received: list[Any] = []
    ae = make_ae(calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(RTPlanStorage)

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0

    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    assoc = ae.associate(
        "127.0.0.1", server.dicom_port, ae_title=server.aet,
        ext_neg=[build_role(CTImageStorage, scp_role=True), build_role(RTPlanStorage, scp_role=True)],
        evt_handlers=handlers,
    )  # fmt: skip
    if not assoc.is_established:
        return None, 0
    try:
        final = None
        for status, _ in assoc.send_c_get(_query(target), StudyRootQueryRetrieveInformationModelGet):
            if status:
                final = int(status.Status)
        return final, len(received)
    finally:
        assoc.release()


def refused(result: int | tuple[int | None, int] | None) -> bool:
    """Association rejected, or a non-success status with nothing done."""
    status, done = result if isinstance(result, tuple) else (result, 0)
    return done == 0 and (status is None or status != 0)


# --- the files themselves -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["orthanc-main.json", "orthanc-staging.json"])
def test_production_files_state_every_rule(name: str) -> None:
    cfg = load_commented_json(ORTHANC_DIR / name)
    assert {k: cfg[k] for k in SAFETY} == SAFETY
    assert cfg["RegisteredUsers"]
    assert cfg["Plugins"] == [] and cfg["OrthancPeers"] == {}
    assert cfg["StorageDirectory"].startswith("/var/lib/orthanc") and cfg["IndexDirectory"]
    for modality in cfg["DicomModalities"].values():
        assert {"AllowEcho", "AllowFind", "AllowGet", "AllowMove", "AllowStore"} <= modality.keys()
    dropin = (ORTHANC_DIR / "orthanc.service.d" / "dicom-backup.conf").read_text()
    assert re.search(r"^Environment=TCP_NODELAY=1$", dropin, re.M)


def test_only_the_backup_host_may_query_or_retrieve_main() -> None:
    main = load_commented_json(ORTHANC_DIR / "orthanc-main.json")["DicomModalities"]
    for key, modality in main.items():
        retrieve = any(modality[k] for k in ("AllowFind", "AllowGet", "AllowMove"))
        assert retrieve == (modality["AET"] == BACKUP_AET), key
        assert modality["AllowStore"]  # everyone listed on main delivers data to it
    staging = load_commented_json(ORTHANC_DIR / "orthanc-staging.json")["DicomModalities"]
    assert {m["AET"] for m in staging.values()} == {BACKUP_AET, "ORTHANC_MAIN"}
    assert not any(staging["main"][k] for k in ("AllowFind", "AllowGet", "AllowMove", "AllowStore"))
    assert not staging["backup"]["AllowGet"]


# --- Orthanc running them -----------------------------------------------------------------------------------
def test_rest_refuses_requests_without_credentials(orthancs: dict[str, ProductionOrthanc]) -> None:
    http = requests.Session()
    http.trust_env = False
    for server in orthancs.values():
        url = f"{server.rest_url}/system"
        assert http.get(url, timeout=10).status_code == 401
        assert http.get(url, auth=("backup", "wrong"), timeout=10).status_code == 401
        assert http.get(url, auth=("backup", "s3cret"), timeout=10).json()["DicomAet"] == server.aet
        assert (
            http.put(f"{server.rest_url}/modalities/x", auth=("backup", "wrong"), timeout=10).status_code
            == 401
        )


def test_unknown_ae_and_wrong_called_ae_get_nothing(
    orthancs: dict[str, ProductionOrthanc], files: dict[str, Path]
) -> None:
    study = dcmread(files["ct"])
    for server in orthancs.values():
        assert echo(STRANGER, server) is None
        assert store(STRANGER, server, files["ct"]) is None
        assert refused(find(STRANGER, server, study))
        assert refused(move(STRANGER, server, study, BACKUP_AET))
        assert echo(BACKUP_AET, server, called="WRONG_CALLED") is None  # DicomCheckCalledAet
        assert echo(BACKUP_AET, server) == 0


def test_the_backup_flows_work_and_nothing_else(
    orthancs: dict[str, ProductionOrthanc], files: dict[str, Path], backup_scp: tuple[Peer, list[Dataset]]
) -> None:
    main, staging = orthancs["main"], orthancs["staging"]
    record, ct = dcmread(files["record"]), dcmread(files["ct"])
    # Mosaiq path: the backup stores a record on staging and has staging move it to main.
    assert store(BACKUP_AET, staging, files["record"]) == 0
    assert find(BACKUP_AET, staging, record) == (0, 1)
    assert move(BACKUP_AET, staging, record, STRANGER)[0] != 0  # unknown destination
    assert move(BACKUP_AET, staging, record, "ORTHANC_MAIN") == (0, 1)
    assert main.has_instance(record.SOPInstanceUID)
    assert refused(get(BACKUP_AET, staging, record))  # nothing leaves staging but to main
    # Main may not query or store on staging, nor ask it for anything.
    assert (
        store("ORTHANC_MAIN", staging, files["record"]) is None
        or store("ORTHANC_MAIN", staging, files["record"]) != 0
    )
    assert refused(find("ORTHANC_MAIN", staging, record))

    # Q/R path: the backup stores (data fetched with C-GET from MIM), then verifies and retrieves.
    assert store(BACKUP_AET, main, files["ct"]) == 0
    assert find(BACKUP_AET, main, ct) == (0, 1)
    assert get(BACKUP_AET, main, ct) == (0, 1)
    _, received = backup_scp
    assert move(BACKUP_AET, main, ct, BACKUP_AET) == (0, 1)
    assert any(ds.SOPInstanceUID == ct.SOPInstanceUID for ds in received)
    # A source may deliver (C-STORE sub-operations) but not query or retrieve the archive.
    assert refused(find("ARIA_QR", main, ct))
    assert refused(move("ARIA_QR", main, ct, BACKUP_AET))
    assert refused(get("ARIA_QR", main, ct))
    assert store("ARIA_QR", main, files["ct"]) == 0  # already archived: Orthanc keeps the first copy
    # Staging delivers into main but may not query it.
    assert refused(find("ORTHANC_STAGE", main, ct))
