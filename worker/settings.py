"""Settings from ``CXR_*`` environment variables and an optional TOML file.

Every setting and its default is listed in ``docs/configuration.md``. Precedence: environment,
then the TOML file given with ``--config``, then defaults. List-valued settings are
comma-separated strings in the environment (``CXR_ALLOWED_CALLING_AETS=MODALITY1,PACS``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicom_node.addresses import AnyDestination, parse_destination, parse_destinations

if TYPE_CHECKING:
    import ssl

    from dicom_node.sender import SenderOptions
    from dicom_node.stow import StowOptions
from dicom_node.uids import DEFAULT_UID_ROOT

CommaList = Annotated[list[str], NoDecode]


#: Every setting is read from the environment as this prefix plus its name in capitals.
ENV_PREFIX = "CXR_"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/cxr-triage``, else ``~/.local/share/cxr-triage``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cxr-triage"


class Settings(BaseSettings):
    """All settings of the node and the worker."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # Network
    ae_title: str = Field("CXR_TRIAGE", min_length=1, max_length=16)
    port: int = Field(11112, ge=0, le=65535)
    bind: str = "127.0.0.1"
    allowed_calling_aets: CommaList = Field(default_factory=list)
    require_called_ae: bool = True
    max_pdu: int = Field(1_048_576, ge=0)
    max_associations: int = Field(16, ge=1)
    max_connections: int = Field(128, ge=1)
    pdu_timeout: float = Field(30.0, gt=0)
    handshake_timeout: float = Field(10.0, gt=0)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(120.0, gt=0)
    reuse_port: bool = False
    # TLS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_verify_client: bool = False
    # TLS to destinations (our C-STOREs and C-ECHOs out)
    send_tls: bool = False
    send_tls_ca: Path | None = None
    send_tls_cert: Path | None = None
    send_tls_key: Path | None = None
    send_tls_system_ca: bool = False  # trust the system's CAs too (alone when no CA is given)
    send_tls_verify_hostname: bool = True
    # DICOMweb destinations (stow+http(s)://…): one of these authenticates every request
    stow_bearer_token: SecretStr | None = None
    stow_basic_auth: SecretStr | None = None  # user:password
    # Storage and database
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    db_timeout: float = Field(30.0, gt=0)
    min_free_mb: int = Field(1024, ge=0)
    fsync: bool = True
    keep_ineligible: bool = False
    auto_migrate: bool | None = None
    # Eligibility and completion
    assume_pa_chest: bool = False
    quiet_seconds: float = Field(5.0, ge=0)
    max_wait_seconds: float = Field(900.0, gt=0)
    monitor_interval: float = Field(1.0, gt=0)
    # Lease length (worker.leases): a worker renews its leases every third of it; work whose
    # lease ran out (its worker died or hangs) is taken over by the node's sweeper.
    stuck_after: float = Field(45.0, ge=3)
    uid_root: str = DEFAULT_UID_ROOT
    # Queue
    broker_url: str | None = None
    inference_queue: str = "inference"
    study_task: str = "cxr_triage.process_study"
    # Worker and results
    # Parsed once, here: everything after works with typed destinations.
    destinations: Annotated[list[AnyDestination], NoDecode] = Field(default_factory=list)
    model_dir: Path | None = None
    # Unset: the model card's operating point (worker.decision.operating_point).
    threshold_covid: float | None = Field(None, ge=0, le=1)
    threshold_pneumonia: float | None = Field(None, ge=0, le=1)
    # Below a threshold by at most this much: "indeterminate", never "not flagged".
    indeterminate_margin: float = Field(0.2, ge=0, le=1)
    # A hospital's own thresholds and temperature (cxr-triage calibrate); beats the card's.
    site_calibration: Path | None = None
    # Shadow mode: classify and record every study, deliver nothing (local validation weeks).
    shadow_mode: bool = False
    delivery_retries: int = Field(5, ge=0)
    delivery_backoff: float = Field(10.0, ge=0)
    worker_concurrency: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    batch_wait: float = Field(0.02, ge=0, le=5)
    sc_max_size: int = Field(1280, ge=0)
    # Observability: /metrics, /healthz, /readyz (port 0: off)
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = Field(9110, ge=0, le=65535)
    worker_metrics_port: int = Field(9111, ge=0, le=65535)
    # Audit API (cxr-triage api)
    api_token: str | None = None
    api_port: int = Field(8080, ge=0, le=65535)
    # STOW-RS into the node (None: off); on CXR_BIND, with CXR_API_TOKEN as its bearer token
    stow_port: int | None = Field(None, ge=0, le=65535)
    stow_max_mb: int = Field(2048, ge=1)
    # Logging
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_destinations(value)
        return [parse_destination(v) if isinstance(v, str) else v for v in value]

    @field_validator("uid_root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        if not value.endswith(".") or len(value) > 45:
            raise ValueError("uid_root must end with '.' and leave room for a suffix (<= 45 chars)")
        return value

    @model_validator(mode="after")
    def _check_stow_inbound(self) -> Settings:
        if self.stow_port is not None and not self.api_token:
            raise ValueError(
                "CXR_STOW_PORT needs CXR_API_TOKEN, the bearer token senders must send"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("CXR_TLS_CERT and CXR_TLS_KEY must be given together")
        if self.tls_verify_client and self.tls_ca is None:
            raise ValueError("CXR_TLS_VERIFY_CLIENT needs CXR_TLS_CA")
        if (self.send_tls_cert is None) != (self.send_tls_key is None):
            raise ValueError("CXR_SEND_TLS_CERT and CXR_SEND_TLS_KEY must be given together")
        https = any(getattr(d, "base_url", "").startswith("https:") for d in self.destinations)
        if (self.send_tls or https) and not self._trusts_someone:
            raise ValueError(
                "CXR_SEND_TLS (or an https STOW or FHIR destination) needs CXR_SEND_TLS_CA, the CA "
                "that signs the destinations' certificates, or CXR_SEND_TLS_SYSTEM_CA=true"
            )
        return self

    @property
    def _trusts_someone(self) -> bool:
        return self.send_tls_ca is not None or self.send_tls_system_ca

    def _client_tls(self) -> ssl.SSLContext:
        from dicom_node.tls import client_context

        return client_context(
            self.send_tls_ca,
            cert=self.send_tls_cert,
            key=self.send_tls_key,
            verify_hostname=self.send_tls_verify_hostname,
            system_ca=self.send_tls_system_ca,
        )

    def retry_delay(self, attempt: int) -> float:
        """Seconds a failed delivery attempt waits before the next (doubling each time)."""
        return self.delivery_backoff * 2 ** max(0, attempt - 1)

    @model_validator(mode="after")
    def _check_stow(self) -> Settings:
        if self.stow_bearer_token and self.stow_basic_auth:
            raise ValueError("give CXR_STOW_BEARER_TOKEN or CXR_STOW_BASIC_AUTH, not both")
        if self.stow_basic_auth and ":" not in self.stow_basic_auth.get_secret_value():
            raise ValueError("CXR_STOW_BASIC_AUTH must be user:password")
        return self

    def sender_options(self, **overrides: Any) -> SenderOptions:
        """How this node associates with destinations: AE title, PDU size, TLS."""
        # Imported here: settings are read by every command, most of which never send.
        from dicom_node.sender import SenderOptions

        ssl_context = self._client_tls() if self.send_tls else None
        values: dict[str, Any] = {
            "calling_ae": self.ae_title,
            "max_pdu": self.max_pdu,
            "ssl_context": ssl_context,
        }
        values.update(overrides)
        return SenderOptions(**values)

    def stow_options(self) -> StowOptions:
        """How this node authenticates to STOW-RS and FHIR destinations (TLS as for C-STORE)."""
        from dicom_node.stow import StowOptions

        return StowOptions(
            bearer_token=self.stow_bearer_token.get_secret_value()
            if self.stow_bearer_token
            else None,
            basic_auth=self.stow_basic_auth.get_secret_value() if self.stow_basic_auth else None,
            ssl_context=self._client_tls() if self._trusts_someone else None,
        )

    # -- derived -----------------------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def effective_database_url(self) -> str:
        """The database URL; SQLite in the data directory unless configured."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'cxr-triage.sqlite'}"
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker; an embedded SQLite-backed broker unless configured."""
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment, an optional TOML file and keyword overrides.

    Raises
    ------
    FileNotFoundError
        If ``config_file`` does not exist.
    pydantic.ValidationError
        With one line per invalid setting.
    """
    if config_file is None:
        return Settings(**overrides)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
            return (init_settings, env_settings, toml)

    return _FileSettings(**overrides)


def unknown_environment_names(environ: dict[str, str] | None = None) -> list[str]:
    """``CXR_*`` variables that name no setting (likely typos), for a start-up warning."""
    environ = dict(os.environ) if environ is None else environ
    known = {f"CXR_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        k
        for k in environ
        if k.startswith("CXR_") and k not in known and not k.startswith("CXR_TEST_")
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings from the environment (cleared between tests with cache_clear)."""
    return Settings()
