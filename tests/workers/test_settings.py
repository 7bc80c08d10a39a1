"""Settings come from SHELFTALLY_* variables, nested with __, and refuse what cannot work."""

from __future__ import annotations

from decimal import Decimal

import pytest

from inventory.reconcile import ReconcilePolicy
from shelftally.errors import ConfigurationError
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
        ({"SHELFTALLY_ALERTS__CHANNELS": "email"}, "'log' or 'webhook'"),
        ({"SHELFTALLY_RECONCILE__TOLERENCE_UNITS": "1"}, "unknown setting(s): SHELFTALLY_RECONCILE__TOLERENCE_UNITS"),
        ({"SHELFTALLY_DATABSE_URL": "sqlite:///x.db"}, "unknown setting(s): SHELFTALLY_DATABSE_URL"),
        ({"SHELFTALLY_ALERTS__WEBHOOK_URL": "ftp://hooks.example/x"}, "absolute http(s) URL"),
        ({"SHELFTALLY_ALERTS__WEBHOOK_URL": "not a url"}, "absolute http(s) URL"),
        ({"SHELFTALLY_ALERTS__WEBHOOK_URL": "https://h/x", "SHELFTALLY_ALERTS__WEBHOOK_SECRET": ""}, "is empty"),
        ({"SHELFTALLY_ALERTS__BACKOFF_CAP_S": "1000"}, "less than 300"),
        ({"SHELFTALLY_MODELS__DETECTOR_PRECISION": "int8"}, "runs on the openvino backend"),
        ({"SHELFTALLY_MODELS__CLASSIFIER_PRECISION": "int8"}, "runs on the openvino backend"),
        ({"SHELFTALLY_MODELS__DETECTOR_PRECISION": "int4", "SHELFTALLY_MODELS__BACKEND": "openvino"},
         "'fp32' or 'int8'"),
        ({"SHELFTALLY_MODELS__INT8_MAX_ACCURACY_DROP": "-1"}, "greater than or equal to 0"),
        ({"SHELFTALLY_MODELS__BACKEND": "tensorrt"}, "runs on a CUDA device"),
        ({"SHELFTALLY_MODELS__BACKEND": "tensorrt", "SHELFTALLY_MODELS__DEVICE": "gpu"}, "runs on a CUDA device"),
        ({"SHELFTALLY_SCAN__TEXT_MIN_CROP_PX": "2"}, "greater than or equal to 8"),
    ],
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_environment()
    assert message in str(info.value)
    assert info.value.reason == "invalid_configuration"


def test_errors_never_echo_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFTALLY_ALERTS__CHANNELS", "webhook")
    monkeypatch.setenv("SHELFTALLY_ALERTS__WEBHOOK_SECRET", "topsecret123")
    with pytest.raises(ConfigurationError) as info:
        Settings.from_environment()
    assert "topsecret123" not in str(info.value)


def test_comma_separated_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFTALLY_ALERTS__CHANNELS", "log, webhook")
    monkeypatch.setenv("SHELFTALLY_ALERTS__WEBHOOK_URL", "https://hooks.example/x")
    assert Settings.from_environment().alerts.channels == ["log", "webhook"]


def test_dotenv_shared_with_other_programs(tmp_path: object) -> None:
    from pathlib import Path

    Path(".env").write_text("POSTGRES_PASSWORD=x\nSHELFTALLY_RECONCILE__TOLERANCE_UNITS=3\n")
    assert Settings.from_environment().reconcile.tolerance_units == 3
    Path(".env").write_text("SHELFTALLY_RECONCILE__TOLERANCE_UNITZ=3\n")
    with pytest.raises(ConfigurationError, match="TOLERANCE_UNITZ"):
        Settings.from_environment()


def test_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFTALLY_DATABASE_URL", "sqlite:///env.db")
    assert Settings.from_environment(database_url="sqlite:///cli.db").database_url == "sqlite:///cli.db"


def test_scan_and_model_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFTALLY_SCAN__CAMERA_TIMEZONE", "Europe/Stockholm")
    monkeypatch.setenv("SHELFTALLY_SCAN__MAX_PIXELS", "1000000")
    monkeypatch.setenv("SHELFTALLY_MODELS__BACKEND", "openvino")
    settings = Settings.from_environment(env_file=None)
    assert settings.scan.max_pixels == 1_000_000 and settings.models.backend == "openvino"
    assert str(settings.scan.zone()) == "Europe/Stockholm"
    monkeypatch.setenv("SHELFTALLY_SCAN__CAMERA_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigurationError, match=r"scan\.camera_timezone"):
        Settings.from_environment(env_file=None)


def test_tensorrt_on_a_cuda_device_is_a_valid_setting_and_reaches_the_runtime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object,
) -> None:
    """Where TensorRT is not installed, a scan so configured says which extra is missing (not a device error)."""
    from pathlib import Path

    from shelftally.errors import MissingDependencyError
    from workers.scan.pipeline import load_models

    monkeypatch.setenv("SHELFTALLY_MODELS__BACKEND", "tensorrt")
    monkeypatch.setenv("SHELFTALLY_MODELS__DEVICE", "cuda")
    settings = Settings.from_environment()
    assert settings.models.device == "cuda"
    models = Path(__file__).resolve().parents[2] / "models"
    with pytest.raises(MissingDependencyError, match=r"shelftally\[tensorrt\]"):
        load_models(models / "product-agnostic", models / "classifier-grocery", backend="tensorrt",
                    device=settings.models.device)
