"""Alert delivery: sinks that announce alerts, and the dispatcher that drains the outbox.

:func:`inventory.alerts.enqueue` writes pending :class:`~inventory.models.Alert` rows inside the
reconciling transaction; :func:`deliver_pending` runs afterwards (a Celery beat task, the CLI),
hands each pending alert's ``payload`` to the :class:`AlertSink` named by ``Alert.channel`` and
records the outcome on the row. Delivery is at least once: a receiver de-duplicates on
``alert_id`` (the ``X-ShelfTally-Alert-Id`` header of :class:`WebhookSink`).

Claiming without a lock held across the network call
----------------------------------------------------
Each run of :func:`deliver_pending` has a random token. An alert is claimed with one atomic
compare-and-set ``UPDATE``::

    UPDATE alert SET claimed_by = :token, claimed_at = :now, attempts = attempts + 1
    WHERE id = :id AND delivery_status = 'pending' AND attempts = :attempts_read
      AND (claimed_by IS NULL OR claimed_by = :token
           OR claimed_at IS NULL OR claimed_at < :now - claim_ttl_s)
    RETURNING id, payload

The claim commits at once; the send happens with no transaction open; the outcome is written by
a second short transaction conditioned on the alert still being ``pending`` with the same
``attempts`` and ``claimed_by = :token``. A second dispatcher therefore either loses the
``UPDATE`` race (PostgreSQL re-checks the ``WHERE`` clause on the locked row version; SQLite
serializes writers) or does not select the row while its claim is live, so no alert is sent by
two dispatchers at once. ``delivered`` and ``failed`` clear ``claimed_by`` and ``claimed_at``.
The claim is kept through an alert's whole retry sequence, ``claimed_at`` refreshed at every
attempt and after every retryable failure; a claim whose ``claimed_at`` is older than
``claim_ttl_s`` (or missing) belongs to a dispatcher that died and may be taken over (the
attempt it was making counts as made). ``last_error`` holds only the error of the last failed
attempt, never claim bookkeeping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qsl

import httpx
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import run_in_transaction, utcnow
from inventory.errors import InventoryError
from inventory.models import Alert, DeliveryStatus
from shelftally import __version__
from shelftally.errors import ConfigurationError
from shelftally.redact import mask_url

logger = logging.getLogger(__name__)

#: Longest ``last_error`` stored, in characters.
MAX_ERROR_CHARS = 2000

#: HTTP statuses that say "try again later"; every 5xx is retryable as well.
RETRYABLE_STATUSES = frozenset({408, 429})


class DeliveryError(InventoryError):
    """A sink could not deliver an alert.

    Args:
        message: what went wrong, with no secret in it (URLs masked).
        reason: machine-readable reason, e.g. ``"http_503"``, ``"timeout"``, ``"connection_error"``.
        retryable: ``True`` when the same send may succeed later (timeouts, connection errors,
            HTTP 408, 429 and 5xx); ``False`` when it never will (other HTTP 4xx, a bad payload).
        status_code: the HTTP status the receiver answered, if it answered.
    """

    reason = "delivery_failed"

    def __init__(self, message: str, *, reason: str, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retryable = retryable
        self.status_code = status_code


class AlertSink(Protocol):
    """Where alerts of one channel go.

    Attributes:
        name: the channel name, as stored in ``Alert.channel`` (``"log"``, ``"webhook"``).
    """

    name: str

    def send(self, payload: dict[str, Any]) -> None:
        """Deliver one alert body (the JSON object documented in :mod:`inventory.alerts`).

        Raises:
            DeliveryError: the alert was not delivered; ``retryable`` says whether to try again.
        """
        ...


class LogSink:
    """Announces alerts as one WARNING line on the ``inventory.sinks`` logger.

    Args:
        name: the channel name this sink serves.
    """

    def __init__(self, name: str = "log") -> None:
        self.name = name

    def send(self, payload: dict[str, Any]) -> None:
        """Log the alert with its ids (alert, discrepancy, location, SKU, kind, event); never raises."""
        discrepancy = payload.get("discrepancy") or {}
        logger.warning(
            "alert_id=%s %s: discrepancy_id=%s kind=%s location_code=%s sku_code=%s "
            "expected_quantity=%s observed_quantity=%s",
            payload.get("alert_id"),
            payload.get("event"),
            discrepancy.get("id"),
            discrepancy.get("kind"),
            discrepancy.get("location_code"),
            discrepancy.get("sku_code"),
            discrepancy.get("expected_quantity"),
            discrepancy.get("observed_quantity"),
        )

    def __repr__(self) -> str:
        return f"LogSink(name={self.name!r})"


class WebhookSink:
    """POSTs each alert as JSON to an HTTP(S) endpoint.

    The body is the alert payload documented in :mod:`inventory.alerts`, serialized once; the
    request carries ``Content-Type: application/json``, ``User-Agent: shelftally/<version>`` and
    ``X-ShelfTally-Alert-Id: <alert_id>``, the idempotency key receivers de-duplicate on (delivery
    is at least once). With a ``secret``, ``X-ShelfTally-Signature: sha256=<hex>`` holds the
    HMAC-SHA256 of the raw body keyed with the secret, the convention of GitHub webhooks'
    ``X-Hub-Signature-256``: receivers recompute it over the bytes received and compare with
    :func:`hmac.compare_digest`.

    A 2xx answer is a delivery. HTTP 408, 429, 5xx, timeouts and connection errors are retryable;
    any other answer (other 4xx, 3xx: redirects are not followed) is permanent. Credentials in
    the URL (``user:password@``) are sent as HTTP Basic auth and never logged; the secret is
    never logged either.

    Args:
        url: ``http://`` or ``https://`` endpoint.
        secret: HMAC key for ``X-ShelfTally-Signature``; ``None`` sends no signature.
        timeout_s: seconds allowed for each of connecting, writing, reading and waiting for a
            pooled connection (httpx's per-operation timeouts, not a total).
        client: an ``httpx.Client`` to send with (proxies, TLS settings, tests); by default the
            sink creates one and closes it in :meth:`close`.
        name: the channel name this sink serves.

    Raises:
        ConfigurationError: the URL is not an absolute http(s) URL, the secret is empty or
            ``timeout_s`` is not positive.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: SecretStr | str | None = None,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
        name: str = "webhook",
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise ConfigurationError(
                "webhook URL is not a valid URL", reason="invalid_webhook_url"
            ) from error
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(
                f"webhook URL must be an absolute http(s) URL, got {mask_url(parsed)!r}",
                reason="invalid_webhook_url",
            )
        if timeout_s <= 0:
            raise ConfigurationError(
                f"timeout_s must be > 0, got {timeout_s}", reason="invalid_webhook_timeout"
            )
        if isinstance(secret, str):
            secret = SecretStr(secret)
        if secret is not None and not secret.get_secret_value():
            raise ConfigurationError(
                "webhook secret is empty; pass None for no signature", reason="invalid_webhook_secret"
            )
        self.name = name
        self.timeout_s = timeout_s
        self.safe_url = mask_url(parsed)
        # Credentials travel as an explicit Basic auth header, so httpx's own request log (which
        # prints the URL) never sees them.
        self._auth = httpx.BasicAuth(parsed.username, parsed.password) if parsed.userinfo else None
        self._url = parsed.copy_with(username=None, password=None)
        self._secret = secret
        # Strings never to show, should a receiver or an error message echo them: the password,
        # the Basic auth token that carries it, the query (tokens often travel there, whole and
        # per value) and the HMAC key. Longest first, so a part never unmasks a whole.
        basic = (
            base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode() if parsed.userinfo else ""
        )
        query = parsed.query.decode() if parsed.query else ""
        query_values = [v for _, v in parse_qsl(query, keep_blank_values=False) if len(v) >= 4]
        candidates = [parsed.password, basic, query, *query_values, secret and secret.get_secret_value()]
        self._sensitive = sorted({v for v in candidates if v}, key=len, reverse=True)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(follow_redirects=False)

    def signature(self, body: bytes) -> str | None:
        """``sha256=<hex HMAC-SHA256 of body>`` with this sink's secret, or ``None`` without one."""
        if self._secret is None:
            return None
        digest = hmac.new(self._secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
        return f"sha256={digest}"

    def send(self, payload: dict[str, Any]) -> None:
        """POST one alert.

        Raises:
            DeliveryError: ``invalid_payload`` (permanent) when the payload has no ``alert_id`` or
                is not JSON-serializable; ``timeout`` or ``connection_error`` (retryable);
                ``http_<status>``, retryable for 408, 429 and 5xx, permanent otherwise.
        """
        alert_id = payload.get("alert_id")
        if alert_id is None:
            raise DeliveryError("alert payload has no alert_id", reason="invalid_payload", retryable=False)
        try:
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as error:
            raise DeliveryError(
                f"alert {alert_id} payload is not JSON: {error}", reason="invalid_payload", retryable=False
            ) from error
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"shelftally/{__version__}",
            "X-ShelfTally-Alert-Id": str(alert_id),
        }
        signature = self.signature(body)
        if signature is not None:
            headers["X-ShelfTally-Signature"] = signature
        try:
            response = self._client.post(
                self._url,
                content=body,
                headers=headers,
                auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,
            )
        except httpx.TimeoutException as error:
            raise DeliveryError(
                f"POST {self.safe_url} timed out after {self.timeout_s}s ({type(error).__name__})",
                reason="timeout",
                retryable=True,
            ) from error
        except httpx.TransportError as error:
            raise DeliveryError(
                f"POST {self.safe_url} failed: {self._redact(str(error))}",
                reason="connection_error",
                retryable=True,
            ) from error
        except httpx.HTTPError as error:
            raise DeliveryError(
                f"POST {self.safe_url} failed: {self._redact(str(error))}",
                reason="http_error",
                retryable=True,
            ) from error
        status = response.status_code
        if 200 <= status < 300:
            return
        retryable = status in RETRYABLE_STATUSES or 500 <= status < 600
        snippet = self._redact(response.text[:200]).strip()
        raise DeliveryError(
            f"POST {self.safe_url} answered {status} {response.reason_phrase}"
            + (f": {snippet}" if snippet else ""),
            reason=f"http_{status}",
            retryable=retryable,
            status_code=status,
        )

    def _redact(self, text: str) -> str:
        for sensitive in self._sensitive:
            text = text.replace(sensitive, "***")
        return text

    def close(self) -> None:
        """Close the HTTP client if this sink created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> WebhookSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, url={self.safe_url!r}, signed={self._secret is not None})"


@dataclass
class DeliveryReport:
    """What one :func:`deliver_pending` run did, by alert id.

    Attributes:
        delivered_ids: alerts delivered in this run (now ``delivered``).
        failed_ids: alerts given up in this run (now ``failed``): a permanent error, or
            ``max_attempts`` reached.
        retried_ids: alerts that needed more than one attempt in this run (whatever the outcome).
        skipped_ids: alerts read as pending but claimed by another dispatcher first, or whose
            claim was taken over mid-sequence; this run left them alone.
    """

    delivered_ids: list[int] = field(default_factory=list)
    failed_ids: list[int] = field(default_factory=list)
    retried_ids: list[int] = field(default_factory=list)
    skipped_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        both = set(self.delivered_ids) & set(self.failed_ids)
        if both:
            raise ValueError(f"alerts cannot be both delivered and failed, got {sorted(both)}")

    @property
    def delivered(self) -> int:
        """Number of alerts delivered."""
        return len(self.delivered_ids)

    @property
    def failed(self) -> int:
        """Number of alerts given up."""
        return len(self.failed_ids)

    @property
    def retried(self) -> int:
        """Number of alerts that needed more than one attempt."""
        return len(self.retried_ids)


def backoff_delay(attempt: int, *, backoff_s: float, backoff_cap_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    Capped exponential backoff, ``min(backoff_cap_s, backoff_s * 2 ** (attempt - 1))``, the
    "exponential backoff" of the AWS Architecture Blog, "Exponential Backoff and Jitter" (2015),
    without jitter: one dispatcher retries one alert at a time, so there is no herd to spread.
    With the defaults (0.5 s, cap 30 s): 0.5, 1, 2, 4, 8, 16, 30, 30, ...

    Raises:
        ValueError: ``attempt`` < 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    # Cap the exponent first so very large attempt numbers cannot overflow a float.
    return float(min(backoff_cap_s, backoff_s * 2 ** min(attempt - 1, 64)))


@dataclass(frozen=True)
class _Seen:
    """A pending alert as read; ``attempts`` is the value the compare-and-set claim expects."""

    id: int
    channel: str
    attempts: int
    last_error: str | None


def _claimable(token: str, *, claim_ttl_s: float) -> sa.ColumnElement[bool]:
    """The alert is free, already held by ``token``, or held by a claim older than ``claim_ttl_s``
    (or with no ``claimed_at``: treated as expired)."""
    cutoff = utcnow() - timedelta(seconds=claim_ttl_s)
    return sa.or_(
        Alert.claimed_by.is_(None),
        Alert.claimed_by == token,
        Alert.claimed_at.is_(None),
        Alert.claimed_at < cutoff,
    )


def _held_by(token: str) -> sa.ColumnElement[bool]:
    return Alert.claimed_by == token


def _pending(
    factory: sessionmaker[Session], channels: Sequence[str], *, token: str, limit: int, claim_ttl_s: float
) -> list[_Seen]:
    """Pending alerts of ``channels`` that no live dispatcher holds, oldest first."""
    statement = (
        sa.select(Alert.id, Alert.channel, Alert.attempts, Alert.last_error, Alert.claimed_by, Alert.claimed_at)
        .where(
            Alert.delivery_status == DeliveryStatus.PENDING,
            Alert.channel.in_(channels),
            _claimable(token, claim_ttl_s=claim_ttl_s),
        )
        .order_by(Alert.created_at, Alert.id)
        .limit(limit)
    )

    def read(session: Session) -> list[sa.Row[tuple[int, str, int, str | None, str | None, datetime | None]]]:
        return list(session.execute(statement))

    rows = []
    for row in run_in_transaction(factory, read):
        if row.claimed_by is not None:
            logger.warning(
                "alert_id=%s channel=%s: claim by %s since %s is older than claim_ttl_s=%ss, taking it over",
                row.id,
                row.channel,
                row.claimed_by,
                row.claimed_at.isoformat() if row.claimed_at is not None else None,
                claim_ttl_s,
            )
        rows.append(_Seen(row.id, row.channel, row.attempts, row.last_error))
    return rows


def _compare_and_set(
    factory: sessionmaker[Session],
    alert_id: int,
    *,
    attempts: int,
    claim: sa.ColumnElement[bool],
    values: Mapping[str, Any],
) -> dict[str, Any] | None:
    """In one short transaction, ``UPDATE`` the alert with ``values`` if it is still pending with
    exactly ``attempts`` and its claim columns satisfy ``claim``; return its payload, or ``None``
    if it was not."""
    statement = (
        sa.update(Alert)
        .where(
            Alert.id == alert_id,
            Alert.delivery_status == DeliveryStatus.PENDING,
            Alert.attempts == attempts,
            claim,
        )
        .values(**values)
        .returning(Alert.id, Alert.payload)
        .execution_options(synchronize_session=False)
    )

    def work(session: Session) -> dict[str, Any] | None:
        row = session.execute(statement).one_or_none()
        if row is None:
            return None
        payload: dict[str, Any] = row.payload if isinstance(row.payload, dict) else {}
        return payload

    return run_in_transaction(factory, work)


def _error_text(error: DeliveryError) -> str:
    return f"{error.reason}: {error}"[:MAX_ERROR_CHARS]


def _sinks_by_channel(sinks: Mapping[str, AlertSink] | Sequence[AlertSink]) -> dict[str, AlertSink]:
    if isinstance(sinks, Mapping):
        return dict(sinks)
    by_channel: dict[str, AlertSink] = {}
    for sink in sinks:
        if sink.name in by_channel:
            raise ValueError(f"two sinks are named {sink.name!r}; channel names must be unique")
        by_channel[sink.name] = sink
    return by_channel


def deliver_pending(
    factory: sessionmaker[Session],
    sinks: Mapping[str, AlertSink] | Sequence[AlertSink],
    *,
    max_attempts: int = 5,
    backoff_s: float = 0.5,
    backoff_cap_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    limit: int = 100,
    claim_ttl_s: float = 300.0,
) -> DeliveryReport:
    """Deliver pending alerts of the channels that have a sink, oldest first, one at a time.

    For each alert: claim it (an atomic compare-and-set that increments ``attempts``, see the
    module docstring), send it with no transaction open, and record the outcome in its own short
    transaction: ``delivered`` with ``delivered_at``; on a retryable :class:`DeliveryError`, the
    error in ``last_error``, a wait of :func:`backoff_delay` seconds
    (``min(backoff_cap_s, backoff_s * 2 ** (attempt - 1))``) and another attempt, until
    ``attempts`` reaches ``max_attempts``; then, or at once on a permanent error, ``failed``.
    ``attempts`` counts every try on the row, in this run and earlier ones. A delivered row keeps
    the error of its last failed attempt, if any, in ``last_error``. The claim (``claimed_by``,
    ``claimed_at``) is held from the first attempt to the outcome, ``claimed_at`` refreshed
    between retries, and cleared when the alert becomes ``delivered`` or ``failed``.

    Alerts of channels without a sink are not touched (they stay ``pending``). Several
    dispatchers (threads, processes, machines) may run at once: each alert is sent by one of
    them at a time. Retries wait in this call, so a failing receiver delays later alerts by up
    to the sum of the backoff delays.

    Args:
        factory: session factory (:func:`inventory.db.session_factory`).
        sinks: sinks by channel name, or a sequence of sinks keyed by their ``name``.
        max_attempts: tries per alert, counting those of earlier runs; at least 1.
        backoff_s: first backoff delay, in seconds.
        backoff_cap_s: largest backoff delay, in seconds.
        sleep: called with each backoff delay in seconds (tests pass a recorder).
        limit: most alerts handled in this call.
        claim_ttl_s: seconds after which another dispatcher's claim counts as abandoned (its
            process died) and is taken over. It must exceed the longest single send (the sinks'
            timeouts) and ``backoff_cap_s``, with margin for clock differences between machines.

    Returns:
        The :class:`DeliveryReport` of this run.

    Raises:
        ValueError: a parameter is out of range, or two sinks of a sequence share a name.
        sqlalchemy.exc.SQLAlchemyError: the database failed (transient conflicts are retried by
            :func:`inventory.db.run_in_transaction`). An alert being sent when an exception other
            than :class:`DeliveryError` escapes a sink is released before the exception
            propagates: still ``pending``, its attempt counted, its claim cleared and
            ``last_error`` starting with ``"interrupted: "``.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if backoff_s < 0 or backoff_cap_s < 0:
        raise ValueError(
            f"backoff delays must be >= 0, got backoff_s={backoff_s}, backoff_cap_s={backoff_cap_s}"
        )
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if claim_ttl_s <= backoff_cap_s:
        raise ValueError(f"claim_ttl_s ({claim_ttl_s}) must exceed backoff_cap_s ({backoff_cap_s})")
    by_channel = _sinks_by_channel(sinks)
    report = DeliveryReport()
    if not by_channel:
        return report
    token = uuid.uuid4().hex
    for seen in _pending(factory, sorted(by_channel), token=token, limit=limit, claim_ttl_s=claim_ttl_s):
        _deliver_one(
            factory,
            by_channel[seen.channel],
            seen,
            report,
            token=token,
            max_attempts=max_attempts,
            backoff_s=backoff_s,
            backoff_cap_s=backoff_cap_s,
            claim_ttl_s=claim_ttl_s,
            sleep=sleep,
        )
    logger.info(
        "alert delivery run %s: delivered=%s failed=%s retried=%s skipped=%s",
        token,
        report.delivered,
        report.failed,
        report.retried,
        len(report.skipped_ids),
    )
    return report


def _deliver_one(
    factory: sessionmaker[Session],
    sink: AlertSink,
    seen: _Seen,
    report: DeliveryReport,
    *,
    token: str,
    max_attempts: int,
    backoff_s: float,
    backoff_cap_s: float,
    claim_ttl_s: float,
    sleep: Callable[[float], None],
) -> None:
    alert_id, channel, attempts = seen.id, seen.channel, seen.attempts
    released = {"claimed_by": None, "claimed_at": None}
    if attempts >= max_attempts:
        # Reachable for a row taken over from a dead dispatcher, released by a sink's unexpected
        # exception on its last attempt, or tried by a dispatcher with a larger max_attempts.
        error = seen.last_error or f"max_attempts ({max_attempts}) reached"
        given_up = _compare_and_set(
            factory,
            alert_id,
            attempts=attempts,
            claim=_claimable(token, claim_ttl_s=claim_ttl_s),
            values={"delivery_status": DeliveryStatus.FAILED, "last_error": error, **released},
        )
        if given_up is None:
            report.skipped_ids.append(alert_id)
        else:
            report.failed_ids.append(alert_id)
            logger.error("alert_id=%s channel=%s failed after %s attempts: %s", alert_id, channel, attempts, error)
        return
    tried_here = 0
    while True:
        payload = _compare_and_set(
            factory,
            alert_id,
            attempts=attempts,
            claim=_claimable(token, claim_ttl_s=claim_ttl_s),
            values={"claimed_by": token, "claimed_at": utcnow(), "attempts": Alert.attempts + 1},
        )
        if payload is None:
            logger.info("alert_id=%s channel=%s: claimed by another dispatcher, skipping", alert_id, channel)
            report.skipped_ids.append(alert_id)
            return
        attempts += 1
        tried_here += 1
        if tried_here == 2:
            report.retried_ids.append(alert_id)
        values: dict[str, Any] | None = None
        try:
            sink.send(payload)
        except DeliveryError as error:
            error_text = _error_text(error)
            if error.retryable and attempts < max_attempts:
                delay = backoff_delay(attempts, backoff_s=backoff_s, backoff_cap_s=backoff_cap_s)
                logger.warning(
                    "alert_id=%s discrepancy_id=%s channel=%s attempt %s/%s failed (%s), retrying in %ss: %s",
                    alert_id,
                    _discrepancy_id(payload),
                    channel,
                    attempts,
                    max_attempts,
                    error.reason,
                    delay,
                    error,
                )
                values = {"last_error": error_text, "claimed_at": utcnow()}  # the claim is kept
            else:
                logger.error(
                    "alert_id=%s discrepancy_id=%s channel=%s failed on attempt %s/%s (%s%s): %s",
                    alert_id,
                    _discrepancy_id(payload),
                    channel,
                    attempts,
                    max_attempts,
                    error.reason,
                    "" if error.retryable else ", permanent",
                    error,
                )
                values = {"delivery_status": DeliveryStatus.FAILED, "last_error": error_text, **released}
        else:
            # last_error keeps the error of the last failed attempt, if any.
            values = {"delivery_status": DeliveryStatus.DELIVERED, "delivered_at": utcnow(), **released}
        finally:
            if values is None:
                _release(factory, alert_id, token=token, attempts=attempts)
        recorded = _compare_and_set(factory, alert_id, attempts=attempts, claim=_held_by(token), values=values)
        if recorded is None:
            logger.warning(
                "alert_id=%s channel=%s: claim taken over by another dispatcher during attempt %s; "
                "leaving the alert to it",
                alert_id,
                channel,
                attempts,
            )
            report.skipped_ids.append(alert_id)
            return
        status = values.get("delivery_status")
        if status is DeliveryStatus.DELIVERED:
            logger.info(
                "alert_id=%s discrepancy_id=%s channel=%s delivered on attempt %s",
                alert_id,
                _discrepancy_id(payload),
                channel,
                attempts,
            )
            report.delivered_ids.append(alert_id)
            return
        if status is DeliveryStatus.FAILED:
            report.failed_ids.append(alert_id)
            return
        sleep(backoff_delay(attempts, backoff_s=backoff_s, backoff_cap_s=backoff_cap_s))


def _release(factory: sessionmaker[Session], alert_id: int, *, token: str, attempts: int) -> None:
    """Give an alert back (still pending, attempt counted, claim cleared) when a sink raised
    something unexpected."""
    try:
        _compare_and_set(
            factory,
            alert_id,
            attempts=attempts,
            claim=_held_by(token),
            values={
                "claimed_by": None,
                "claimed_at": None,
                "last_error": "interrupted: the sink raised an unexpected exception",
            },
        )
    except SQLAlchemyError:
        logger.exception("alert_id=%s: could not release the claim; it expires after claim_ttl_s", alert_id)


def _discrepancy_id(payload: Mapping[str, Any]) -> object:
    discrepancy = payload.get("discrepancy")
    return discrepancy.get("id") if isinstance(discrepancy, Mapping) else None
