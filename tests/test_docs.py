"""The documents name files that exist: a moved module must take its references along."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A path in backticks that starts at one of the project's top-level folders.
_PATH = re.compile(
    r"`((?:dicom_node|worker|models|tests|bench|docker|migrations|\.ci|docs)/[\w/.\-]+)`"
)


def _named_paths(text: str) -> list[str]:
    return [p.rstrip("/.") for p in _PATH.findall(text)]


def test_every_path_the_documents_name_exists() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    documents += [p for p in [ROOT / "MODEL_CARD.md"] if p.exists()]
    missing = [
        f"{doc.relative_to(ROOT)}: {path}"
        for doc in documents
        for path in _named_paths(doc.read_text(encoding="utf-8"))
        if not (ROOT / path).exists()
    ]
    assert missing == []
    # The check can fail: a moved module's old path is caught.
    assert _named_paths("see `dicom_node/server.py` and `worker/settings.py`.") == [
        "dicom_node/server.py",
        "worker/settings.py",
    ]
    assert not (ROOT / "dicom_node/server.py").exists()
