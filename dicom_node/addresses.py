"""Parsing ``AET@host:port`` peer addresses."""

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


def parse_destinations(text: str) -> list[Destination]:
    """Parse a comma-separated list of ``AET@host:port``; empty text gives an empty list."""
    return [Destination.parse(part) for part in text.split(",") if part.strip()]
