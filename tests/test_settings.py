from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.settings import (
    Settings,
    default_data_dir,
    get_settings,
    load_settings,
    unknown_environment_names,
)


def test_defaults_need_no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    s = Settings()
    assert s.ae_title == "CXR_TRIAGE" and s.port == 11112 and s.bind == "127.0.0.1"
    assert s.data_dir == default_data_dir() == tmp_path / "cxr-triage"
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'cxr-triage' / 'cxr-triage.sqlite'}"
    assert s.effective_broker_url.startswith("sqla+sqlite:///")
    assert s.allowed_calling_aets == [] and s.destinations == []
    assert s.should_auto_migrate


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_ALLOWED_CALLING_AETS", "MOD1, PACS ,")
    monkeypatch.setenv("CXR_DESTINATIONS", "PACS@127.0.0.1:4242,ARCHIVE@[::1]:104")
    monkeypatch.setenv("CXR_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    monkeypatch.setenv("CXR_PORT", "104")
    s = Settings()
    assert s.allowed_calling_aets == ["MOD1", "PACS"]
    assert [str(d) for d in s.destinations] == ["PACS@127.0.0.1:4242", "ARCHIVE@[::1]:104"]
    assert s.effective_database_url == "postgresql+psycopg://u@127.0.0.1/db"
    assert not s.should_auto_migrate
    assert s.port == 104


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CXR_PORT": "70000"}, "port"),
        ({"CXR_AE_TITLE": "A" * 17}, "ae_title"),
        ({"CXR_DESTINATIONS": "PACS@host"}, "AET@host:port"),
        ({"CXR_TLS_CERT": "/x.pem"}, "together"),
        ({"CXR_UID_ROOT": "1.2.3"}, "uid_root"),
        ({"CXR_NO_SUCH_SETTING": "1"}, None),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict, message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if message is None:
        Settings()  # unknown environment variables are ignored, not fatal ...
        assert unknown_environment_names() == ["CXR_NO_SUCH_SETTING"]  # ... but reported
        return
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_toml_file_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "cxr.toml"
    cfg.write_text('ae_title = "FROM_FILE"\nport = 4006\nallowed_calling_aets = ["A", "B"]\n')
    s = load_settings(cfg)
    assert (s.ae_title, s.port, s.allowed_calling_aets) == ("FROM_FILE", 4006, ["A", "B"])
    monkeypatch.setenv("CXR_PORT", "4007")
    assert load_settings(cfg).port == 4007  # environment wins over the file
    cfg.write_text("no_such_setting = 1\n")
    with pytest.raises(ValidationError, match="no_such_setting"):
        load_settings(cfg)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_get_settings_is_cached() -> None:
    get_settings.cache_clear()
    assert get_settings() is get_settings()
    get_settings.cache_clear()


def test_the_lease_is_short_and_independent_of_the_retry_schedule() -> None:
    """The sweeper knows when each retry is due: a lease need not outlast the longest delay."""
    assert Settings().stuck_after == 45
    settings = Settings(stuck_after=15, delivery_backoff=10, delivery_retries=5)
    assert [settings.retry_delay(n) for n in (1, 2, 5)] == [10, 20, 160]
    with pytest.raises(ValidationError, match="stuck_after"):
        Settings(stuck_after=1)  # renewed every 0.3 s: a database hiccup would lose leases
