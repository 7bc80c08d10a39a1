"""Settings come from SHELFTALLY_* variables, nested with __, and refuse what cannot work."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from inventory.reconcile import ReconcilePolicy
from workers.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SHELFTALLY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]  # no stray .env


def test_defaults_are_embedded() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite:///shelftally.db"
    assert settings.broker_url is None
    assert settings.reconcile.policy() == ReconcilePolicy()
    assert settings.alerts.channels == ["log"]


def test_environment_with_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFTALLY_DATABASE_URL", "postgresql+psycopg://app@db:5432/stock")
    monkeypatch.setenv("SHELFTALLY_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("SHELFTALLY_RECONCILE__CONFIRM_AFTER_SCANS", "3")
    monkeypatch.setenv("SHELFTALLY_RECONCILE__TOLERANCE_FRACTION", "0.05")
    monkeypatch.setenv("SHELFTALLY_ALERTS__CHANNELS", '["log", "webhook"]')
    monkeypatch.setenv("SHELFTALLY_ALERTS__WEBHOOK_URL", "https://hooks.example/x")
    settings = Settings()
    assert settings.database_url.startswith("postgresql")
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.reconcile.policy() == ReconcilePolicy(tolerance_fraction=Decimal("0.05"), confirm_after_scans=3)
    assert settings.alerts.channels == ["log", "webhook"]
    assert "hooks.example" not in repr(settings)  # the webhook URL is a secret


def test_dotenv_file_is_read(tmp_path: object) -> None:
    from pathlib import Path

    Path(".env").write_text("SHELFTALLY_RECONCILE__TOLERANCE_UNITS=2\n")
    assert Settings().reconcile.tolerance_units == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SHELFTALLY_RECONCILE__CONFIRM_AFTER_SCANS": "0"}, "greater than or equal to 1"),
        ({"SHELFTALLY_RECONCILE__TOLERANCE_FRACTION": "1.5"}, "less than 1"),
        ({"SHELFTALLY_ALERTS__CHANNELS": '["webhook"]'}, "webhook_url is not set"),
        ({"SHELFTALLY_ALERTS__CHANNELS": '["email"]'}, "'log' or 'webhook'"),
        ({"SHELFTALLY_RECONCILE__TOLERENCE_UNITS": "1"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()
