"""AriaSimulator (dcmqrscp): echo, strict hierarchical C-FIND, C-MOVE only to its HostTable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from dicom_backup_dagster.dicom.network import Peer, make_ae
from dicom_backup_dagster.sandbox.aria import AriaSimulator, echo_ok
from dicom_backup_dagster.sandbox.processes import free_port, pid_alive
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions, generate


@pytest.fixture(scope="module")
def aria(tmp_path_factory: pytest.TempPathFactory) -> AriaSimulator:
    data = generate(
        tmp_path_factory.mktemp("data"),
        SyntheticOptions(patients=2, ct_slices=3, fractions=2, cbct_slices=2, mim_every=99, seed=3),
    )
    sim = AriaSimulator(
        tmp_path_factory.mktemp("aria"),
        "ARIA_T",
        free_port(),
        {"nowhere": Peer("NOWHERE", "127.0.0.1", free_port())},
    )
    sim.reset()
    assert sim.add_files(r.path for r in data.for_source("ARIA")) == 2 * (3 + 3 + 2 * 2)
    sim._data = data  # type: ignore[attr-defined]
    with sim:
        yield sim  # type: ignore[misc]
    assert sim.pid is not None and not pid_alive(sim.pid)


def _find(peer: Peer, ident: Dataset) -> list[tuple[int, Dataset | None]]:
    ae = make_ae("TESTER")
    ae.add_requested_context(FIND)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
    assert assoc.is_established
    try:
        return [(int(s.Status), i) for s, i in assoc.send_c_find(ident, FIND)]
    finally:
        assoc.release()


def test_echo_and_wrong_called_aet(aria: AriaSimulator) -> None:
    assert echo_ok(aria.peer)
    assert not echo_ok(Peer("WRONG_AET", "127.0.0.1", aria.port))
    assert "NOWHERE" in aria.config_path.read_text()
    assert str(aria.db_dir) in aria.config_path.read_text()


def test_find_is_hierarchical(aria: AriaSimulator) -> None:
    data = aria._data  # type: ignore[attr-defined]
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    q.StudyDate = ""
    studies = {i.StudyInstanceUID for s, i in _find(aria.peer, q) if s == 0xFF00 and i is not None}
    assert studies == {r.study_instance_uid for r in data.for_source("ARIA")}
    some = next(r for r in data.for_source("ARIA") if r.modality == "CT")
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = some.study_instance_uid
    q.SOPInstanceUID = ""
    assert not [i for s, i in _find(aria.peer, q) if s == 0xFF00]  # no SeriesInstanceUID: no matches
    q.SeriesInstanceUID = some.series_instance_uid
    got = {i.SOPInstanceUID for s, i in _find(aria.peer, q) if s == 0xFF00}
    assert some.sop_instance_uid in got


def test_move_to_unknown_destination_is_refused(aria: AriaSimulator) -> None:
    ae = make_ae("TESTER")
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", aria.port, ae_title=aria.aet)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = next(iter(aria._data)).study_instance_uid  # type: ignore[attr-defined]
    statuses = [int(s.Status) for s, _ in assoc.send_c_move(q, "NOT_LISTED", MOVE)]
    assoc.release()
    assert statuses[-1] == 0xA801


def test_index_cache_is_reused(tmp_path: Path) -> None:
    data = generate(tmp_path / "data", SyntheticOptions(patients=1, ct_slices=3, fractions=1, cbct_slices=1))
    sim = AriaSimulator(tmp_path / "aria", "ARIA_C", free_port())
    cache = tmp_path / "cache" / "aria-index.dat"
    sim.reset()
    n = sim.add_files((r.path for r in data), index_cache=cache)
    assert n == len(data) and cache.exists()
    first = (sim.db_dir / "index.dat").read_bytes()
    sim.reset()

    def no_dcmqridx(paths: list[str]) -> None:
        raise AssertionError("dcmqridx must not run when the cached index matches")

    sim._index = no_dcmqridx  # type: ignore[method-assign]
    assert sim.add_files((r.path for r in data), index_cache=cache) == n
    assert (sim.db_dir / "index.dat").read_bytes() == first
    with sim:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        found = {i.StudyInstanceUID for s, i in _find(sim.peer, q) if s == 0xFF00}
    assert found == {r.study_instance_uid for r in data}
