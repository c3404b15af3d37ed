"""The study's classification as a Comprehensive SR with a TID 1500 Measurement Report."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.eligibility import OUR_MANUFACTURER
from dicom_node.results import codes, wording
from dicom_node.results.algorithm import Algorithm
from dicom_node.results.inherited import complete_series, repair_inherited, with_type2
from dicom_node.results.triage import NOT_FLAGGED, Triage


@dataclass(frozen=True)
class ImageResult:
    """Classification of one source image, and where its evidence is.

    ``peak`` is the (column, row) of the heatmap's maximum in source pixels; ``region`` the
    (left, top, right, bottom) box the model looked at (the lungs), also in source pixels;
    ``heatmap`` the header of the Grad-CAM SC of this image.
    """

    source: Dataset  # the source radiograph's header
    triage: Triage
    probabilities: dict[str, float]
    peak: tuple[float, float] | None = None
    region: tuple[float, float, float, float] | None = None
    heatmap: Dataset | None = None

    @property
    def label(self) -> str:
        return self.triage.label


def tracking_uid(document_uid: str, name: str) -> str:
    """A Tracking UID that is the same every time the same document is built (2.25 form)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{document_uid}/{name}').int}"


def _region(image: ImageResult, *, outline: bool = False) -> hd.sr.ImageRegion:
    """A POINT at the heatmap's peak for a finding; otherwise (a normal image, or ``outline``)
    the box the model analysed."""
    ref = hd.sr.SourceImageForRegion.from_source_image(image.source)
    if not outline and image.triage.band != NOT_FLAGGED and image.peak is not None:
        return hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=np.array([image.peak], dtype=float),
            source_image=ref,
        )
    left, top, right, bottom = image.region or (
        0.0,
        0.0,
        float(image.source.Columns),
        float(image.source.Rows),
    )
    corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(corners, dtype=float),
        source_image=ref,
    )


def _summary_item(text: str) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations container holding the one-sentence summary."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.SUMMARY,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return container


def _group(
    index: int, image: ImageResult, algorithm: hd.sr.AlgorithmIdentification, document_uid: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one image: viewers that draw SR measurements need the SCOORD."""
    measurements = [
        hd.sr.Measurement(
            name=codes.PROBABILITY_CODES[label],
            # In percent, one decimal (three digits): "Probability of COVID-19: 91.2 %" reads
            # in any viewer; more digits are noise.
            value=round(100 * float(p), 1),
            unit=codes.PERCENT,
        )
        for label, p in sorted(image.probabilities.items(), key=lambda kv: -kv[1])
    ]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(document_uid, f"image {index}"),
            identifier=(
                f"image {index}: {wording.headline(image.triage)}; "
                f"{wording.ranked(image.probabilities)}"
            ),
        ),
        referenced_region=_region(image),
        # TID 1501 "Finding" (DCM 121071); set once, as finding_type, never also as a
        # qualitative evaluation of the same name (dsrdump would show it twice).
        finding_type=codes.FINDING_CODES[image.label],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[_band(image.triage)],
    )
    if image.heatmap is not None:
        group[0].ContentSequence.append(
            hd.sr.ImageContentItem(
                name=codes.ILLUSTRATION_OF_ROI,
                referenced_sop_class_uid=image.heatmap.SOPClassUID,
                referenced_sop_instance_uid=image.heatmap.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _band(t: Triage) -> hd.sr.QualitativeEvaluation:
    """Flagged / indeterminate / not flagged, so "COVID-19" below its threshold never reads as
    a COVID-19 finding."""
    return hd.sr.QualitativeEvaluation(codes.TRIAGE_BAND, codes.BAND_CODES[t.band])


def build_report(
    images: Sequence[ImageResult],
    study: Triage,
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
    parameters = [f"threshold {k}={v:.4f}" for k, v in sorted(study.thresholds.items())]
    if study.operating_point:
        parameters.append(f"operating point={study.operating_point}"[:1024])
    parameters.append(f"weights sha256={algorithm.weights_sha256}")
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=parameters,
        family=codes.ALGORITHM_FAMILY,
    )
    groups: list[Any] = [
        _group(i + 1, img, algorithm_id, sop_instance_uid) for i, img in enumerate(images)
    ]
    # Viewers that draw SR measurements (OHIF) need a SCOORD in every group, the study's too:
    # it outlines the region analysed in the first image.
    groups.append(
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=tracking_uid(sop_instance_uid, "study"),
                identifier=f"study: {wording.headline(study)}",
            ),
            referenced_region=_region(images[0], outline=True),
            algorithm_id=algorithm_id,
            finding_type=codes.FINDING_CODES[study.label],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    codes.TRIAGE_PRIORITY, codes.PRIORITY_CODES[study.priority]
                ),
                _band(study),
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
    content = report[0]
    content.ContentSequence.append(
        _summary_item(wording.summary(study, [i.probabilities for i in images]))
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[with_type2(ds) for ds in evidence],
        content=content,
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
    complete_series(sr)
    sr.SeriesDescription = wording.series_description(study, "report")
    sr.ManufacturerModelName = algorithm.name
    sr.SoftwareVersions = algorithm.version
    return sr
