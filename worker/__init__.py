"""The cxr-triage application: settings, database, queue, pipeline and the command line."""

__version__ = "0.1.0"
