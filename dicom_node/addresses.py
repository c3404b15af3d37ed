"""Parsing destinations: ``AET@host:port`` (DIMSE), ``stow+http(s)://…`` (DICOMweb) and
``hl7+mllp://host:port`` (HL7 v2 results over MLLP) and ``fhir+http(s)://…`` (FHIR R4)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: 16 chars, no backslash


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not _AE_RE.fullmatch(self.ae_title) or not self.ae_title.strip():
            raise ValueError(f"invalid AE title {self.ae_title!r} (1-16 printable characters)")
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port}")
        if not self.host:
            raise ValueError("empty host")

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AET@host:port`` (IPv6 hosts in brackets: ``AET@[::1]:104``).

        Raises
        ------
        ValueError
            With a message that shows the expected form.
        """
        match = re.fullmatch(r"\s*([^@]+)@(\[[^\]]+\]|[^:\[\]]+):(\d+)\s*", text)
        if not match:
            raise ValueError(f"{text!r} is not of the form AET@host:port")
        ae, host, port = match.groups()
        return cls(ae_title=ae, host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb STOW-RS service: results are POSTed to ``<base_url>/studies``."""

    base_url: str  # http(s)://host[:port]/path, no trailing slash

    PREFIX = "stow+"

    @classmethod
    def parse(cls, text: str) -> StowDestination:
        """Parse ``stow+http://host:8042/dicom-web`` (or ``stow+https://…``).

        Credentials do not belong in the URL (it is logged and stored with every delivery):
        they come from CXR_STOW_BEARER_TOKEN or CXR_STOW_BASIC_AUTH.
        """
        url = text.strip().removeprefix(cls.PREFIX)
        match = re.fullmatch(r"(https?)://([^/@\s]+)(/[^\s]*)?", url)
        if not text.strip().startswith(cls.PREFIX) or not match:
            raise ValueError(f"{text!r} is not of the form stow+http(s)://host[:port]/path")
        return cls(url.rstrip("/"))

    def __str__(self) -> str:
        return self.PREFIX + self.base_url


@dataclass(frozen=True)
class Hl7Destination:
    """An HL7 v2 receiver (RIS, worklist, interface engine) over MLLP: it gets one ORU^R01 per
    study, made from the study's SR (:mod:`dicom_node.hl7`)."""

    host: str
    port: int

    PREFIX = "hl7+mllp://"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port}")
        if not self.host:
            raise ValueError("empty host")

    @classmethod
    def parse(cls, text: str) -> Hl7Destination:
        """Parse ``hl7+mllp://host:port`` (IPv6 hosts in brackets)."""
        match = re.fullmatch(
            re.escape(cls.PREFIX) + r"(\[[^\]]+\]|[^:/\[\]\s]+):(\d+)/?", text.strip()
        )
        if not match:
            raise ValueError(f"{text!r} is not of the form hl7+mllp://host:port")
        host, port = match.groups()
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.PREFIX}{host}:{self.port}"


@dataclass(frozen=True)
class FhirDestination:
    """A FHIR R4 server: each study's result is POSTed to ``base_url`` as a transaction Bundle
    made from its SR (:mod:`dicom_node.fhir`); credentials as for STOW-RS."""

    base_url: str  # http(s)://host[:port]/path, no trailing slash

    PREFIX = "fhir+"

    @classmethod
    def parse(cls, text: str) -> FhirDestination:
        """Parse ``fhir+https://host/fhir`` (or ``fhir+http://…``)."""
        url = text.strip().removeprefix(cls.PREFIX)
        match = re.fullmatch(r"(https?)://([^/@\s]+)(/[^\s]*)?", url)
        if not text.strip().startswith(cls.PREFIX) or not match:
            raise ValueError(f"{text!r} is not of the form fhir+http(s)://host[:port]/path")
        return cls(url.rstrip("/"))

    def __str__(self) -> str:
        return self.PREFIX + self.base_url


#: Where results may be sent.
AnyDestination = Destination | StowDestination | Hl7Destination | FhirDestination


def carries(destination: AnyDestination, kind: str) -> bool:
    """Whether ``destination`` takes objects of ``kind`` ("sc" or "sr"): an HL7 receiver or a
    FHIR server gets the study's result, made from its SR, and no pictures."""
    return kind == "sr" if isinstance(destination, Hl7Destination | FhirDestination) else True


def parse_destination(text: str) -> AnyDestination:
    """``stow+http(s)://…`` is a STOW-RS service, ``hl7+mllp://host:port`` an HL7 receiver,
    ``fhir+http(s)://…`` a FHIR server; anything else must be ``AET@host:port``."""
    if text.strip().startswith(StowDestination.PREFIX):
        return StowDestination.parse(text)
    if text.strip().startswith(Hl7Destination.PREFIX):
        return Hl7Destination.parse(text)
    if text.strip().startswith(FhirDestination.PREFIX):
        return FhirDestination.parse(text)
    return Destination.parse(text)


def parse_destinations(text: str) -> list[AnyDestination]:
    """Parse a comma-separated list of destinations; empty text gives an empty list."""
    return [parse_destination(part) for part in text.split(",") if part.strip()]
