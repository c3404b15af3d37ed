"""The ``cxr-triage`` command line: one module per subcommand."""
