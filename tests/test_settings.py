from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker import settings_doc
from worker.settings import (
    GROUP_OF,
    GROUPS,
    Settings,
    default_data_dir,
    env_name,
    get_settings,
    load_settings,
    setting_name,
    unknown_environment_names,
)


def test_defaults_need_no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    s = Settings()
    assert s.node.ae_title == "CXR_TRIAGE" and s.node.port == 11112 and s.node.bind == "127.0.0.1"
    assert s.storage.data_dir == default_data_dir() == tmp_path / "cxr-triage"
    assert (
        s.storage.effective_database_url
        == f"sqlite:///{tmp_path / 'cxr-triage' / 'cxr-triage.sqlite'}"
    )
    assert s.effective_broker_url.startswith("sqla+sqlite:///")
    assert s.node.allowed_calling_aets == [] and s.delivery.destinations == []
    assert s.storage.should_auto_migrate


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_ALLOWED_CALLING_AETS", "MOD1, PACS ,")
    monkeypatch.setenv("CXR_DESTINATIONS", "PACS@127.0.0.1:4242,ARCHIVE@[::1]:104")
    monkeypatch.setenv("CXR_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    monkeypatch.setenv("CXR_PORT", "104")
    s = Settings()
    assert s.node.allowed_calling_aets == ["MOD1", "PACS"]
    assert [str(d) for d in s.delivery.destinations] == ["PACS@127.0.0.1:4242", "ARCHIVE@[::1]:104"]
    assert s.storage.effective_database_url == "postgresql+psycopg://u@127.0.0.1/db"
    assert not s.storage.should_auto_migrate
    assert s.node.port == 104


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
    assert (s.node.ae_title, s.node.port, s.node.allowed_calling_aets) == (
        "FROM_FILE",
        4006,
        ["A", "B"],
    )
    monkeypatch.setenv("CXR_PORT", "4007")
    assert load_settings(cfg).node.port == 4007  # environment wins over the file
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
    assert Settings().queue.stuck_after == 45
    settings = load_settings(stuck_after=15, delivery_backoff=10, delivery_retries=5)
    assert [settings.delivery.retry_delay(n) for n in (1, 2, 5)] == [10, 20, 160]
    with pytest.raises(ValidationError, match="stuck_after"):
        load_settings(stuck_after=1)  # renewed every 0.3 s: a database hiccup would lose leases


def test_every_setting_has_one_group_a_flat_name_and_a_description(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [name for model in GROUPS.values() for name in model.model_fields]
    assert len(names) == len(set(names)) == len(GROUP_OF)
    for group, model in GROUPS.items():
        for name, field in model.model_fields.items():
            assert field.description, f"{group}.{name} has no description for the docs"
    # The environment's names are the flat ones, whatever group a setting sits in.
    monkeypatch.setenv("CXR_STUCK_AFTER", "9")
    monkeypatch.setenv("CXR_BATCH_SIZE", "3")
    monkeypatch.setenv("cxr_log_format", "json")  # any case, as before the groups
    s = Settings()
    assert (s.queue.stuck_after, s.worker.batch_size, s.observability.log_format) == (9, 3, "json")


def test_toml_group_tables_keywords_and_replace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "cxr.toml"
    cfg.write_text("quiet_seconds = 2\n[node]\nport = 4008\n[delivery]\ndelivery_retries = 1\n")
    s = load_settings(cfg, bind="0.0.0.0")
    assert (s.node.port, s.node.quiet_seconds, s.node.bind) == (4008, 2, "0.0.0.0")
    assert s.delivery.delivery_retries == 1
    monkeypatch.setenv("CXR_PORT", "4009")
    assert load_settings(cfg).node.port == 4009  # the environment still wins over the file
    assert load_settings(cfg, port=4010).node.port == 4010  # and keywords over both
    changed = s.replace(port=0, destinations="PACS@127.0.0.1:104")
    assert changed.node.port == 0 and [str(d) for d in changed.delivery.destinations] == [
        "PACS@127.0.0.1:104"
    ]
    assert changed.node.bind == "0.0.0.0" and s.node.port == 4008  # the rest kept, s unchanged
    with pytest.raises(ValidationError, match="port"):
        s.replace(port=70000)  # validated again
    with pytest.raises(ValueError, match="no such setting: prot"):
        s.replace(prot=1)


def test_validation_errors_name_the_variable_users_set() -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(port="x", batch_size=0)
    names = sorted(setting_name(e["loc"]) for e in caught.value.errors())
    assert names == ["CXR_BATCH_SIZE", "CXR_PORT"]


def test_the_configuration_doc_is_generated_from_the_settings() -> None:
    """docs/configuration.md drifts from the fields: run python -m worker.settings_doc."""
    current = settings_doc.DOC.read_text(encoding="utf-8")
    assert settings_doc.render(current) == current
    for name in GROUP_OF:
        assert f"| `{env_name(name)}` |" in current
    # A hand edit inside the generated part is undone, so the check can fail.
    edited = current.replace("| `CXR_PORT` | `11112` |", "| `CXR_PORT` | `104` |")
    assert edited != current and settings_doc.render(edited) == current
    with pytest.raises(settings_doc.MissingMarkersError):
        settings_doc.render("# no markers\n")
