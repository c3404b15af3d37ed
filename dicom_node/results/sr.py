"""The study's classification as a Comprehensive SR with a TID 1500 Measurement Report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset

from dicom_node.eligibility import OUR_MANUFACTURER
from dicom_node.results import codes
from dicom_node.results.algorithm import Algorithm
from dicom_node.results.inherited import repair_inherited

SERIES_DESCRIPTION = "cxr-triage report - NOT FOR DIAGNOSTIC USE"


@dataclass(frozen=True)
class ImageResult:
    """Classification of one source image."""

    source: Dataset  # the source radiograph's header
    label: str
    probabilities: dict[str, float]


@dataclass(frozen=True)
class StudyResult:
    """The study-level decision and how it was reached."""

    label: str
    priority: str  # urgent, soon or routine
    thresholds: dict[str, float]


def _group(
    index: int, image: ImageResult, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    finding = codes.FINDING_CODES[image.label]
    measurements = [
        hd.sr.Measurement(name=codes.PROBABILITY_CODES[label], value=float(p), unit=codes.NO_UNITS)
        for label, p in image.probabilities.items()
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"image {index}: {image.source.SOPInstanceUID}"
        ),
        algorithm_id=algorithm,
        # TID 1501 "Finding" (DCM 121071); set once, as finding_type, never also as a
        # qualitative evaluation of the same name (dsrdump would show it twice).
        finding_type=finding,
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image.source)],
    )


def build_report(
    images: Sequence[ImageResult],
    study: StudyResult,
    *,
    evidence: Sequence[Dataset],
    algorithm: Algorithm,
    series_instance_uid: str,
    sop_instance_uid: str,
    device_uid: str,
    series_number: int = 9902,
) -> hd.sr.ComprehensiveSR:
    """Build the SR: one measurement group per image plus one for the study-level result.

    Parameters
    ----------
    images : sequence of ImageResult
        One per classified source image, in instance order.
    evidence : sequence of pydicom.dataset.Dataset
        Every object the report refers to: the source images and the Grad-CAM SCs.
    algorithm : Algorithm
        The model that made the results (its weights digest goes in the parameters).

    Raises
    ------
    ValueError
        If there is no image, or a label or priority has no code.
    """
    if not images:
        raise ValueError("a report needs at least one classified image")
    for label in [study.label, *(i.label for i in images)]:
        if label not in codes.FINDING_CODES:
            raise ValueError(f"no code for label {label!r}")
    if study.priority not in codes.PRIORITY_CODES:
        raise ValueError(f"unknown priority {study.priority!r}")
    # highdicom writes one "Algorithm Parameters" TEXT item per element it iterates over, so
    # each element carries both the name and the value.
    parameters = [f"threshold {k}={v:.3f}" for k, v in sorted(study.thresholds.items())]
    parameters.append(f"weights sha256={algorithm.weights_sha256}")
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=parameters,
    )
    groups = [_group(i + 1, img, algorithm_id) for i, img in enumerate(images)]
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="study"),
            algorithm_id=algorithm_id,
            finding_type=codes.FINDING_CODES[study.label],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    codes.TRIAGE_PRIORITY, codes.PRIORITY_CODES[study.priority]
                ),
            ],
            finding_category=codes.STUDY_RESULT,
        )
    )
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid,
            name=OUR_MANUFACTURER,
            manufacturer_name=OUR_MANUFACTURER,
            model_name=algorithm.name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_CHEST_XRAY,
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=OUR_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    repair_inherited(sr)
    sr.SeriesDescription = SERIES_DESCRIPTION
    sr.ManufacturerModelName = algorithm.name
    sr.SoftwareVersions = algorithm.version
    return sr
