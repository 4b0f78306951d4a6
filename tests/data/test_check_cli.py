"""`fedecho data check` / `check_data` on the real CAMUS subset and on a damaged copy of part of it."""

from __future__ import annotations

import json
import shutil

import pytest

from fedecho.cli.main import main
from fedecho.data.check import check_data


@pytest.fixture()
def camus_copy(camus_root, tmp_path):
    """Six real patients (4 train, 1 val, 1 test by the real split files), copied."""
    dst = tmp_path / "camus"
    ids = {"training": ["patient0001", "patient0002", "patient0003", "patient0004"]}
    real_splits = {name: (camus_root / "database_split" / f"subgroup_{name}.txt").read_text().split()
                   for name in ("training", "validation", "testing")}
    ids["validation"] = real_splits["validation"][:1]
    ids["testing"] = real_splits["testing"][:1]
    (dst / "database_split").mkdir(parents=True)
    for name, patients in ids.items():
        (dst / "database_split" / f"subgroup_{name}.txt").write_text("\n".join(patients) + "\n")
        for patient in patients:
            shutil.copytree(camus_root / "database_nifti" / patient, dst / "database_nifti" / patient)
    return dst


def test_real_camus_subset_shallow_check(camus_root):
    report = check_data("camus", camus_root, deep=False)
    assert (report.patients, report.items, report.errors) == (499, 998, [])
    assert report.splits == {"train": 798, "val": 100, "test": 100}
    assert report.labels["view"]["counts"] == {"A4C": 998}


def test_deep_check_reads_every_item_and_reports_damage(camus_copy, capsys):
    assert main(["data", "check", "--format", "camus", str(camus_copy), "--json"]) == 0
    good = json.loads(capsys.readouterr().out)
    assert (good["patients"], good["items"], good["readable_items"], good["errors"]) == (6, 12, 12, [])
    # one truncated image and one zero-byte mask: two bad items, every other item still readable
    image = camus_copy / "database_nifti/patient0002/patient0002_4CH_ES.nii.gz"
    image.write_bytes(image.read_bytes()[:200])
    mask = camus_copy / "database_nifti/patient0003/patient0003_4CH_ED_gt.nii.gz"
    mask.write_bytes(b"")
    assert main(["data", "check", "--format", "camus", str(camus_copy), "--json"]) == 1
    damaged = json.loads(capsys.readouterr().out)
    paths = {e["path"] for e in damaged["errors"]}
    assert any("patient0002_4CH_ES.nii.gz" in p for p in paths), damaged["errors"]
    assert any("patient0003_4CH_ED_gt.nii.gz" in p for p in paths), damaged["errors"]
    assert damaged["readable_items"] == 10 and damaged["patients"] == 6
    # the text form lists the same problems, one per line, with the file and the reason
    assert main(["data", "check", "--format", "camus", str(camus_copy)]) == 1
    text = capsys.readouterr().out
    assert "problems: 2" in text and "patient0002_4CH_ES.nii.gz" in text


def test_unusable_root_exits_2_with_the_reason(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", "--format", "echonet-dynamic", str(tmp_path / "empty"), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["readable_items"] == 0
    assert any("FileList.csv" in e["path"] or "FileList.csv" in e["reason"] for e in report["errors"])


def test_missing_root_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "check", "--format", "camus", str(tmp_path / "nope"), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert "does not exist" in report["errors"][0]["reason"]
