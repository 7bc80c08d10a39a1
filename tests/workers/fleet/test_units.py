"""Unit tests of the Celery side that need no running worker: fleet settings, the app's delivery
rules, which errors are transient, task message round trips, dead letters in a real Redis,
import hygiene, and the fleet CLI commands without a broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from typer.testing import CliRunner

from inventory.errors import DatabaseUnavailableError
from shelftally.errors import ConfigurationError, InvalidImageError
from tests.workers.fleet.conftest import redis_or_fail
from workers.fleet.deadletter import COUNTER_TTL_S, DeadLetter, DeadLetterError, DeadLetters
from workers.fleet.image_store import ImageStoreError
from workers.scan.pipeline import AdmittedPicture, ObservedBox, ObservedPicture
from workers.settings import FleetSettings, Settings

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SHELFTALLY_* variable from the caller's shell, and no stray .env in the working directory."""
    for name in list(os.environ):
        if name.upper().startswith("SHELFTALLY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------- 1. FleetSettings


def test_check_refuses_time_limit_at_or_above_visibility_timeout() -> None:
    for limit in (3600.0, 7200.0):
        fleet = FleetSettings(visibility_timeout_s=3600.0, task_time_limit_s=limit, task_soft_time_limit_s=60.0)
        with pytest.raises(ConfigurationError) as caught:
            fleet.check()
        assert caught.value.reason == "time_limit_exceeds_visibility_timeout"


def test_check_passes_below_visibility_timeout() -> None:
    FleetSettings(visibility_timeout_s=3600.0, task_time_limit_s=3599.0, task_soft_time_limit_s=3000.0).check()
    FleetSettings().check()  # the defaults are consistent


def test_check_passes_when_redelivery_while_running_is_allowed() -> None:
    FleetSettings(visibility_timeout_s=10.0, task_time_limit_s=600.0, task_soft_time_limit_s=540.0,
                  allow_redelivery_while_running=True).check()


@pytest.mark.parametrize(("soft", "hard"), [(600.0, 600.0), (700.0, 600.0)])
def test_soft_limit_not_below_hard_limit_is_invalid(soft: float, hard: float) -> None:
    with pytest.raises(ValidationError, match="task_soft_time_limit_s must be below"):
        FleetSettings(task_time_limit_s=hard, task_soft_time_limit_s=soft)


@pytest.mark.usefixtures("clean_env")
def test_fleet_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFTALLY_FLEET__VISIBILITY_TIMEOUT_S", "7200")
    monkeypatch.setenv("SHELFTALLY_FLEET__TASK_TIME_LIMIT_S", "1200")
    monkeypatch.setenv("SHELFTALLY_FLEET__TASK_SOFT_TIME_LIMIT_S", "1100")
    monkeypatch.setenv("SHELFTALLY_FLEET__KEY_PREFIX", "fleet7:")
    monkeypatch.setenv("SHELFTALLY_FLEET__MAX_DELIVERIES", "4")
    fleet = Settings.from_environment(env_file=None).fleet
    assert (fleet.visibility_timeout_s, fleet.task_time_limit_s, fleet.task_soft_time_limit_s) == (7200, 1200, 1100)
    assert (fleet.key_prefix, fleet.max_deliveries) == ("fleet7:", 4)
    fleet.check()


@pytest.mark.usefixtures("clean_env")
def test_unknown_fleet_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFTALLY_FLEET__NOPE", "1")
    with pytest.raises(ConfigurationError, match="SHELFTALLY_FLEET__NOPE"):
        Settings.from_environment(env_file=None)


@pytest.mark.usefixtures("clean_env")
def test_soft_limit_above_hard_limit_from_environment_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHELFTALLY_FLEET__TASK_TIME_LIMIT_S", "100")
    monkeypatch.setenv("SHELFTALLY_FLEET__TASK_SOFT_TIME_LIMIT_S", "100")
    with pytest.raises(ConfigurationError, match="task_soft_time_limit_s must be below"):
        Settings.from_environment(env_file=None)


# ---------------------------------------------------------------- 2. configure


@pytest.fixture
def fleet_app(monkeypatch: pytest.MonkeyPatch) -> Any:
    """workers.fleet.app, its module state (settings, context) restored after the test."""
    import workers.fleet.app as fleet_app

    monkeypatch.setattr(fleet_app, "_SETTINGS", None)
    monkeypatch.setattr(fleet_app, "_CONTEXT", None)
    monkeypatch.setattr(fleet_app, "_SERVES_VISION", True)
    return fleet_app


def test_configure_without_broker_is_refused(fleet_app: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        fleet_app.configure(Settings(broker_url=None), serves_vision=False)
    assert caught.value.reason == "no_broker"
    with pytest.raises(ConfigurationError) as caught:
        fleet_app.settings()
    assert caught.value.reason == "fleet_not_configured"


def test_configure_refuses_time_limit_above_visibility_timeout(fleet_app: Any) -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0",
                        fleet=FleetSettings(visibility_timeout_s=100.0, task_time_limit_s=200.0,
                                            task_soft_time_limit_s=150.0))
    with pytest.raises(ConfigurationError) as caught:
        fleet_app.configure(settings)
    assert caught.value.reason == "time_limit_exceeds_visibility_timeout"


def test_configure_sets_delivery_rules_limits_and_routes(fleet_app: Any) -> None:
    settings = Settings(
        broker_url="redis://127.0.0.1:6379/5",
        fleet=FleetSettings(visibility_timeout_s=1800.0, task_time_limit_s=300.0, task_soft_time_limit_s=250.0,
                            key_prefix="unit-fleet:", restore_interval_s=7.0),
    )
    app = fleet_app.configure(settings, serves_vision=False)
    assert app is fleet_app.app
    assert fleet_app.settings() is settings
    conf = app.conf
    assert conf.broker_url == "redis://127.0.0.1:6379/5"
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_acks_on_failure_or_timeout is False
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == 1800.0
    assert options["global_keyprefix"] == "unit-fleet:"
    assert options["unacked_restore_interval"] == 7.0
    assert (conf.task_time_limit, conf.task_soft_time_limit) == (300.0, 250.0)
    # the routes as Celery's router resolves them
    assert conf.task_routes["shelftally.vision"] == {"queue": "vision"}
    assert conf.task_routes["shelftally.persist"] == {"queue": "db"}
    assert conf.task_routes["shelftally.ingest"] == {"queue": "ingest"}
    router = app.amqp.router
    assert router.route({}, "shelftally.vision", (), {})["queue"].name == "vision"
    assert router.route({}, "shelftally.persist", (), {})["queue"].name == "db"
    # the scan chain's tasks are registered under their fixed names
    assert {"shelftally.ingest", "shelftally.vision", "shelftally.persist"} <= set(app.tasks)
    for name in ("shelftally.ingest", "shelftally.vision", "shelftally.persist"):
        assert app.tasks[name].acks_late is True
        assert app.tasks[name].reject_on_worker_lost is True


# ---------------------------------------------------------------- 3. is_transient


@pytest.mark.parametrize(
    "error",
    [
        SoftTimeLimitExceeded(),
        DatabaseUnavailableError("database down"),
        RedisConnectionError("Connection refused"),
        ImageStoreError("store gone", reason="store_unavailable"),
        sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")),
    ],
    ids=["soft-time-limit", "database-unavailable", "redis-connection-error", "store-unavailable",
         "sqlalchemy-operational"],
)
def test_transient_errors(error: BaseException) -> None:
    from workers.fleet.tasks import is_transient

    assert is_transient(error) is True


@pytest.mark.parametrize(
    "error",
    [
        ImageStoreError("no such picture", reason="image_missing"),
        ImageStoreError("bad bytes", reason="image_corrupt"),
        InvalidImageError("not a picture", reason="corrupt_image"),
        ValueError("bad message"),
        KeyError("picture"),
    ],
    ids=["image-missing", "image-corrupt", "invalid-image", "value-error", "key-error"],
)
def test_permanent_errors(error: BaseException) -> None:
    from workers.fleet.tasks import is_transient

    assert is_transient(error) is False


# ---------------------------------------------------------------- 4. task messages


def _picture(**changes: Any) -> AdmittedPicture:
    fields: dict[str, Any] = {
        "source": "camera:CAM-1", "image_sha256": "ab" * 32, "size_bytes": 123_456, "location_code": "WH1-A01-B01-S1",
        "captured_at": datetime(2026, 11, 29, 10, 15, 30, 250_000, tzinfo=UTC),
        "label_boxes": ((10.5, 20.25, 110.0, 64.75), (0.0, 0.0, 8.0, 8.0)),
        "timings_ms": {"decode": 12.5, "locate": 3.25},
    }
    fields.update(changes)
    return AdmittedPicture(**fields)


def _through_json(data: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(data))
    return loaded


def test_admitted_picture_round_trip() -> None:
    picture = _picture()
    again = AdmittedPicture.from_dict(_through_json(picture.to_dict()))
    assert again == picture
    assert again.captured_at.utcoffset() == timedelta(0)
    assert again.label_boxes == picture.label_boxes and again.timings_ms == picture.timings_ms


def test_admitted_picture_without_labels_round_trip() -> None:
    picture = _picture(label_boxes=(), timings_ms={})
    assert AdmittedPicture.from_dict(_through_json(picture.to_dict())) == picture


def test_observed_picture_round_trip() -> None:
    observed = ObservedPicture(
        picture=_picture(timings_ms={"decode": 1.5, "detect": 40.25, "crop": 0.5, "classify": 9.75}),
        width_px=1920, height_px=1080, detector_version="det-1.2", classifier_version="cls-0.9",
        boxes=(
            ObservedBox((1.5, 2.5, 30.25, 60.0), 0.875, 0, "SKU-RED", 0.96),
            ObservedBox((40.0, 2.0, 70.5, 61.5), 0.5, 1, None, 0.125),
            ObservedBox((80.0, 3.0, 99.0, 62.0), 0.25, 0, "SKU-BLUE", 0.0),
        ),
    )
    again = ObservedPicture.from_dict(_through_json(observed.to_dict()))
    assert again == observed
    assert [box.sku_code for box in again.boxes] == ["SKU-RED", None, "SKU-BLUE"]
    assert again.picture.timings_ms == {"decode": 1.5, "detect": 40.25, "crop": 0.5, "classify": 9.75}


def test_observed_picture_without_boxes_round_trip() -> None:
    observed = ObservedPicture(picture=_picture(), width_px=64, height_px=48, detector_version="d",
                               classifier_version="c")
    assert ObservedPicture.from_dict(_through_json(observed.to_dict())) == observed


def test_naive_capture_time_in_a_message_is_refused() -> None:
    data = _picture().to_dict()
    data["captured_at"] = "2026-11-29T10:15:30"
    with pytest.raises(ValueError, match="no UTC offset"):
        AdmittedPicture.from_dict(data)
    observed = ObservedPicture(picture=_picture(), width_px=1, height_px=1, detector_version="d",
                               classifier_version="c").to_dict()
    observed["picture"]["captured_at"] = "2026-11-29T10:15:30"
    with pytest.raises(ValueError, match="no UTC offset"):
        ObservedPicture.from_dict(observed)


def test_capture_time_with_offset_comes_back_in_utc() -> None:
    data = _picture().to_dict()
    data["captured_at"] = "2026-11-29T12:15:30+02:00"
    again = AdmittedPicture.from_dict(data)
    assert again.captured_at == datetime(2026, 11, 29, 10, 15, 30, tzinfo=UTC)
    assert again.captured_at.tzinfo is UTC
    assert (again.captured_at.hour, again.captured_at.minute) == (10, 15)
    # and a picture built with an offset travels as the same instant
    local = _picture(captured_at=datetime(2026, 11, 29, 12, 15, 30, tzinfo=timezone(timedelta(hours=2))))
    assert AdmittedPicture.from_dict(_through_json(local.to_dict())).captured_at == datetime(
        2026, 11, 29, 10, 15, 30, tzinfo=UTC)


# ---------------------------------------------------------------- 5. dead letters in Redis


@pytest.fixture
def redis_client() -> Iterator[Any]:
    client = redis_or_fail()
    yield client
    client.close()


@pytest.fixture
def dead(redis_client: Any) -> Iterator[DeadLetters]:
    """Dead letters under a key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"t{uuid4().hex[:12]}:"
    yield DeadLetters(redis_client, prefix)
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


def _letter(letter_id: str, failed_at: str, reason: str = "max_deliveries_exceeded") -> DeadLetter:
    return DeadLetter(id=letter_id, task="shelftally.vision", args=[{"image_key": f"sha256/ab/{letter_id}"}],
                      kwargs={"n": 1}, queue="vision", reason=reason, error="boom", deliveries=4,
                      failed_at=failed_at)


def test_delivery_counts_per_task_and_retry(dead: DeadLetters, redis_client: Any) -> None:
    assert [dead.count_delivery("task-a", 0) for _ in range(3)] == [1, 2, 3]
    assert dead.count_delivery("task-a", 1) == 1
    assert dead.count_delivery("task-b", 0) == 1
    assert dead.count_delivery("task-a", 0) == 4
    assert dead.count_delivery("task-a", 1) == 2
    ttl = redis_client.ttl(f"{dead.prefix}deliveries:task-a:0")
    assert 0 < ttl <= COUNTER_TTL_S
    assert len(dead) == 0  # counters are not dead letters


def test_add_list_take(dead: DeadLetters) -> None:
    assert dead.list() == [] and len(dead) == 0
    newest = _letter("t-3", "2026-11-29T10:03:00+00:00")
    oldest = _letter("t-1", "2026-11-29T10:01:00+00:00", reason="retries_exhausted")
    middle = _letter("t-2", "2026-11-29T10:02:00+00:00")
    for letter in (newest, oldest, middle):
        dead.add(letter)
    assert len(dead) == 3
    assert dead.list() == [oldest, middle, newest]
    # the same task id parked again replaces its letter
    replaced = _letter("t-2", "2026-11-29T10:04:00+00:00", reason="image_missing")
    dead.add(replaced)
    assert len(dead) == 3
    assert dead.list() == [oldest, newest, replaced]
    assert dead.take("t-1") == oldest
    assert len(dead) == 2
    assert [letter.id for letter in dead.list()] == ["t-3", "t-2"]
    with pytest.raises(DeadLetterError) as caught:
        dead.take("t-1")
    assert caught.value.reason == "dead_letter_not_found"


def test_take_unknown_letter(dead: DeadLetters) -> None:
    with pytest.raises(DeadLetterError) as caught:
        dead.take("no-such-task")
    assert caught.value.reason == "dead_letter_not_found"


@pytest.mark.parametrize("value", ["not json {", json.dumps({"id": "x"}), json.dumps([1, 2])])
def test_corrupt_letter(dead: DeadLetters, redis_client: Any, value: str) -> None:
    dead.add(_letter("fine", "2026-11-29T10:00:00+00:00"))
    redis_client.hset(dead.key, "broken", value)
    assert len(dead) == 2
    with pytest.raises(DeadLetterError) as caught:
        dead.list()
    assert caught.value.reason == "dead_letter_corrupt"
    with pytest.raises(DeadLetterError) as caught:
        dead.take("broken")
    assert caught.value.reason == "dead_letter_corrupt"


# ---------------------------------------------------------------- 6. no torch on the Celery side


def test_celery_side_imports_no_torch() -> None:
    code = ("import sys, workers.fleet.app, workers.fleet.tasks, workers.cameras, workers.cameras.registry; "
            "print(sorted(m for m in ('torch','ultralytics') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- 7. the CLI without a broker

runner = CliRunner()


@pytest.fixture
def cli_env(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of a CLI on a migrated SQLite file and no broker."""
    monkeypatch.delenv("SHELFTALLY_BROKER_URL", raising=False)
    env = {"SHELFTALLY_DATABASE_URL": f"sqlite:///{tmp_path}/fleet.db", "SHELFTALLY_ALERTS__CHANNELS": "log"}
    shelftally(env, "db", "upgrade")
    return env


def shelftally(env: dict[str, str], *args: str, code: int = 0) -> Any:
    """Run the CLI; assert its exit code; return parsed JSON when --json was given, else the output."""
    from workers.cli import app

    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, result.output
    if "--json" in args and code == 0:
        return json.loads(result.stdout)
    return result.output


def test_tasks_failed_needs_a_broker(cli_env: dict[str, str]) -> None:
    output = shelftally(cli_env, "tasks", "failed", code=1)
    assert "no_broker" in output
    assert "Traceback" not in output


def test_status_without_broker(cli_env: dict[str, str]) -> None:
    data = shelftally(cli_env, "status", "--json")
    assert data["broker"] is None
    assert data["cameras"] == []
    shelftally(cli_env, "cameras", "add", "CAM-1", "--kind", "rtsp", "--url", "rtsp://admin@10.0.0.7/s",
               "--secret", "env:CAM_PW")
    data = shelftally(cli_env, "status", "--json")
    assert data["broker"] is None
    assert [camera["camera_code"] for camera in data["cameras"]] == ["CAM-1"]
    assert data["cameras"][0]["url"] == "rtsp://***:***@10.0.0.7/s"


def test_camera_url_with_password_is_refused_and_never_echoed(cli_env: dict[str, str]) -> None:
    output = shelftally(cli_env, "cameras", "add", "CAM-1", "--kind", "rtsp", "--url", "rtsp://admin:pw@10.0.0.7/s",
                        code=1)
    assert "inline_credentials" in output
    assert "pw" not in output
    assert shelftally(cli_env, "cameras", "list", "--json") == {"cameras": []}


def test_camera_add_list_remove(cli_env: dict[str, str]) -> None:
    added = shelftally(cli_env, "cameras", "add", "CAM-1", "--kind", "rtsp", "--url", "rtsp://admin@10.0.0.7/s",
                       "--secret", "env:CAM_PW")
    assert "CAM_PW" not in added and "admin" not in added
    listed = shelftally(cli_env, "cameras", "list", "--json")
    (camera,) = listed["cameras"]
    assert camera["camera_code"] == "CAM-1"
    assert camera["kind"] == "rtsp"
    assert camera["url"] == "rtsp://***:***@10.0.0.7/s"
    assert camera["secret"] == "env:***"
    assert "CAM_PW" not in json.dumps(listed) and "admin" not in json.dumps(listed)
    shelftally(cli_env, "cameras", "remove", "CAM-1")
    assert shelftally(cli_env, "cameras", "list", "--json") == {"cameras": []}
    output = shelftally(cli_env, "cameras", "remove", "CAM-1", code=1)
    assert "not_found" in output
