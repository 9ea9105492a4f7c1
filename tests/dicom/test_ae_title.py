"""The AE title rule the configuration applies to every peer and to the script AE (PS3.5 6.2, VR AE)."""

from __future__ import annotations

from dicom_backup_dagster.dicom.network import ae_title_problem


def test_ae_title_rules_follow_ps3_5_vr_ae() -> None:
    assert ae_title_problem("ARIA_QR") is None
    assert ae_title_problem("  PADDED  ") is None  # leading/trailing spaces are not significant
    assert ae_title_problem("A" * 16) is None
    assert "maximum is 16" in (ae_title_problem("A" * 17) or "")
    assert "not allowed" in (ae_title_problem("BAD\\AE") or "")
    assert "not allowed" in (ae_title_problem("BAD\tAE") or "")
    assert "not allowed" in (ae_title_problem("ÄRIA") or "")
    assert "all spaces" in (ae_title_problem("    ") or "")
