"""The package layers point one way (scripts/import_graph.py, also run by `make lint`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_import_cycle_between_packages_and_no_dagster_in_the_pure_layers():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import_graph.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: no cycle" in result.stdout
    graph = dict(line.strip().split(" -> ") for line in result.stdout.splitlines() if " -> " in line)
    for pure in ("dicom", "mosaiq", "backup", "notify", "rtrecord"):
        assert "config" not in graph.get(pure, ""), pure
        assert "defs" not in graph.get(pure, ""), pure
    assert "mosaiq" not in graph.get("dicom", "") and "dicom" not in graph.get("mosaiq", "")
