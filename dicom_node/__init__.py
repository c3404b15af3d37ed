"""Everything DICOM for cxr-triage: receiving, eligibility, spool, completion and sending.

This package never imports TensorFlow, Celery or the database layer. Where the listener must
record an instance or queue a study it calls the small interfaces in
:mod:`dicom_node.interfaces`, which the application hands it at start-up.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
