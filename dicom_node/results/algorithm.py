"""The algorithm that made a result, as the SC and SR name it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    """Name, version and weights digest: one model, wherever a result is attributed to it."""

    name: str
    version: str
    weights_sha256: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"
