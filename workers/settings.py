"""Process settings: one pydantic-settings object, built in entry points and passed down.

Every field can be set by an environment variable with the ``SHELFTALLY_`` prefix, nested
fields with ``__`` (e.g. ``SHELFTALLY_RECONCILE__CONFIRM_AFTER_SCANS=3``,
``SHELFTALLY_ALERTS__WEBHOOK_URL=https://hooks.example/shelftally``), or from a ``.env`` file in
the working directory. Nothing reads the environment at import time.
"""

from __future__ import annotations

import json
import os
from datetime import tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inventory.reconcile import ReconcilePolicy
from shelftally.errors import ConfigurationError

AlertChannel = Literal["log", "webhook"]

#: ``SHELFTALLY_*`` variables that are not settings of the process (tests, benchmarks, tools).
NOT_SETTINGS = frozenset({
    "SHELFTALLY_TEST_POSTGRES_URL",
    "SHELFTALLY_BENCH_POSTGRES_URL",
    "SHELFTALLY_ULTRALYTICS_DIR",
})

#: A dispatcher's claim on an alert expires after this many seconds (inventory.sinks default);
#: the backoff cap must stay below it.
ALERT_CLAIM_TTL_S = 300.0


class ReconcileSettings(BaseModel):
    """Tolerances and hysteresis (see :class:`inventory.reconcile.ReconcilePolicy`)."""

    model_config = ConfigDict(extra="forbid")

    tolerance_units: int = Field(0, ge=0, description="absolute deviation in units that agrees with the book")
    tolerance_fraction: Decimal = Field(Decimal(0), ge=0, lt=1, description="deviation as a fraction of the book")
    confirm_after_scans: int = Field(2, ge=1, description="K consecutive agreeing scans before alerting")
    unknown_tolerance_facings: int = Field(0, ge=0, description="unrecognised facings per scan not reported")

    def policy(self) -> ReconcilePolicy:
        """The reconciliation policy these settings describe."""
        return ReconcilePolicy(
            tolerance_units=self.tolerance_units,
            tolerance_fraction=self.tolerance_fraction,
            confirm_after_scans=self.confirm_after_scans,
            unknown_tolerance_facings=self.unknown_tolerance_facings,
        )


class AlertSettings(BaseModel):
    """Where discrepancy alerts go and how delivery retries."""

    model_config = ConfigDict(extra="forbid")

    channels: Annotated[list[AlertChannel], NoDecode] = Field(
        default_factory=lambda: list[AlertChannel](["log"]),
        description="where alerts go: log and/or webhook, as log,webhook or a JSON list",
    )
    webhook_url: SecretStr | None = Field(None, description="HTTP(S) URL; may carry credentials, so secret")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key for X-ShelfTally-Signature")
    webhook_timeout_s: float = Field(5.0, gt=0, description="timeout of one webhook request")
    max_attempts: int = Field(5, ge=1, description="delivery attempts of one alert before it is marked failed")
    backoff_s: float = Field(
        0.5, ge=0, description="base of the retry delay: min(backoff_cap_s, backoff_s * 2**(attempt-1))"
    )
    backoff_cap_s: float = Field(
        30.0, ge=0, lt=ALERT_CLAIM_TTL_S, description="longest delay between two delivery attempts"
    )

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, value: Any) -> Any:
        """Accept a JSON list (``["log", "webhook"]``) or a comma-separated string (``log,webhook``)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _webhook_is_usable(self) -> AlertSettings:
        if "webhook" in self.channels and self.webhook_url is None:
            raise ValueError("alerts.channels includes 'webhook' but alerts.webhook_url is not set")
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url.get_secret_value())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("alerts.webhook_url must be an absolute http(s) URL")
        if self.webhook_secret is not None and not self.webhook_secret.get_secret_value():
            raise ValueError("alerts.webhook_secret is empty; unset it or give a key")
        return self


class ModelSettings(BaseModel):
    """Model directories (a model is a directory: weights, labels, preprocessing, metrics) and their runtime."""

    model_config = ConfigDict(extra="forbid")

    detector_dir: Path | None = Field(None, description="detector model directory used by scan and the workers")
    classifier_dir: Path | None = Field(None, description="classifier model directory used by scan and the workers")
    backend: Literal["onnx", "openvino", "torch", "tensorrt"] = Field("onnx", description="runtime of both models")
    device: str = Field(
        "cpu", min_length=1,
        description="device both models run on: cpu, cuda or cuda:N (onnx, torch; tensorrt needs one), or an "
        "OpenVINO device (gpu, npu, auto)",
    )
    threads: int | None = Field(None, ge=1, description="intra-op threads per model; None: the runtime's default")
    detector_confidence: float | None = Field(
        None, ge=0, le=1,
        description="detector confidence threshold; unset: the detector directory's recommended one "
        "(inference.json, chosen on its validation split), else 0.25",
    )
    detector_precision: Literal["fp32", "int8"] = Field(
        "fp32", description="int8: the detector's INT8 variant (openvino-int8/, `quantize`) within the accuracy margin"
    )
    classifier_precision: Literal["fp32", "int8"] = Field(
        "fp32", description="int8: the classifier's INT8 variant within the accuracy margin"
    )
    int8_max_accuracy_drop: float = Field(
        1.0, ge=0, description="most mAP50 / top-1 points an INT8 model may have lost against FP32 to be used"
    )

    @model_validator(mode="after")
    def _tensorrt_runs_on_cuda(self) -> ModelSettings:
        if self.backend == "tensorrt" and not self.device.strip().lower().startswith("cuda"):
            raise ValueError(f"backend tensorrt runs on a CUDA device, not {self.device!r} (set models.device=cuda)")
        return self

    @model_validator(mode="after")
    def _int8_runs_on_openvino(self) -> ModelSettings:
        if "int8" in (self.detector_precision, self.classifier_precision) and self.backend != "openvino":
            raise ValueError("precision int8 runs on the openvino backend (set models.backend=openvino)")
        return self


class ScanSettings(BaseModel):
    """How pictures are scanned (:class:`workers.scan.pipeline.PipelineConfig`)."""

    model_config = ConfigDict(extra="forbid")

    evidence_dir: Path | None = Field(Path("evidence"), description="evidence images; None: not written")
    max_pixels: int = Field(150_000_000, ge=1, description="largest picture decoded, width x height")
    min_box_px: float = Field(2.0, ge=0, description="boxes narrower or lower than this are dropped")
    camera_timezone: str | None = Field(
        None, description="IANA zone of EXIF capture times without offset; None: this machine's zone"
    )
    read_text: bool = Field(
        False, description="read the text and barcodes on products the classifier is unsure of and name SKUs "
        "from the SKU master with them (extra text; costs OCR time per picture)",
    )
    text_max_crops: int = Field(64, ge=1, description="read_text: most crops read per picture, least confident first")
    text_min_crop_px: int = Field(48, ge=8, description="read_text: crops whose shorter side is smaller are not read")
    text_max_visual_confidence: float = Field(
        0.9, ge=0, le=1, description="read_text: crops the classifier names at or above this are not read"
    )

    @field_validator("camera_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as error:
                raise ValueError(f"unknown IANA time zone {value!r} (e.g. Europe/Stockholm)") from error
        return value

    def zone(self) -> tzinfo | None:
        """The camera time zone, None for this machine's local zone."""
        return ZoneInfo(self.camera_timezone) if self.camera_timezone else None


class FleetSettings(BaseModel):
    """Celery workers on a Redis broker (:mod:`workers.fleet`); used only when ``broker_url`` is set.

    Redis has no broker-side acknowledgement deadline: a message taken and not acknowledged
    within ``visibility_timeout_s`` is delivered again to another worker. Every task's hard time
    limit must therefore stay below it, or a long task would run twice at once; the worker
    refuses to start otherwise (:meth:`check`).
    """

    model_config = ConfigDict(extra="forbid")
    image_store_dir: Path = Field(Path("images"), description="content-addressed picture store shared by workers")
    key_prefix: str = Field(
        "shelftally:", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="prefix of every Redis key (queues, dead letters, locks): fleets sharing a Redis stay apart",
    )
    visibility_timeout_s: float = Field(3600.0, gt=0, description="Redis redelivers unacknowledged messages after this")
    task_time_limit_s: float = Field(600.0, gt=0, description="hard limit: the worker child running a task is killed")
    task_soft_time_limit_s: float = Field(540.0, gt=0, description="soft limit: the task gets SoftTimeLimitExceeded")
    max_deliveries: int = Field(3, ge=1, description="deliveries of one message before it goes to the dead-letter list")
    max_retries: int = Field(5, ge=0, description="retries of a task failing with a transient error")
    retry_backoff_max_s: float = Field(60.0, gt=0, description="cap of the exponential retry backoff")
    restore_interval_s: float = Field(10.0, gt=0, description="how often workers look for messages to redeliver")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Prometheus endpoint of the worker; None: off")
    allow_redelivery_while_running: bool = Field(
        False, description="accept a visibility timeout shorter than the task time limit (tests only)"
    )

    @model_validator(mode="after")
    def _soft_below_hard(self) -> FleetSettings:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("fleet.task_soft_time_limit_s must be below fleet.task_time_limit_s")
        return self

    def check(self) -> None:
        """Refuse a configuration under which Redis would redeliver a task that is still running.

        Raises:
            ConfigurationError: ``task_time_limit_s >= visibility_timeout_s`` (reason
                ``time_limit_exceeds_visibility_timeout``), unless
                ``allow_redelivery_while_running`` is set.
        """
        if self.task_time_limit_s >= self.visibility_timeout_s and not self.allow_redelivery_while_running:
            raise ConfigurationError(
                f"fleet.task_time_limit_s ({self.task_time_limit_s:g} s) must be below the broker's "
                f"fleet.visibility_timeout_s ({self.visibility_timeout_s:g} s): Redis would deliver a task "
                "that is still running to a second worker",
                reason="time_limit_exceeds_visibility_timeout",
            )


class Settings(BaseSettings):
    """Everything a ShelfTally process is configured with.

    Attributes:
        database_url: SQLAlchemy URL. Default: a SQLite file ``shelftally.db`` in the working
            directory. Production: ``postgresql+psycopg://user@host:5432/db``.
        broker_url: Celery broker URL (``redis://127.0.0.1:6379/0``); ``None`` runs everything
            in-process.
        models: model directories and their runtime.
        scan: picture limits, evidence images, camera time zone.
        reconcile: tolerances and hysteresis.
        alerts: alert channels and delivery.
        fleet: Celery workers, the picture store, dead letters and metrics (with ``broker_url``).
    """

    model_config = SettingsConfigDict(
        env_prefix="SHELFTALLY_",
        env_nested_delimiter="__",
        env_file=".env",
        # Other programs' lines in a shared .env are ignored; SHELFTALLY_* names that are not
        # settings are refused by from_environment().
        extra="ignore",
    )

    database_url: str = Field(
        "sqlite:///shelftally.db",
        description="SQLAlchemy URL; production: postgresql+psycopg://user@host:5432/db",
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL (redis://127.0.0.1:6379/0); None runs everything in-process"
    )
    models: ModelSettings = Field(default_factory=ModelSettings, description="model directories and their runtime")
    scan: ScanSettings = Field(
        default_factory=ScanSettings, description="picture limits, evidence images, camera time zone"
    )
    reconcile: ReconcileSettings = Field(
        default_factory=ReconcileSettings, description="tolerances and hysteresis"
    )
    alerts: AlertSettings = Field(default_factory=AlertSettings, description="alert channels and delivery")
    fleet: FleetSettings = Field(
        default_factory=FleetSettings,
        description="Celery workers, the picture store, dead letters and metrics (with broker_url)",
    )

    @classmethod
    def from_environment(cls, env_file: Path | None = Path(".env"), **overrides: Any) -> Settings:
        """Build the settings of an entry point from the environment and ``.env``.

        Unlike the bare constructor, a ``SHELFTALLY_*`` variable (or ``.env`` line) that names no
        setting is an error, so a typo such as ``SHELFTALLY_DATABSE_URL`` never falls back to a
        default silently.

        Args:
            env_file: the dotenv file to read (``None``: none).
            overrides: values that win over the environment (command-line options).

        Raises:
            ConfigurationError: unknown ``SHELFTALLY_*`` names or invalid values; the message
                lists each problem without echoing any value (values may be secrets).
        """
        names = {k for k in os.environ if k.upper().startswith("SHELFTALLY_")}
        if env_file is not None and env_file.is_file():
            names |= {k for k in dotenv_values(env_file) if k.upper().startswith("SHELFTALLY_")}
        unknown = sorted(n for n in names if n.upper() not in NOT_SETTINGS and not _is_setting(n))
        if unknown:
            raise ConfigurationError(f"unknown setting(s): {', '.join(unknown)} (see workers/settings.py)")
        try:
            return cls(_env_file=env_file, **overrides)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                for e in error.errors(include_input=False, include_url=False)
            )
            raise ConfigurationError(f"invalid settings: {problems}") from None


def _is_setting(name: str) -> bool:
    """Whether ``SHELFTALLY_A__B`` names a field of :class:`Settings` (case-insensitive)."""
    path = name.upper().removeprefix("SHELFTALLY_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(path) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True
