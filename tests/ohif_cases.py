"""Screenshots of the SR in OHIF 3.13.2 for the five decision cases of docs/results.md.

``python -m tests.ohif_cases OUT`` builds, for each case, the SC and SR that the worker would
write for it with the shipped builders: the case's probabilities (``CASES``, at thresholds of
50%), a real CR from ``../shared/data/dicom``, and the lung box the shipped lung model finds on
it. It stores them in a private Orthanc, opens each study in OHIF (``tests.ohif.look``) and
copies the SR's screenshot to ``OUT/ohif-case-<name>.png``. The probabilities are the cases',
not the classifier's output on that film: the point is what a reader sees for each decision.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pydicom
from pydicom.uid import UID

from dicom_node.results.algorithm import Algorithm
from dicom_node.results.sc import build_gradcam_sc
from dicom_node.results.sr import ImageResult, build_report
from dicom_node.uids import new_uid
from tests.ohif import look
from tests.orthanc import Orthanc
from tests.services import shared_file

THRESHOLDS = {"covid": 0.5, "pneumonia": 0.5}
CASES = {
    "confident-covid": [{"normal": 0.02, "covid": 0.97, "pneumonia": 0.01}],
    "covid-below-threshold": [{"normal": 0.35, "covid": 0.48, "pneumonia": 0.17}],
    "borderline-normal": [{"normal": 0.55, "covid": 0.44, "pneumonia": 0.01}],
    "normal": [{"normal": 0.96, "covid": 0.03, "pneumonia": 0.01}],
    "two-images": [
        {"normal": 0.96, "covid": 0.03, "pneumonia": 0.01},
        {"normal": 0.02, "covid": 0.97, "pneumonia": 0.01},
    ],
}
SOURCE = "cr_pa_chest_jpeg_baseline.dcm"


def _lung_box(ds: pydicom.Dataset) -> tuple[float, float, float, float]:
    from models.imaging import dicom_to_image
    from models.lungs import load_lung_model

    found = load_lung_model().find([dicom_to_image(ds)])[0]
    b = found.box
    return (float(b.left), float(b.top), float(b.left + b.cols), float(b.top + b.rows))


def _study(name: str, folder: Path, box: tuple[float, float, float, float]) -> tuple[str, list]:
    """The case's source images, SCs and SR as files in ``folder``."""
    import numpy as np

    from worker.decision import operating_point

    study, triages = operating_point(
        {"thresholds": THRESHOLDS, "rule": "50% (illustration)"}, None, None
    ).decide(CASES[name])
    study_uid, series_uid = new_uid(), new_uid()
    algorithm = Algorithm("cxr-triage-illustration", "0", "0" * 64)
    files, results, evidence = [], [], []
    for n, (probs, triage) in enumerate(zip(CASES[name], triages, strict=True)):
        src = pydicom.dcmread(shared_file(SOURCE))
        src.StudyInstanceUID, src.SeriesInstanceUID = study_uid, series_uid
        src.SOPInstanceUID = src.file_meta.MediaStorageSOPInstanceUID = UID(new_uid())
        src.InstanceNumber = n + 1
        grey = src.pixel_array.astype(np.float32)
        grey = 255 * (grey - grey.min()) / max(1.0, float(grey.max() - grey.min()))
        overlay = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # single-component patient names
            sc = build_gradcam_sc(
                src,
                overlay,
                triage=triage,
                heatmap_label=max(THRESHOLDS, key=lambda k: probs[k]),
                algorithm=algorithm,
                series_instance_uid=new_uid(),
                sop_instance_uid=new_uid(),
                instance_number=n + 1,
            )
        results.append(ImageResult(src, triage, probs, region=box, heatmap=sc))
        evidence += [src, sc]
        files += [src, sc]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sr = build_report(
            results,
            study,
            evidence=evidence,
            algorithm=algorithm,
            series_instance_uid=new_uid(),
            sop_instance_uid=new_uid(),
            device_uid=new_uid(),
        )
    paths = []
    for i, ds in enumerate([*files, sr]):
        path = folder / f"{name}-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for ohif-case-<name>.png")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        box = _lung_box(pydicom.dcmread(shared_file(SOURCE)))
        orthanc = Orthanc(work / "orthanc", node_port=1, dicomweb=True)
        orthanc.start()
        try:
            for name in CASES:
                uid, paths = _study(name, work, box)
                for path in paths:
                    orthanc.post("/instances", path.read_bytes())
                seen = look(orthanc.http_socket, uid, work / "shots" / name)
                (sr,) = [s for s in seen.series if s["thumbnail"].startswith("SR")]
                drawn = " | ".join(sr["annotations"])
                print(f"{name}: {sr['thumbnail']} | drawn: {drawn}", flush=True)
                shutil.copyfile(sr["screenshot"], args.out / f"ohif-case-{name}.png")
        finally:
            orthanc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
