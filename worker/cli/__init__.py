"""The ``cxr-triage`` command line: one module per subcommand."""

import argparse

from dicom_node.addresses import Destination

#: ``echo`` and ``send`` call as this by default: a tool, not the node (CXR_AE_TITLE), so a
#: node's allow-list and audit never see the node calling itself.
CLIENT_AE_TITLE = "CXR_SCU"


def destination(text: str) -> Destination:
    """argparse type for ``AET@HOST:PORT`` that keeps the parser's explanation."""
    try:
        return Destination.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
