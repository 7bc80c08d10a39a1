"""Process settings: one pydantic-settings object, built in entry points and passed down.

Every field can be set by an environment variable with the ``SHELFTALLY_`` prefix, nested
fields with ``__`` (e.g. ``SHELFTALLY_RECONCILE__CONFIRM_AFTER_SCANS=3``,
``SHELFTALLY_ALERTS__WEBHOOK_URL=https://hooks.example/shelftally``), or from a ``.env`` file in
the working directory. Nothing reads the environment at import time.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inventory.reconcile import ReconcilePolicy

AlertChannel = Literal["log", "webhook"]


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

    channels: list[AlertChannel] = Field(default_factory=lambda: list[AlertChannel](["log"]))
    webhook_url: SecretStr | None = Field(None, description="HTTP(S) URL; may carry credentials, so secret")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key for X-ShelfTally-Signature")
    webhook_timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    backoff_cap_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _webhook_needs_url(self) -> AlertSettings:
        if "webhook" in self.channels and self.webhook_url is None:
            raise ValueError("alerts.channels includes 'webhook' but alerts.webhook_url is not set")
        return self


class ModelSettings(BaseModel):
    """Model directories (a model is a directory: weights, labels, preprocessing, metrics)."""

    model_config = ConfigDict(extra="forbid")

    detector_dir: Path | None = None
    classifier_dir: Path | None = None


class Settings(BaseSettings):
    """Everything a ShelfTally process is configured with.

    Attributes:
        database_url: SQLAlchemy URL. Default: a SQLite file ``shelftally.db`` in the working
            directory. Production: ``postgresql+psycopg://user@host:5432/db``.
        broker_url: Celery broker URL (``redis://127.0.0.1:6379/0``); ``None`` runs everything
            in-process.
        models: model directories.
        reconcile: tolerances and hysteresis.
        alerts: alert channels and delivery.
    """

    model_config = SettingsConfigDict(
        env_prefix="SHELFTALLY_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
    )

    database_url: str = "sqlite:///shelftally.db"
    broker_url: str | None = None
    models: ModelSettings = Field(default_factory=ModelSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
