"""Session-scoped sandbox shared by tests that need real peers (the lead may move this to tests/conftest.py).

Tests using `sandbox` must not assume an empty archive: other tests store into ORTHANC_MAIN too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicom_backup_dagster.sandbox.sandbox import ENVIRONMENT, Sandbox, SandboxOptions
from dicom_backup_dagster.sandbox.synthetic import SyntheticOptions

SANDBOX_TEST_DATA = SyntheticOptions(patients=3, ct_slices=8, fractions=3, cbct_slices=4)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A started Sandbox (Orthanc main + staging, ARIA, MIM, Mosaiq DB); stopped at the end of the session."""
    root = tmp_path_factory.mktemp("sandbox")
    with Sandbox(root, SandboxOptions(data=SANDBOX_TEST_DATA)) as sb:
        yield sb


@pytest.fixture(scope="session")
def sandbox_env(sandbox: Sandbox) -> dict[str, str]:
    """Environment variables that point load_config() at the sandbox (use with monkeypatch.setenv)."""
    return {
        **sandbox.env_vars(),
        "DICOM_BACKUP_CONFIG": str(sandbox.config_path),
        "DICOM_BACKUP_ENVIRONMENT": ENVIRONMENT,
    }
