"""The ``cxr-triage`` command line: one module per subcommand."""

import argparse

from dicom_node.addresses import Destination


def destination(text: str) -> Destination:
    """argparse type for ``AET@HOST:PORT`` that keeps the parser's explanation."""
    try:
        return Destination.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
