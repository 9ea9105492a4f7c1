"""How one step hands its manifest to the next: a handle file beside the manifest on disk.

Every backup asset writes its manifest (`<name>.jsonl`) and a small handle (`<name>.handle.json`: path,
counts, cumulative seconds) into the partition's folder under BackupStorage, and the asset downstream,
which names it in `deps`, loads the handle from there. No IO manager is involved: manifests of thousands of
UIDs (and the DHS_IDs of Mosaiq deliveries) stay out of Dagster's storage, ranged backfill runs (which a
pickling IO manager cannot store) work alike, and an operator finds every manifest of a day in one folder.
"""

from pathlib import Path

from dagster import AssetKey, Failure

from dicom_backup_dagster.backup.manifest import ManifestHandle
from dicom_backup_dagster.defs.keys import SourceNames


def handle_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.handle.json"


def save_handle(handle: ManifestHandle, folder: Path, name: str) -> ManifestHandle:
    handle.save(handle_path(folder, name))
    return handle


def load_handle(path: Path, names: SourceNames, upstream: AssetKey, partition: str) -> ManifestHandle:
    """The handle `upstream` wrote for the run's partition(s); fails (no retry) when it never ran."""
    if not path.exists():
        raise Failure(
            description=(
                f"{names.alias} {partition}: no {upstream.path[-1]} for these days ({path} is missing): "
                f"materialize {upstream.to_user_string()} for the same partitions first "
                f"(the job {names.job} does both)"
            ),
            allow_retries=False,
        )
    return ManifestHandle.load(path)
