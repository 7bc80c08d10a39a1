"""Alert delivery against real HTTP servers on 127.0.0.1 and real SQLite and PostgreSQL databases."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from inventory.alerts import enqueue, state_change
from inventory.db import run_in_transaction, utcnow
from inventory.models import Alert, AlertStateChange, DeliveryStatus, Discrepancy, DiscrepancyKind, Sku
from inventory.sinks import (
    DeliveryError,
    DeliveryReport,
    LogSink,
    WebhookSink,
    backoff_delay,
    deliver_pending,
)
from shelftally import __version__
from shelftally.errors import ConfigurationError
from tests.conftest import at, seed_shelf

SECRET = "whsec-7f3a9c1e-do-not-log"
URL_PASSWORD = "pw-5b2d8e-do-not-log"


# --- a real HTTP receiver ----------------------------------------------------------------------


@dataclass
class Received:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 answering POSTs with ``statuses(n)`` (n: 0-based count).

    With ``hold`` set, each request waits until ``release`` is set before answering (and sets
    ``arrived`` first), so a test can act while a delivery is in flight.
    """

    statuses: Callable[[int], int]
    hold: bool = False
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.body) for request in self.requests]


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Start real HTTP receivers; all are shut down after the test."""
    servers: list[tuple[ThreadingHTTPServer, Receiver]] = []

    def start(statuses: Callable[[int], int] | list[int] | int, *, hold: bool = False) -> Receiver:
        if isinstance(statuses, int):
            constant = statuses
            script: Callable[[int], int] = lambda _n: constant  # noqa: E731
        elif isinstance(statuses, list):
            answers = statuses
            script = lambda n: answers[min(n, len(answers) - 1)]  # noqa: E731
        else:
            script = statuses
        state = Receiver(statuses=script, hold=hold)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with state.lock:
                    index = len(state.requests)
                    state.requests.append(Received(self.path, dict(self.headers.items()), body))
                state.arrived.set()
                if state.hold:
                    state.release.wait(timeout=30)
                status = state.statuses(index)
                # A careless receiver echoes the request in its error page, credentials and all.
                echo = json.dumps({"error": "receiver says no", "path": self.path,
                                   "auth": self.headers.get("Authorization", "")})
                answer = b'{"ok": true}' if status < 300 else echo.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/shelftally"
        servers.append((server, state))
        return state

    yield start
    for server, state in servers:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def sink_pool() -> Iterator[Callable[..., WebhookSink]]:
    """Build WebhookSinks that are closed after the test."""
    made: list[WebhookSink] = []

    def make(url: str, **kwargs: Any) -> WebhookSink:
        sink = WebhookSink(url, **kwargs)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


class Delays(list[float]):
    """A ``sleep`` that records the delays instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening on it (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- database helpers --------------------------------------------------------------------------


def seed_alerts(
    factory: sessionmaker[Session], count: int = 1, channels: tuple[str, ...] = ("webhook",)
) -> list[int]:
    """Commit ``count`` shortage discrepancies, each with one pending alert per channel."""

    def work(session: Session) -> list[int]:
        shelf = seed_shelf(session, book={f"SKU-{n}": 12 for n in range(count)})
        ids: list[int] = []
        for n in range(count):
            sku_id = session.scalar(sa.select(Sku.id).where(Sku.sku_code == f"SKU-{n}"))
            discrepancy = Discrepancy(
                location_id=shelf.id,
                sku_id=sku_id,
                kind=DiscrepancyKind.SHORTAGE,
                expected_quantity=12,
                observed_quantity=7,
                first_seen_at=at(0),
                last_seen_at=at(5),
                consecutive_scans=2,
            )
            session.add(discrepancy)
            session.flush()
            opened = state_change(session, discrepancy, AlertStateChange.OPENED)
            alerts = enqueue(session, changes=[opened], channels=list(channels))
            ids.extend(alert.id for alert in alerts)
        return ids

    return run_in_transaction(factory, work)


def load(factory: sessionmaker[Session], alert_id: int) -> Alert:
    with factory() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        session.expunge(alert)
        return alert


def set_claim(
    factory: sessionmaker[Session],
    alert_id: int,
    *,
    claimed_by: str,
    claimed_at: datetime | None,
    attempts: int,
    last_error: str | None = None,
) -> None:
    """Commit a claim on an alert as another dispatcher would have left it."""

    def work(session: Session) -> None:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        alert.claimed_by, alert.claimed_at = claimed_by, claimed_at
        alert.attempts, alert.last_error = attempts, last_error

    run_in_transaction(factory, work)


# --- the acceptance test -----------------------------------------------------------------------


def test_500_then_200_is_delivered_once_on_the_second_attempt(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    (alert_id,) = seed_alerts(factory)
    server = receiver([500, 200])
    sink = sink_pool(server.url)
    delays = Delays()

    report = deliver_pending(factory, [sink], sleep=delays)

    assert report == DeliveryReport(delivered_ids=[alert_id], retried_ids=[alert_id])
    alert = load(factory, alert_id)
    assert alert.delivery_status is DeliveryStatus.DELIVERED
    assert alert.attempts == 2
    assert alert.delivered_at is not None and alert.delivered_at >= alert.created_at
    assert alert.last_error is not None and alert.last_error.startswith("http_500: ")
    assert (alert.claimed_by, alert.claimed_at) == (None, None)
    assert delays == [0.5]

    assert len(server.requests) == 2
    first, second = server.requests
    assert first.body == second.body
    assert json.loads(first.body) == alert.payload
    assert alert.payload["alert_id"] == alert_id
    assert first.headers["X-ShelfTally-Alert-Id"] == second.headers["X-ShelfTally-Alert-Id"] == str(alert_id)
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["User-Agent"] == f"shelftally/{__version__}"
    assert "X-ShelfTally-Signature" not in first.headers
    assert first.path == "/hooks/shelftally"

    again = deliver_pending(factory, [sink], sleep=delays)

    assert again == DeliveryReport()
    assert len(server.requests) == 2
    assert load(factory, alert_id).attempts == 2


# --- outcomes ----------------------------------------------------------------------------------


def test_permanent_400_fails_after_one_attempt(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    (alert_id,) = seed_alerts(factory)
    server = receiver(400)
    delays = Delays()

    report = deliver_pending(factory, [sink_pool(server.url)], sleep=delays)

    assert report == DeliveryReport(failed_ids=[alert_id])
    alert = load(factory, alert_id)
    assert (alert.delivery_status, alert.attempts, alert.delivered_at) == (DeliveryStatus.FAILED, 1, None)
    assert alert.last_error is not None and alert.last_error.startswith("http_400: ")
    assert "receiver says no" in alert.last_error
    assert (alert.claimed_by, alert.claimed_at) == (None, None)
    assert len(server.requests) == 1
    assert delays == []


@pytest.mark.parametrize(
    ("max_attempts", "backoff_s", "backoff_cap_s", "expected_delays"),
    [
        (5, 0.5, 30.0, [0.5, 1.0, 2.0, 4.0]),
        (6, 1.0, 3.0, [1.0, 2.0, 3.0, 3.0, 3.0]),
        (1, 0.5, 30.0, []),
    ],
)
def test_always_500_fails_after_max_attempts_with_capped_backoff(
    factory: sessionmaker[Session],
    receiver: Callable[..., Receiver],
    sink_pool: Callable[..., WebhookSink],
    max_attempts: int,
    backoff_s: float,
    backoff_cap_s: float,
    expected_delays: list[float],
) -> None:
    (alert_id,) = seed_alerts(factory)
    server = receiver(503)
    delays = Delays()

    report = deliver_pending(
        factory,
        {"webhook": sink_pool(server.url)},
        max_attempts=max_attempts,
        backoff_s=backoff_s,
        backoff_cap_s=backoff_cap_s,
        sleep=delays,
    )

    assert report.failed_ids == [alert_id] and report.delivered == 0
    assert report.retried_ids == ([alert_id] if max_attempts > 1 else [])
    alert = load(factory, alert_id)
    assert (alert.delivery_status, alert.attempts) == (DeliveryStatus.FAILED, max_attempts)
    assert alert.last_error is not None and alert.last_error.startswith("http_503: ")
    assert (alert.claimed_by, alert.claimed_at) == (None, None)
    assert len(server.requests) == max_attempts
    assert delays == expected_delays


def test_the_claim_is_kept_and_refreshed_through_the_retry_sequence(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    (alert_id,) = seed_alerts(factory)
    server = receiver([500, 503, 200])
    during_backoff: list[Alert] = []
    others: list[DeliveryReport] = []

    def sleep(_seconds: float) -> None:
        during_backoff.append(load(factory, alert_id))
        others.append(deliver_pending(factory, [sink_pool(server.url)]))  # a second dispatcher

    report = deliver_pending(factory, [sink_pool(server.url)], sleep=sleep)

    assert report == DeliveryReport(delivered_ids=[alert_id], retried_ids=[alert_id])
    assert others == [DeliveryReport(), DeliveryReport()]  # the held alert was left alone
    assert len(server.requests) == 3
    first, second = during_backoff
    assert (first.delivery_status, first.attempts, second.delivery_status, second.attempts) == (
        DeliveryStatus.PENDING,
        1,
        DeliveryStatus.PENDING,
        2,
    )
    assert first.last_error is not None and first.last_error.startswith("http_500: ")
    assert second.last_error is not None and second.last_error.startswith("http_503: ")
    assert first.claimed_by is not None and second.claimed_by == first.claimed_by
    assert first.claimed_at is not None and second.claimed_at is not None
    assert second.claimed_at > first.claimed_at
    delivered = load(factory, alert_id)
    assert (delivered.delivery_status, delivered.attempts) == (DeliveryStatus.DELIVERED, 3)
    assert (delivered.claimed_by, delivered.claimed_at) == (None, None)
    assert delivered.last_error is not None and delivered.last_error.startswith("http_503: ")


def test_connection_refused_is_retried_then_failed(
    factory: sessionmaker[Session], sink_pool: Callable[..., WebhookSink]
) -> None:
    (alert_id,) = seed_alerts(factory)
    delays = Delays()

    report = deliver_pending(
        factory, [sink_pool(f"http://127.0.0.1:{free_port()}/hook")], max_attempts=3, sleep=delays
    )

    assert report == DeliveryReport(failed_ids=[alert_id], retried_ids=[alert_id])
    alert = load(factory, alert_id)
    assert (alert.delivery_status, alert.attempts) == (DeliveryStatus.FAILED, 3)
    assert alert.last_error is not None and alert.last_error.startswith("connection_error: ")
    assert delays == [0.5, 1.0]


def test_a_receiver_that_never_answers_times_out(
    factory: sessionmaker[Session], sink_pool: Callable[..., WebhookSink]
) -> None:
    (alert_id,) = seed_alerts(factory)
    # The kernel completes the TCP handshake for a listening socket; nobody ever reads or answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        sink = sink_pool(f"http://127.0.0.1:{silent.getsockname()[1]}/hook", timeout_s=0.3)
        started = time.monotonic()

        report = deliver_pending(factory, [sink], max_attempts=2, sleep=Delays())

        elapsed = time.monotonic() - started
    assert report.failed_ids == [alert_id]
    alert = load(factory, alert_id)
    assert (alert.delivery_status, alert.attempts) == (DeliveryStatus.FAILED, 2)
    assert alert.last_error is not None and alert.last_error.startswith("timeout: ")
    assert elapsed < 15, f"two attempts with a 0.3 s timeout took {elapsed:.1f} s"


def test_alerts_go_oldest_first_and_channels_without_a_sink_stay_pending(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    ids = seed_alerts(factory, count=3, channels=("webhook", "email"))
    webhook_ids = ids[0::2]
    email_ids = ids[1::2]
    server = receiver(200)

    report = deliver_pending(factory, [sink_pool(server.url)], sleep=Delays())

    assert report.delivered_ids == webhook_ids
    assert [body["alert_id"] for body in server.bodies()] == webhook_ids
    for alert_id in email_ids:
        alert = load(factory, alert_id)
        assert (alert.delivery_status, alert.attempts, alert.last_error) == (DeliveryStatus.PENDING, 0, None)


def test_limit_bounds_the_alerts_handled_per_run(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    ids = seed_alerts(factory, count=3)
    sink = sink_pool(receiver(200).url)

    assert deliver_pending(factory, [sink], limit=2).delivered_ids == ids[:2]
    assert deliver_pending(factory, [sink], limit=2).delivered_ids == ids[2:]
    assert deliver_pending(factory, [sink], limit=2) == DeliveryReport()


def test_no_sinks_touches_nothing(factory: sessionmaker[Session]) -> None:
    (alert_id,) = seed_alerts(factory)

    assert deliver_pending(factory, {}) == DeliveryReport()
    assert load(factory, alert_id).delivery_status is DeliveryStatus.PENDING


# --- signature, secrets, logging ---------------------------------------------------------------


@pytest.mark.parametrize("secret", [SECRET, SecretStr(SECRET)], ids=["str", "SecretStr"])
def test_hmac_signature_verifies_on_the_receiver(
    factory: sessionmaker[Session],
    receiver: Callable[..., Receiver],
    sink_pool: Callable[..., WebhookSink],
    secret: str | SecretStr,
) -> None:
    (alert_id,) = seed_alerts(factory)
    server = receiver(200)

    report = deliver_pending(factory, [sink_pool(server.url, secret=secret)])

    assert report.delivered_ids == [alert_id]
    (request,) = server.requests
    # What a receiver does: recompute over the raw bytes received, compare in constant time.
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-ShelfTally-Signature"], expected)
    forged = "sha256=" + hmac.new(b"another key", request.body, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(request.headers["X-ShelfTally-Signature"], forged)


def test_secret_and_url_password_never_reach_the_logs(
    factory: sessionmaker[Session],
    receiver: Callable[..., Receiver],
    sink_pool: Callable[..., WebhookSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = seed_alerts(factory, count=2)
    server = receiver([500, 200, 401])
    url = server.url.replace("http://", f"http://ops:{URL_PASSWORD}@") + "?token=t0k3n"
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    sink = sink_pool(url, secret=SECRET)

    report = deliver_pending(factory, [sink], sleep=Delays())

    assert (report.delivered_ids, report.failed_ids) == ([first], [second])
    # The URL credentials went out as HTTP Basic auth, not in the request line.
    credentials = base64.b64encode(f"ops:{URL_PASSWORD}".encode()).decode()
    assert server.requests[0].headers["Authorization"] == f"Basic {credentials}"
    logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert "retrying" in logged and "failed on attempt" in logged
    ours = "".join(record.getMessage() for record in caplog.records if record.name == "inventory.sinks")
    # httpx itself logs each request's URL with its query at INFO; the query is masked in ours only.
    assert "t0k3n" not in ours
    for sensitive in (SECRET, URL_PASSWORD):
        assert sensitive not in logged
        assert sensitive not in repr(sink)
    # The receiver echoed the Basic auth token and the query in its error pages: masked too.
    assert "receiver says no" in (load(factory, second).last_error or "")
    for sensitive in (SECRET, URL_PASSWORD, credentials, "t0k3n"):
        assert sensitive not in (load(factory, first).last_error or "")
        assert sensitive not in (load(factory, second).last_error or "")
    assert "t0k3n" not in repr(sink) and "***" in repr(sink)


def test_log_sink_writes_one_warning_with_the_alert_id(
    factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    (alert_id,) = seed_alerts(factory, channels=("log",))
    caplog.set_level(logging.INFO, logger="inventory.sinks")

    report = deliver_pending(factory, [LogSink()])

    assert report.delivered_ids == [alert_id]
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    (warning,) = warnings
    assert warning.name == "inventory.sinks"
    message = warning.getMessage()
    assert f"alert_id={alert_id} discrepancy.opened" in message
    assert "kind=shortage location_code=WH1-A01-B01-S1 sku_code=SKU-0" in message
    assert load(factory, alert_id).delivery_status is DeliveryStatus.DELIVERED


# --- concurrent dispatchers --------------------------------------------------------------------


def test_two_dispatchers_deliver_each_alert_exactly_once(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    ids = seed_alerts(factory, count=12)
    server = receiver(200)
    start = threading.Barrier(2)
    reports: list[DeliveryReport] = []
    errors: list[BaseException] = []

    def dispatch() -> None:
        sink = sink_pool(server.url)
        start.wait()
        try:
            reports.append(deliver_pending(factory, [sink]))
        except BaseException as error:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=dispatch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(body["alert_id"] for body in server.bodies()) == ids  # each exactly once
    assert sorted(reports[0].delivered_ids + reports[1].delivered_ids) == ids
    for alert_id in ids:
        alert = load(factory, alert_id)
        assert (alert.delivery_status, alert.attempts) == (DeliveryStatus.DELIVERED, 1)


def test_a_second_dispatcher_leaves_an_alert_in_flight_alone(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    (alert_id,) = seed_alerts(factory)
    server = receiver(200, hold=True)
    first: list[DeliveryReport] = []
    thread = threading.Thread(target=lambda: first.append(deliver_pending(factory, [sink_pool(server.url)])))
    thread.start()
    try:
        assert server.arrived.wait(timeout=30), "the first dispatcher never sent"
        in_flight = load(factory, alert_id)
        assert (in_flight.delivery_status, in_flight.attempts, in_flight.last_error) == (
            DeliveryStatus.PENDING,
            1,
            None,
        )
        assert in_flight.claimed_by is not None and in_flight.claimed_at is not None
        assert timedelta(0) <= utcnow() - in_flight.claimed_at < timedelta(seconds=30)

        second = deliver_pending(factory, [sink_pool(server.url)])

        assert second == DeliveryReport()
    finally:
        server.release.set()
        thread.join(timeout=30)
    assert first == [DeliveryReport(delivered_ids=[alert_id])]
    assert len(server.requests) == 1
    alert = load(factory, alert_id)
    assert (alert.delivery_status, alert.attempts, alert.last_error) == (DeliveryStatus.DELIVERED, 1, None)
    assert (alert.claimed_by, alert.claimed_at) == (None, None)


def test_a_claim_refreshed_after_the_read_is_not_taken_over(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    """The claim ``UPDATE`` re-checks the claim: a slow holder that refreshed ``claimed_at`` after
    this dispatcher read its alert as abandoned keeps the alert."""
    first_id, second_id = seed_alerts(factory, count=2)
    set_claim(factory, second_id, claimed_by="slow-worker", claimed_at=utcnow() - timedelta(hours=1), attempts=1)
    server = receiver(200, hold=True)
    reports: list[DeliveryReport] = []
    thread = threading.Thread(target=lambda: reports.append(deliver_pending(factory, [sink_pool(server.url)])))
    thread.start()
    try:
        assert server.arrived.wait(timeout=30), "the dispatcher never sent"
        # Both alerts have been read; while the first is in flight the holder of the second
        # refreshes its claim (as it does after a retryable failure, attempts unchanged).
        refreshed_at = utcnow()
        set_claim(factory, second_id, claimed_by="slow-worker", claimed_at=refreshed_at, attempts=1)
    finally:
        server.release.set()
        thread.join(timeout=30)
    assert reports == [DeliveryReport(delivered_ids=[first_id], skipped_ids=[second_id])]
    assert [body["alert_id"] for body in server.bodies()] == [first_id]
    held = load(factory, second_id)
    assert (held.delivery_status, held.attempts, held.claimed_by, held.claimed_at) == (
        DeliveryStatus.PENDING,
        1,
        "slow-worker",
        refreshed_at,
    )


def test_an_outcome_is_not_recorded_once_the_claim_is_lost(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    """The outcome write is conditioned on ``claimed_by``: a dispatcher whose claim changed hands
    while it was sending leaves the alert to the new holder."""
    (alert_id,) = seed_alerts(factory)
    server = receiver(200, hold=True)
    reports: list[DeliveryReport] = []
    thread = threading.Thread(target=lambda: reports.append(deliver_pending(factory, [sink_pool(server.url)])))
    thread.start()
    try:
        assert server.arrived.wait(timeout=30), "the dispatcher never sent"
        taken_at = utcnow()
        set_claim(factory, alert_id, claimed_by="new-holder", claimed_at=taken_at, attempts=1)
    finally:
        server.release.set()
        thread.join(timeout=30)
    assert reports == [DeliveryReport(skipped_ids=[alert_id])]
    alert = load(factory, alert_id)
    assert (alert.delivery_status, alert.attempts, alert.delivered_at) == (DeliveryStatus.PENDING, 1, None)
    assert (alert.claimed_by, alert.claimed_at) == ("new-holder", taken_at)


@pytest.mark.parametrize(
    ("claimed_age", "claim_ttl_s", "attempts", "max_attempts", "expected_status", "expected_requests"),
    [
        (timedelta(hours=1), 300.0, 1, 5, DeliveryStatus.DELIVERED, 1),  # dead dispatcher: taken over
        (timedelta(hours=1), 300.0, 5, 5, DeliveryStatus.FAILED, 0),  # dead on its last attempt
        (None, 300.0, 1, 5, DeliveryStatus.DELIVERED, 1),  # claimed_by without claimed_at: taken over
        (timedelta(minutes=2), 60.0, 1, 5, DeliveryStatus.DELIVERED, 1),  # older than a short TTL
        (timedelta(minutes=2), 300.0, 1, 5, DeliveryStatus.PENDING, 0),  # live claim: left alone
        (timedelta(seconds=1), 300.0, 5, 5, DeliveryStatus.PENDING, 0),  # live, even at max_attempts
    ],
)
def test_expired_claims_are_taken_over(
    factory: sessionmaker[Session],
    receiver: Callable[..., Receiver],
    sink_pool: Callable[..., WebhookSink],
    claimed_age: timedelta | None,
    claim_ttl_s: float,
    attempts: int,
    max_attempts: int,
    expected_status: DeliveryStatus,
    expected_requests: int,
) -> None:
    (alert_id,) = seed_alerts(factory)
    claimed_at = None if claimed_age is None else utcnow() - claimed_age
    # A dispatcher that crashed (or is still busy) mid-send after a 502 on an earlier attempt.
    set_claim(
        factory,
        alert_id,
        claimed_by="other-worker",
        claimed_at=claimed_at,
        attempts=attempts,
        last_error="http_502: bad gateway",
    )
    server = receiver(200)

    deliver_pending(factory, [sink_pool(server.url)], max_attempts=max_attempts, claim_ttl_s=claim_ttl_s)

    alert = load(factory, alert_id)
    assert alert.delivery_status is expected_status
    assert len(server.requests) == expected_requests
    assert alert.last_error == "http_502: bad gateway"
    if expected_status is DeliveryStatus.PENDING:
        assert (alert.attempts, alert.claimed_by, alert.claimed_at) == (attempts, "other-worker", claimed_at)
    else:
        assert alert.attempts == attempts + (1 if expected_status is DeliveryStatus.DELIVERED else 0)
        assert (alert.claimed_by, alert.claimed_at) == (None, None)


class ExplodingSink:
    """A sink with a bug: raises something that is not a DeliveryError."""

    name = "webhook"

    def send(self, payload: dict[str, Any]) -> None:
        raise RuntimeError("bug in a sink")


def test_an_unexpected_sink_exception_releases_the_alert(
    factory: sessionmaker[Session], receiver: Callable[..., Receiver], sink_pool: Callable[..., WebhookSink]
) -> None:
    (alert_id,) = seed_alerts(factory)

    with pytest.raises(RuntimeError, match="bug in a sink"):
        deliver_pending(factory, [ExplodingSink()])

    released = load(factory, alert_id)
    assert (released.delivery_status, released.attempts) == (DeliveryStatus.PENDING, 1)
    assert released.last_error is not None and released.last_error.startswith("interrupted: ")
    assert (released.claimed_by, released.claimed_at) == (None, None)
    server = receiver(200)
    assert deliver_pending(factory, [sink_pool(server.url)]).delivered_ids == [alert_id]
    assert load(factory, alert_id).attempts == 2


# --- the sink on its own (no database) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (201, None),
        (204, None),
        (301, ("http_301", False)),
        (400, ("http_400", False)),
        (401, ("http_401", False)),
        (404, ("http_404", False)),
        (408, ("http_408", True)),
        (409, ("http_409", False)),
        (410, ("http_410", False)),
        (422, ("http_422", False)),
        (429, ("http_429", True)),
        (500, ("http_500", True)),
        (502, ("http_502", True)),
        (503, ("http_503", True)),
        (504, ("http_504", True)),
    ],
)
def test_webhook_status_classification(
    receiver: Callable[..., Receiver],
    sink_pool: Callable[..., WebhookSink],
    status: int,
    expected: tuple[str, bool] | None,
) -> None:
    server = receiver(status)
    sink = sink_pool(server.url)
    payload = {"schema": "shelftally.alert/1", "alert_id": 7, "event": "discrepancy.opened", "discrepancy": {}}

    if expected is None:
        sink.send(payload)
    else:
        with pytest.raises(DeliveryError) as caught:
            sink.send(payload)
        assert (caught.value.reason, caught.value.retryable, caught.value.status_code) == (*expected, status)
    assert len(server.requests) == 1
    assert json.loads(server.requests[0].body) == payload


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"event": "discrepancy.opened"}, "invalid_payload"),
        ({"alert_id": 1, "value": float("nan")}, "invalid_payload"),
    ],
)
def test_webhook_rejects_bad_payloads_without_sending(
    receiver: Callable[..., Receiver],
    sink_pool: Callable[..., WebhookSink],
    payload: dict[str, Any],
    reason: str,
) -> None:
    server = receiver(200)
    with pytest.raises(DeliveryError) as caught:
        sink_pool(server.url).send(payload)
    assert (caught.value.reason, caught.value.retryable) == (reason, False)
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "kwargs", "reason"),
    [
        ("ftp://example.com/hook", {}, "invalid_webhook_url"),
        ("/relative/hook", {}, "invalid_webhook_url"),
        ("https://example.com/hook", {"timeout_s": 0}, "invalid_webhook_timeout"),
        ("https://example.com/hook", {"secret": ""}, "invalid_webhook_secret"),
    ],
)
def test_webhook_configuration_errors(url: str, kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        WebhookSink(url, **kwargs)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("attempt", "backoff_s", "backoff_cap_s", "expected"),
    [
        (1, 0.5, 30.0, 0.5),
        (2, 0.5, 30.0, 1.0),
        (7, 0.5, 30.0, 30.0),
        (10_000, 0.5, 30.0, 30.0),
        (3, 0.0, 30.0, 0.0),
    ],
)
def test_backoff_delay(attempt: int, backoff_s: float, backoff_cap_s: float, expected: float) -> None:
    assert backoff_delay(attempt, backoff_s=backoff_s, backoff_cap_s=backoff_cap_s) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff_s": -1.0}, "backoff"),
        ({"limit": 0}, "limit"),
        ({"claim_ttl_s": 10.0, "backoff_cap_s": 30.0}, "claim_ttl_s"),
    ],
)
def test_deliver_pending_rejects_bad_parameters(
    factory: sessionmaker[Session], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        deliver_pending(factory, [LogSink()], **kwargs)


def test_two_sinks_with_one_name_are_rejected(factory: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="two sinks are named 'log'"):
        deliver_pending(factory, [LogSink(), LogSink()])
