"""Settings from ``CXR_*`` environment variables and an optional TOML file.

The settings come in groups (``settings.node.port``, ``settings.delivery.destinations`` ...),
each a typed model a component can take alone; the names users set stay flat: ``CXR_PORT`` in
the environment, ``port = 11112`` in the TOML file (a ``[node]`` table works too), ``port=`` as a
keyword. Precedence: keywords, then the environment, then the TOML file given with ``--config``,
then defaults. List-valued settings are comma-separated strings in the environment
(``CXR_ALLOWED_CALLING_AETS=MODALITY1,PACS``). ``docs/configuration.md`` is generated from the
fields' descriptions (``python -m worker.settings_doc``); a test fails when the two drift.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicom_node.addresses import AnyDestination, parse_destination, parse_destinations
from dicom_node.uids import DEFAULT_UID_ROOT
from models.compiled import Runtime

if TYPE_CHECKING:
    import ssl

    from dicom_node.sender import SenderOptions
    from dicom_node.stow import StowOptions

CommaList = Annotated[list[str], NoDecode]


#: Every setting is read from the environment as this prefix plus its name in capitals.
ENV_PREFIX = "CXR_"

_GROUP = ConfigDict(extra="forbid", validate_default=True)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/cxr-triage``, else ``~/.local/share/cxr-triage``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cxr-triage"


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class NodeSettings(BaseModel):
    """The DICOM node.

    Network, TLS (DICOM PS3.15 Annex B), eligibility, study completion, and STOW-RS into the node.
    """

    model_config = _GROUP

    ae_title: str = Field(
        "CXR_TRIAGE",
        min_length=1,
        max_length=16,
        description="our AE title (1–16 characters); also the calling AE when we send",
    )
    port: int = Field(
        11112,
        ge=0,
        le=65535,
        description="TCP port of the C-STORE/C-ECHO SCP (0 picks a free port)",
    )
    bind: str = Field(
        "127.0.0.1",
        description="address to listen on; set `0.0.0.0` to accept modalities on the network",
    )
    allowed_calling_aets: CommaList = Field(
        default_factory=list,
        description=(
            "comma-separated calling AE titles allowed to associate; others get A-ASSOCIATE-RJ "
            "(permanent, calling AE not recognised) and a row in `rejections`"
        ),
        json_schema_extra={"doc_default": "*(empty: accept any)*"},
    )
    require_called_ae: bool = Field(
        True, description="reject associations whose called AE title is not `CXR_AE_TITLE`"
    )
    max_pdu: int = Field(
        1_048_576,
        ge=0,
        description=(
            "maximum P-DATA-TF length we advertise and accept (bytes; 0 = none advertised, 64 MiB "
            "still enforced). A peer declaring a longer PDU is aborted before anything is "
            "allocated; other PDU types are limited to 1 MiB"
        ),
    )
    max_associations: int = Field(
        16,
        ge=1,
        description=(
            "concurrent associations; more are rejected (transient, local limit exceeded) and "
            "recorded"
        ),
    )
    max_connections: int = Field(
        128,
        ge=1,
        description=(
            "TCP connections held at once, associated or not (a connection that has not associated"
            " yet does not take an association slot); more are closed at once and recorded in "
            "`rejections`"
        ),
    )
    pdu_timeout: float = Field(
        30.0,
        gt=0,
        description=(
            "seconds a peer has to send a whole PDU once its first byte arrived (1 MiB in 30 s is "
            "35 KB/s), and to take each of our sends; slower peers are disconnected"
        ),
    )
    handshake_timeout: float = Field(
        10.0,
        gt=0,
        description=(
            "seconds a TLS client has to finish its handshake; the handshake runs in the "
            "connection's own thread, so a silent client delays nobody else"
        ),
    )
    acse_timeout: float = Field(30.0, gt=0, description="seconds to wait for association messages")
    dimse_timeout: float = Field(60.0, gt=0, description="seconds to wait for DIMSE messages")
    network_timeout: float = Field(
        120.0, gt=0, description="seconds an idle association is kept before it is aborted"
    )
    reuse_port: bool = Field(
        False,
        description=(
            "set `SO_REUSEPORT` so several independently started listener processes (e.g. "
            "containers with the host's network) can bind the same port; the kernel then picks a "
            "process per connection by a hash. `cxr-triage listen --processes N` does not need it:"
            " its processes share one socket and the least busy takes each association"
        ),
    )
    tls_cert: Path | None = Field(
        None, description="PEM server certificate (chain); with `CXR_TLS_KEY` turns TLS on"
    )
    tls_key: Path | None = Field(None, description="PEM private key of the server certificate")
    tls_ca: Path | None = Field(None, description="PEM bundle of CAs that sign client certificates")
    tls_verify_client: bool = Field(
        False,
        description=(
            "require a client certificate signed by `CXR_TLS_CA`; failed handshakes are recorded "
            "in `rejections`"
        ),
    )
    assume_pa_chest: bool = Field(
        False,
        description=(
            "accept CR/DX images whose view or body part no attribute states (see "
            "`docs/eligibility.md`)"
        ),
    )
    quiet_seconds: float = Field(
        5.0,
        ge=0,
        description=(
            "a study is complete when all associations that delivered it have ended and nothing "
            "arrived for this long"
        ),
    )
    max_wait_seconds: float = Field(
        900.0,
        gt=0,
        description=(
            "force-complete a study this long after its first instance, even if associations stay "
            "open"
        ),
    )
    monitor_interval: float = Field(
        1.0,
        gt=0,
        description=(
            "seconds between completion and outbox passes (the first runs as the node starts; with"
            " `listen --processes N` one process runs them for the group)"
        ),
    )
    uid_root: str = Field(
        DEFAULT_UID_ROOT,
        description=(
            "UID root for objects we create; also used by loop protection. Set your organisation's"
            " registered root if you have one"
        ),
    )
    stow_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description=(
            "port of the node's STOW-RS endpoint (`POST …/studies[/{study}]`, on `CXR_BIND`); "
            "senders must send `Authorization: Bearer <CXR_API_TOKEN>`; in `listen --processes N`,"
            " one process serves it"
        ),
        json_schema_extra={"doc_default": "*(none: off)*"},
    )
    stow_max_mb: int = Field(
        2048, ge=1, description="the largest STOW-RS request body taken (413 above it)"
    )

    _aets = field_validator("allowed_calling_aets", mode="before")(_split_commas)

    @field_validator("uid_root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        if not value.endswith(".") or len(value) > 45:
            raise ValueError("uid_root must end with '.' and leave room for a suffix (<= 45 chars)")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> NodeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("CXR_TLS_CERT and CXR_TLS_KEY must be given together")
        if self.tls_verify_client and self.tls_ca is None:
            raise ValueError("CXR_TLS_VERIFY_CLIENT needs CXR_TLS_CA")
        return self


class StorageSettings(BaseModel):
    """Storage and database.

    The data folder (spool, results, the embedded database and broker) and the database.
    """

    model_config = _GROUP

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="spool (`spool/`), SQLite database and embedded broker",
        json_schema_extra={
            "doc_default": "`$XDG_DATA_HOME/cxr-triage`, else `~/.local/share/cxr-triage`"
        },
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; `postgresql://user@host/db` uses psycopg 3",
        json_schema_extra={"doc_default": "`sqlite:///$CXR_DATA_DIR/cxr-triage.sqlite`"},
    )
    db_timeout: float = Field(
        30.0,
        gt=0,
        description=(
            "seconds a database write may wait (SQLite busy timeout, PostgreSQL connect timeout); "
            "after that the instance is answered `0xA700`"
        ),
    )
    auto_migrate: bool | None = Field(
        None,
        description=(
            "upgrade the schema at start-up; on PostgreSQL run `cxr-triage db upgrade` instead"
        ),
        json_schema_extra={"doc_default": "`true` on SQLite, `false` otherwise"},
    )
    min_free_mb: int = Field(
        1024,
        ge=0,
        description=(
            "low-disk watermark of the spool: below it new associations are rejected and instances"
            " that would cross it get `0xA700`"
        ),
    )
    fsync: bool = Field(
        True,
        description=(
            "fsync each instance and its directory before acknowledging; turn off only for "
            "benchmarks"
        ),
    )
    keep_ineligible: bool = Field(
        False, description="also keep instances that are not PA chest radiographs in the spool"
    )

    # -- derived -----------------------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def effective_database_url(self) -> str:
        """The database URL; SQLite in the data directory unless configured."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'cxr-triage.sqlite'}"
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


class QueueSettings(BaseModel):
    """Queue and leases.

    The broker the node queues studies on, the task it sends, and how long a worker's lease lasts.
    """

    model_config = _GROUP

    broker_url: str | None = Field(
        None,
        description="Celery broker; `redis://127.0.0.1:6379/0` in production",
        json_schema_extra={
            "doc_default": "`sqla+sqlite:///$CXR_DATA_DIR/broker.sqlite` (embedded, no server)"
        },
    )
    inference_queue: str = Field(
        "inference", description="queue the study task is sent to (GPU workers consume it)"
    )
    study_task: str = Field(
        "cxr_triage.process_study", description="registered name of the study task"
    )
    stuck_after: float = Field(
        45.0,
        ge=3,
        description=(
            "the lease length, in seconds (at least 3). A worker holds a lease on each study it "
            "processes and each delivery it sends, and renews it every third of this while it "
            "works; the node's sweeper takes over work whose lease ran out (worker killed, hung or"
            " cut off from the database) and re-sends queued tasks the broker lost once live "
            "workers have sat idle this long. Slow work is never taken over, and retries wait "
            "their own delay whatever this is. Shorter recovers sooner; it must outlast a database"
            " pause (a lease lost to one only means the work is redone, with the same UIDs)"
        ),
    )


class WorkerSettings(BaseModel):
    """Worker.

    How `cxr-triage work` runs: processes, batching, the size of the Grad-CAM SC.
    """

    model_config = _GROUP

    worker_concurrency: int = Field(
        1,
        ge=1,
        description=(
            "worker processes of `cxr-triage work` (each loads the model and runs one warm-up "
            "inference and Grad-CAM before it takes tasks)"
        ),
    )
    batch_size: int = Field(
        8,
        ge=1,
        description=(
            "most studies one worker process classifies in one model call: a task takes up to this"
            " many minus one other queued studies into its batch (1: no batching)"
        ),
    )
    batch_wait: float = Field(
        0.02,
        ge=0,
        le=5,
        description=(
            "seconds a task waits for more queued studies when fewer than `CXR_BATCH_SIZE` are "
            "waiting (at most 5)"
        ),
    )
    sc_max_size: int = Field(
        1280,
        ge=0,
        description=(
            "the Grad-CAM SC is the source decimated by the smallest integer that brings its "
            "longer side to this many pixels or fewer (0: full resolution)"
        ),
    )


class ModelSettings(BaseModel):
    """Model and operating point.

    Which model classifies, and the thresholds that turn its probabilities into a triage.
    """

    model_config = _GROUP

    model_dir: Path | None = Field(
        None,
        description="model folder (checked against its card at load)",
        json_schema_extra={"doc_default": "the shipped `models/default`"},
    )
    model_runtime: Runtime = Field(
        "auto",
        description=(
            "what serves the model in a worker: `litert` runs it compiled (`cxr-triage "
            "compile-model`, or once on first start) without TensorFlow, which starts in a "
            "fraction of the time; `tensorflow` runs it with TensorFlow (a GPU host); `auto` is "
            "LiteRT where it is installed and can serve the model, else TensorFlow"
        ),
    )
    model_cache: Path | None = Field(
        None,
        description=(
            "folder of compiled models, one entry per model and weights (safe to share between "
            "workers and hosts; an entry made from other weights is never used)"
        ),
        json_schema_extra={"doc_default": "`$XDG_CACHE_HOME/cxr-triage/compiled`"},
    )
    threshold_covid: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "probability at which an image makes the study COVID-19 (urgent); unset, the model "
            "card's operating point applies (`docs/model.md`), 0.5 for a model without one"
        ),
        json_schema_extra={"doc_default": "unset: the model card's"},
    )
    threshold_pneumonia: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "probability at which an image makes the study non-COVID pneumonia (soon); was "
            "`CXR_THRESHOLD_VIRAL_PNEUMONIA` before model 2.0"
        ),
        json_schema_extra={"doc_default": "unset: the model card's"},
    )
    indeterminate_margin: float = Field(
        0.2,
        ge=0,
        le=1,
        description=(
            "a probability this far or less below its class's threshold makes the result "
            '**indeterminate** (priority soon, the class named, its heatmap shown), never "not '
            'flagged"'
        ),
    )
    site_calibration: Path | None = Field(
        None,
        description=(
            "a site file written by `cxr-triage calibrate` (this hospital's thresholds and "
            "temperature, fitted on its own labelled studies): used instead of the card's "
            "operating point; refused if made for other weights. `CXR_THRESHOLD_*` still win where"
            " set. Results, the SR and the audit name the operating point used"
        ),
    )


class DeliverySettings(BaseModel):
    """Delivery.

    Where the results go and how: destinations, retries, TLS and HTTP credentials.
    """

    model_config = _GROUP

    destinations: Annotated[list[AnyDestination], NoDecode] = Field(
        default_factory=list,
        description=(
            "comma-separated destinations that receive the SC and SR: `AET@host:port` for C-STORE "
            "(IPv6 as `AET@[::1]:104`), `stow+http://host:port/dicom-web` or `stow+https://…` for "
            "DICOMweb STOW-RS (POST to `<url>/studies`, one object per request), "
            "`hl7+mllp://host:port` for an HL7 v2 receiver (one ORU^R01 per study, made from its "
            "SR; no SC; `docs/results.md`), `fhir+http(s)://host/fhir` for a FHIR R4 server (one "
            "transaction Bundle per study, made from its SR; no SC; credentials and TLS as for "
            "STOW-RS). All kinds get the same retries, dead letters and replay; an HL7 attempt "
            "waits for its ACK as long as a C-STORE for its answer (60 s). Empty keeps results "
            "only in `CXR_DATA_DIR/outputs`"
        ),
    )
    shadow_mode: bool = Field(
        False,
        description=(
            "classify, build and record every study but deliver nothing (the weeks of local "
            'validation before go-live); the audit row\'s operating point says "shadow mode"'
        ),
    )
    delivery_retries: int = Field(
        5, ge=0, description="retries after a failed C-STORE before the delivery is dead-lettered"
    )
    delivery_backoff: float = Field(
        10.0, ge=0, description="seconds before the first retry; doubles each time"
    )
    send_tls: bool = Field(
        False,
        description=(
            "use TLS (1.2 or newer) for everything we send by DICOM: deliveries, `replay`, `send`,"
            " `echo` (STOW-RS uses TLS when its URL is `https`)"
        ),
    )
    send_tls_ca: Path | None = Field(
        None,
        description=(
            "PEM bundle trusted to sign the destinations' certificates; it replaces the system's "
            "CAs. `CXR_SEND_TLS` or an `https` STOW destination without it (and without "
            "`CXR_SEND_TLS_SYSTEM_CA`) is a settings error"
        ),
    )
    send_tls_system_ca: bool = Field(
        False,
        description=(
            "trust the system's CAs too (a public CA vouching for a host on the hospital network "
            "is seldom what you want)"
        ),
    )
    send_tls_verify_hostname: bool = Field(
        True,
        description=(
            "the destination's certificate must name the host we connect to: a DNS name, or for an"
            " address an IP SAN. Turn off only for a PACS whose certificate you cannot reissue"
        ),
    )
    send_tls_cert: Path | None = Field(
        None, description="our client certificate and key, for destinations that require one"
    )
    send_tls_key: Path | None = Field(
        None, description="our client certificate and key, for destinations that require one"
    )
    stow_bearer_token: SecretStr | None = Field(
        None,
        description=(
            "sent as `Authorization: Bearer …` to every STOW-RS and FHIR destination (never in the"
            " URL: destinations are logged and stored)"
        ),
    )
    stow_basic_auth: SecretStr | None = Field(
        None,
        description=(
            "`user:password` for HTTP basic authentication instead; not both. HTTPS destinations "
            "are verified with `CXR_SEND_TLS_CA` (host name included, as for DICOM TLS) and may be"
            " given `CXR_SEND_TLS_CERT`/`KEY`. An answer longer than 4 MiB is not read: the "
            "attempt fails and is retried"
        ),
    )

    # Parsed once, here: everything after works with typed destinations.
    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_destinations(value)
        return [parse_destination(v) if isinstance(v, str) else v for v in value]

    @model_validator(mode="after")
    def _check_credentials(self) -> DeliverySettings:
        if (self.send_tls_cert is None) != (self.send_tls_key is None):
            raise ValueError("CXR_SEND_TLS_CERT and CXR_SEND_TLS_KEY must be given together")
        https = any(getattr(d, "base_url", "").startswith("https:") for d in self.destinations)
        if (self.send_tls or https) and not self.trusts_someone:
            raise ValueError(
                "CXR_SEND_TLS (or an https STOW or FHIR destination) needs CXR_SEND_TLS_CA, the CA "
                "that signs the destinations' certificates, or CXR_SEND_TLS_SYSTEM_CA=true"
            )
        if self.stow_bearer_token and self.stow_basic_auth:
            raise ValueError("give CXR_STOW_BEARER_TOKEN or CXR_STOW_BASIC_AUTH, not both")
        if self.stow_basic_auth and ":" not in self.stow_basic_auth.get_secret_value():
            raise ValueError("CXR_STOW_BASIC_AUTH must be user:password")
        return self

    @property
    def trusts_someone(self) -> bool:
        return self.send_tls_ca is not None or self.send_tls_system_ca

    def client_tls(self) -> ssl.SSLContext:
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


class ApiSettings(BaseModel):
    """Audit API.

    The read-only HTTP API of `cxr-triage api`, whose token also guards STOW-RS into the node.
    """

    model_config = _GROUP

    api_token: str | None = Field(
        None,
        description=(
            "bearer token every `/api` request must carry; `cxr-triage api` refuses to start "
            "without one"
        ),
    )
    api_port: int = Field(
        8080, ge=0, le=65535, description="port of `cxr-triage api` (on `CXR_METRICS_BIND`)"
    )


class ObservabilitySettings(BaseModel):
    """Observability.

    Metrics, health and readiness, and logging.
    """

    model_config = _GROUP

    metrics_bind: str = Field("127.0.0.1", description="address of the metrics and health server")
    metrics_port: int = Field(
        9110,
        ge=0,
        le=65535,
        description=(
            "`cxr-triage listen` serves `/metrics`, `/healthz`, `/readyz` here (0: off; a port in "
            "use only logs a warning)"
        ),
    )
    worker_metrics_port: int = Field(
        9111, ge=0, le=65535, description="the same for `cxr-triage work`"
    )
    log_level: str = Field(
        "INFO",
        description=(
            "`DEBUG` also shows pynetdicom's PDU-level messages; `--log-level` overrides it"
        ),
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description=(
            "`json`: one JSON object per line (`time`, `level`, `logger`, `message`, `study`, "
            "`process`, `exception`); `study` is the Study Instance UID the record belongs to, in "
            "the listener and in the worker alike"
        ),
    )


#: The groups, in the order ``docs/configuration.md`` lists them.
GROUPS: dict[str, type[BaseModel]] = {
    "node": NodeSettings,
    "storage": StorageSettings,
    "queue": QueueSettings,
    "worker": WorkerSettings,
    "model": ModelSettings,
    "delivery": DeliverySettings,
    "api": ApiSettings,
    "observability": ObservabilitySettings,
}
#: The group of each setting, by the flat name users set.
GROUP_OF: dict[str, str] = {
    name: group for group, model in GROUPS.items() for name in model.model_fields
}


def env_name(name: str) -> str:
    """``CXR_PORT`` for ``port``."""
    return ENV_PREFIX + name.upper()


def _grouped(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat setting names (as in the environment, the TOML file, keywords) into their groups.

    A name that is a group (a TOML ``[node]`` table) is merged as it is; an unknown name stays
    at the top, where validation reports it by name.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        group = GROUP_OF.get(key)
        if group is not None:
            out.setdefault(group, {})[key] = value
        elif key in GROUPS and isinstance(value, Mapping):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


class _Grouping(PydanticBaseSettingsSource):
    """Another source's flat names, grouped."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        return _grouped(self.inner())


class _GroupedToml(TomlConfigSettingsSource):
    """The TOML file of ``model_config["toml_file"]``, its flat names grouped."""

    def __call__(self) -> dict[str, Any]:
        return _grouped(super().__call__())


class _FlatEnvironment(PydanticBaseSettingsSource):
    """``CXR_<NAME>`` for every setting (any case), grouped; values stay strings to validate."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {k.upper(): v for k, v in os.environ.items()}
        return _grouped({n: environ[env_name(n)] for n in GROUP_OF if env_name(n) in environ})


class Settings(BaseSettings):
    """All settings of the node and the worker, by group."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    node: NodeSettings = Field(default_factory=NodeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            _Grouping(settings_cls, init_settings),
            _FlatEnvironment(settings_cls),
        ]
        if settings_cls.model_config.get("toml_file"):  # load_settings(config_file)
            sources.append(_GroupedToml(settings_cls))
        return tuple(sources)

    @model_validator(mode="after")
    def _check_stow_inbound(self) -> Settings:
        if self.node.stow_port is not None and not self.api.api_token:
            raise ValueError(
                "CXR_STOW_PORT needs CXR_API_TOKEN, the bearer token senders must send"
            )
        return self

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed, named flat (``port=0``), validated again."""
        # The values as they are (a dump would turn typed destinations into dicts).
        values = {g: dict(getattr(self, g)) for g in GROUPS}
        for name, value in _grouped(changes).items():
            if name not in GROUPS:
                raise ValueError(f"no such setting: {name}")
            values[name].update(value)
        return type(self).model_validate(values)

    def sender_options(self, **overrides: Any) -> SenderOptions:
        """How this node associates with destinations: AE title, PDU size, TLS."""
        # Imported here: settings are read by every command, most of which never send.
        from dicom_node.sender import SenderOptions

        ssl_context = self.delivery.client_tls() if self.delivery.send_tls else None
        values: dict[str, Any] = {
            "calling_ae": self.node.ae_title,
            "max_pdu": self.node.max_pdu,
            "ssl_context": ssl_context,
        }
        values.update(overrides)
        return SenderOptions(**values)

    def stow_options(self) -> StowOptions:
        """How this node authenticates to STOW-RS and FHIR destinations (TLS as for C-STORE)."""
        from dicom_node.stow import StowOptions

        d = self.delivery
        return StowOptions(
            bearer_token=d.stow_bearer_token.get_secret_value() if d.stow_bearer_token else None,
            basic_auth=d.stow_basic_auth.get_secret_value() if d.stow_basic_auth else None,
            ssl_context=d.client_tls() if d.trusts_someone else None,
        )

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker; an embedded SQLite-backed broker unless configured."""
        return self.queue.broker_url or f"sqla+sqlite:///{self.storage.data_dir / 'broker.sqlite'}"


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
        model_config = SettingsConfigDict(toml_file=path)

    return _FileSettings(**overrides)


def setting_name(loc: tuple[int | str, ...]) -> str:
    """The name a user sets for a validation error's location (``CXR_PORT`` for node.port)."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in GROUPS:
        parts = parts[1:]
    return ENV_PREFIX + "_".join(parts).upper()


def unknown_environment_names(environ: dict[str, str] | None = None) -> list[str]:
    """``CXR_*`` variables that name no setting (likely typos), for a start-up warning."""
    environ = dict(os.environ) if environ is None else environ
    known = {env_name(name) for name in GROUP_OF}
    return sorted(
        k
        for k in environ
        if k.startswith("CXR_") and k not in known and not k.startswith("CXR_TEST_")
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings from the environment (cleared between tests with cache_clear)."""
    return Settings()
