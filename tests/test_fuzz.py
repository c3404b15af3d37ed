"""A bounded, seeded fuzz run against a live node in its own process (the long run: bench/fuzz.py).

300 malformed and valid inputs of every kind in :data:`tests.fuzzing.KINDS`; after every batch of
50 the node must be alive, answer C-ECHO within 5 s, have nothing left in ``spool/incoming/``,
stay under 1.5 GiB RSS, and every ``0x0000`` must match a row and the bytes sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzzing import KINDS, Campaign, NodeProcess
from tests.services import free_port

SEED = 20261126
COUNT = 300


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")  # invalid on purpose
@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.filewriter")  # 10 MiB names
@pytest.mark.slow
def test_seeded_fuzz_run_keeps_every_invariant(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", free_port())
    try:
        report = Campaign(node, seed=SEED).run(COUNT, batch=50)
    finally:
        node.stop()
    log = (tmp_path / "node.log").read_text(errors="replace")
    assert report.sent == COUNT
    assert report.crashes == 0, log[-4000:]
    assert report.wedges == 0, log[-4000:]
    assert report.leftovers == 0
    assert report.unmatched_successes == []
    assert report.internal_errors == []  # 0xC211 means a bug in the node
    assert set(report.kinds) == set(KINDS)  # every kind was drawn
    # Both outcomes occur: valid inputs are stored, malformed ones are refused.
    assert report.results["0x0000"] > 0 and report.results["0xC210"] > 0
    assert "Traceback" not in log  # hostile input costs one log line, never a traceback
