"""``validate`` and ``calibrate`` on a hospital's own labelled DICOM files, and their bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.local_validation import site_thresholds, wilson
from models.site_eval import NORMAL
from tests import factories
from tests.services import shared_file

CLI = [sys.executable, "-m", "worker.cli.main"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, **(env or {})},
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], command: str, words: str) -> None:
    """Exit 2 and our error in one line (TensorFlow's start-up lines may stand beside it)."""
    ours = [line for line in proc.stderr.splitlines() if line.startswith(f"cxr-triage {command}:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(ours) == 1 and words in ours[0], proc.stderr


def _hospital_folder(root: Path) -> Path:
    """Labelled PA chest DICOM files, as a hospital would export them: real films from the
    labelled collections in a real DICOM header (several per class)."""
    header = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    data = header.parents[1]
    picks = {
        "normal": ["cxr_sites/normal/nih-", "cxr3/normal/kaggle-Normal"],
        "covid": ["cxr_sites/covid/siim-", "cxr3/covid/kaggle-COVID"],
        "pneumonia": ["cxr3/pneumonia/quex-"],
    }
    for label, prefixes in picks.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        n = 0
        for prefix in prefixes:
            folder, stem = prefix.rsplit("/", 1)
            files = sorted((data / folder).glob(f"{stem}*"))[:4]
            if not files:
                pytest.skip(f"no {prefix} files in ../shared/data")
            for picture in files:
                ds = factories.chest_from_picture(picture, header, f"{label}-{n}")
                ds.save_as(root / label / f"{label}-{n}.dcm", enforce_file_format=True)
                n += 1
    return root


@pytest.mark.slow
def test_validate_and_calibrate_a_folder_and_a_manifest(tmp_path: Path) -> None:
    folder = _hospital_folder(tmp_path / "hospital")
    out = tmp_path / "report"
    proc = _cli("validate", "--data", str(folder), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "specificity" in proc.stdout and "operating point" in proc.stdout
    report = json.loads((out / "validation.json").read_text())
    assert report["n_files"] == 20 and report["n_classified"] + report["refused"]["n"] == 20
    assert report["operating_point"] == "model card"  # 3.0.0 ships its thresholds
    spec = report["at_thresholds"]["specificity"]
    assert spec["n"] == report["by_label"]["normal"] and spec["ci95"][0] <= spec["value"]
    assert set(report["by_attribute"]) == {"ViewPosition", "Modality", "Manufacturer"}
    assert list(report["by_attribute"]["Modality"]) == ["CR"]
    low = report["low_confidence"]  # the shipped model has a familiarity index
    assert 0 <= low["n"] <= report["n_classified"] and "low confidence" in proc.stdout
    usual = low["at_thresholds_usual_confidence"]["specificity"]["n"]
    assert usual + low["at_thresholds_low_confidence"]["specificity"]["n"] == spec["n"]
    page = (out / "validation.html").read_text()
    assert "Not for diagnostic use" in page and page.count("data:image/png;base64,") == 3

    # The same files as a manifest somewhere else, calibrated for a target sensitivity.
    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "ward"])
        for p in sorted(folder.rglob("*.dcm")):
            writer.writerow([str(p.relative_to(tmp_path)), p.parent.name, "A"])
    site_file = tmp_path / "site.json"
    proc = _cli(
        "calibrate", "--data", str(manifest), "--target-sensitivity", "0.9",
        "--out", str(site_file), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    site = json.loads(site_file.read_text())
    assert site["target"] == "sensitivity 0.90" and site["temperature"] > 0
    assert len(site["data"]["sha256"]) == 64 and site["data"]["n"] == report["n_classified"]
    covid = site["figures"]["sensitivity_covid"]
    assert covid["value"] >= 0.9  # the target holds on the data it was fitted on

    # The worker's operating point is now the site's, and validate says so.
    proc = _cli(
        "validate", "--data", str(manifest), "--out", str(tmp_path / "again"), "--quiet",
        env={"CXR_SITE_CALIBRATION": str(site_file)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "again" / "validation.json").read_text())
    assert (
        again["operating_point"].startswith("site calibration") and "n=" in again["operating_point"]
    )
    assert again["thresholds"] == site["thresholds"]
    assert again["at_thresholds"]["sensitivity_covid"]["value"] >= 0.9

    # A site file made for other weights is refused, in one line.
    site["model"]["weights_sha256"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(site))
    proc = _cli(
        "validate", "--data", str(folder), "--out", str(tmp_path / "no"), "--quiet",
        env={"CXR_SITE_CALIBRATION": str(other)},
    )  # fmt: skip
    _one_line_error(proc, "validate", "calibrate again")
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    # A manifest row without a label.
    (tmp_path / "a.dcm").write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\na.dcm,\n")
    out = tmp_path / "out"
    _one_line_error(
        _cli("validate", "--data", str(manifest), "--out", str(out)), "validate", "has no label"
    )
    # One class only.
    only = tmp_path / "only"
    (only / "normal").mkdir(parents=True)
    (only / "normal" / "x.png").write_bytes(b"not really")
    proc = _cli("calibrate", "--data", str(only), "--target-specificity", "0.9", "--out", str(out))
    _one_line_error(proc, "calibrate", "only normal films")
    # An unreadable file among good labels.
    mixed = tmp_path / "mixed"
    for label in ("normal", "covid"):
        (mixed / label).mkdir(parents=True)
        (mixed / label / "broken.dcm").write_bytes(b"DICM? no")
    _one_line_error(
        _cli("validate", "--data", str(mixed), "--out", str(out)), "validate", "broken.dcm"
    )
    # A target outside (0, 1).
    proc = _cli("calibrate", "--data", str(mixed), "--target-sensitivity", "90", "--out", str(out))
    _one_line_error(proc, "calibrate", "between 0 and 1")
    assert not out.exists()


def test_site_thresholds_meet_their_targets() -> None:
    rng = np.random.default_rng(0)
    y = np.array([NORMAL] * 200 + [1] * 100 + [2] * 50)
    probs = rng.dirichlet([1, 1, 1], len(y))
    probs[y == 1, 1] += 0.5
    probs /= probs.sum(1, keepdims=True)
    current = {"covid": 0.5, "pneumonia": 0.5}
    th = site_thresholds(y, probs, target_sensitivity=0.9, current=current)
    assert (probs[y == 1, 1] >= th["covid"]).mean() >= 0.9
    assert (probs[y == 2, 2] >= th["pneumonia"]).mean() >= 0.9
    th = site_thresholds(y, probs, target_specificity=0.95, current=current)
    assert (probs[y == NORMAL, 1] >= th["covid"]).mean() <= 0.05
    # One more normal over the line would break it: the threshold is the lowest.
    assert (probs[y == NORMAL, 1] >= th["covid"] - 2e-6).mean() > 0.05
    with pytest.raises(ValueError, match="exactly one"):
        site_thresholds(y, probs, current=current)
    assert (
        site_thresholds(y[:300], probs[:300], target_sensitivity=0.9, current=current)["pneumonia"]
        == 0.5
    )  # no pneumonia films here: the current threshold stays


def test_wilson_interval() -> None:
    low, high = wilson(45, 50) or (0, 0)
    assert 0.78 < low < 0.79 and 0.95 < high < 0.96
    assert wilson(0, 0) is None and wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-3))
