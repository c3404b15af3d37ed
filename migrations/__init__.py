"""Alembic migrations (shipped as a package so installed copies can upgrade their database)."""
