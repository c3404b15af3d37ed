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

    ``region`` is the (left, top, right, bottom) box the model looked at (the lungs), in source
    pixels; ``heatmap`` the header of the Grad-CAM SC of this image (it shows where the
    evidence is).
    """

    source: Dataset  # the source radiograph's header
    triage: Triage
    probabilities: dict[str, float]
    region: tuple[float, float, float, float] | None = None
    heatmap: Dataset | None = None

    @property
    def label(self) -> str:
        return self.triage.label


def tracking_uid(document_uid: str, name: str) -> str:
    """A Tracking UID that is the same every time the same document is built (2.25 form)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{document_uid}/{name}').int}"


def _regions(image: ImageResult, count: int) -> list[list[hd.sr.CoordinatesForMeasurement]]:
    """The SCOORDs each of ``count`` ranked probabilities is inferred from.

    A finding (flagged or indeterminate): every probability hangs from the lungs' outline, where
    the model read it. A normal image gets no outline, which would look like a finding's. The
    first also carries a point at the image's corner whose purpose says it is a viewer's text
    anchor: OHIF 3.13 draws nothing for a group without a SCOORD, draws one SCOORD per NUM and
    hangs the text right of the first one's right-most point, so the text stays on the image.
    """
    ref = hd.sr.SourceImageForRegion.from_source_image(image.source)
    anchor = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([(0.0, 0.0)]),
        source_image=ref,
        purpose=codes.TEXT_ANCHOR,
    )
    if image.triage.band == NOT_FLAGGED:
        return [[anchor]] + [[] for _ in range(count - 1)]
    left, top, right, bottom = image.region or (
        0.0,
        0.0,
        float(image.source.Columns),
        float(image.source.Rows),
    )
    corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
    outline = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(corners, dtype=float),
        source_image=ref,
    )
    return [[anchor, outline]] + [[outline] for _ in range(count - 1)]


def _percent_value(p: float) -> float:
    """A probability as a NUM in percent: one decimal (more digits are noise), but never 0.0
    for a value above zero (OHIF 3.13 prints a zero NUM as a blank)."""
    value = round(100 * float(p), 1)
    return value if value or not p else float(f"{100 * float(p):.2g}")


def _text(name: Any, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _code(name: Any, value: Any) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _study_evaluations(study: Triage, text: str) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations of the whole report: the study's finding, band and
    priority, and the one-sentence summary."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            _code(codes.FINDING, codes.FINDING_CODES[study.label]),
            _code(codes.TRIAGE_BAND, codes.BAND_CODES[study.band]),
            _code(codes.TRIAGE_PRIORITY, codes.PRIORITY_CODES[study.priority]),
            *(
                [_code(codes.MODEL_CONFIDENCE, codes.CONFIDENCE_CODES[study.low_confidence])]
                if study.low_confidence is not None
                else []
            ),
            _text(codes.SUMMARY, text),
        ]
    )
    return container


def _group(
    index: int, image: ImageResult, algorithm: hd.sr.AlgorithmIdentification, document_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one image. Its regions hang from the probabilities (TID 300, INFERRED
    FROM), not from the group: OHIF 3.13 then draws the group's comment, the result line, above
    the probabilities on the image (for a group with its own SCOORD it draws the NUMs only)."""
    ranked = sorted(image.probabilities.items(), key=lambda kv: -kv[1])
    measurements = [
        hd.sr.Measurement(
            name=codes.PROBABILITY_CODES[label],
            value=_percent_value(p),
            unit=codes.PERCENT,
            referenced_coordinates=regions or None,
        )
        for (label, p), regions in zip(ranked, _regions(image, len(ranked)), strict=True)
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(document_uid, f"image {index}"),
            identifier=(
                f"image {index}: {wording.headline(image.triage)}; "
                f"{wording.ranked(image.probabilities)}"
            ),
        ),
        # TID 1501 "Finding" (DCM 121071); set once, as finding_type, never also as a
        # qualitative evaluation of the same name (dsrdump would show it twice).
        finding_type=codes.FINDING_CODES[image.label],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.TRIAGE_BAND, codes.BAND_CODES[image.triage.band]),
            hd.sr.QualitativeEvaluation(
                codes.TRIAGE_PRIORITY, codes.PRIORITY_CODES[image.triage.priority]
            ),
            *(
                [
                    hd.sr.QualitativeEvaluation(
                        codes.MODEL_CONFIDENCE,
                        codes.CONFIDENCE_CODES[image.triage.low_confidence],
                    )
                ]
                if image.triage.low_confidence is not None
                else []
            ),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image.source)],
    )
    items = group[0].ContentSequence
    items.append(_text(codes.SUMMARY, wording.viewer_line(image.triage)))
    if image.heatmap is not None:
        items.append(
            hd.sr.ImageContentItem(
                name=codes.ILLUSTRATION_OF_ROI,
                referenced_sop_class_uid=image.heatmap.SOPClassUID,
                referenced_sop_instance_uid=image.heatmap.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


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
    # One group per image and no study group: a second outline on the first image read as a
    # second finding. The study's result is the report's own qualitative evaluation.
    groups: list[Any] = [
        _group(i + 1, img, algorithm_id, sop_instance_uid) for i, img in enumerate(images)
    ]
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
        _study_evaluations(study, wording.summary(study, [i.probabilities for i in images]))
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
