"""Alerts as a transactional outbox: one row per discrepancy state change and channel.

:func:`enqueue` is called by reconciliation and by admin actions inside their transaction, so an
alert exists if and only if the state change was committed. Delivery happens afterwards
(:mod:`inventory.sinks`), records ``delivery_status`` and ``attempts`` on the row, and never
runs inside the reconciling transaction.

The JSON body of an alert (``Alert.payload``, POSTed as is by the webhook sink)::

    {
      "schema": "shelftally.alert/1",
      "alert_id": 17,                      # unique per alert; use it to de-duplicate
      "event": "discrepancy.opened",       # .opened | .changed | .resolved
      "discrepancy": {
        "id": 5, "kind": "shortage", "status": "open",
        "location_code": "WH1-A01-B02-S3", "sku_code": "SKU-123",  # sku_code null for unknown_product
        "expected_quantity": 12, "observed_quantity": 7,            # pieces; expected null for misplaced
        "first_seen_at": "2026-11-29T10:00:00+00:00", "last_seen_at": "...",
        "consecutive_scans": 2, "evidence_scan_id": 42,
        "resolution": null
      },
      "created_at": "2026-11-29T10:00:03.120000+00:00"
    }
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inventory.db import utcnow
from inventory.errors import NotFoundError
from inventory.models import Alert, AlertStateChange, Discrepancy, Location, Sku

PAYLOAD_SCHEMA = "shelftally.alert/1"


def discrepancy_dict(discrepancy: Discrepancy, *, location_code: str, sku_code: str | None) -> dict[str, Any]:
    """The ``discrepancy`` object of the alert body (JSON-ready: ISO 8601 UTC strings)."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": discrepancy.id,
        "kind": discrepancy.kind.value,
        "status": discrepancy.status.value,
        "location_code": location_code,
        "sku_code": sku_code,
        "expected_quantity": discrepancy.expected_quantity,
        "observed_quantity": discrepancy.observed_quantity,
        "first_seen_at": iso(discrepancy.first_seen_at),
        "last_seen_at": iso(discrepancy.last_seen_at),
        "consecutive_scans": discrepancy.consecutive_scans,
        "evidence_scan_id": discrepancy.evidence_scan_id,
        "resolution": discrepancy.resolution.value if discrepancy.resolution else None,
    }


def enqueue(
    session: Session,
    *,
    discrepancy: Discrepancy,
    state_change: AlertStateChange,
    channels: Sequence[str],
) -> list[Alert]:
    """Write one pending alert per channel for a discrepancy state change (does not commit).

    Args:
        session: the caller's session; the alert commits with the state change.
        discrepancy: the discrepancy, already flushed (it needs an id).
        state_change: what happened to it.
        channels: sink names (``"log"``, ``"webhook"``); an empty sequence writes nothing.

    Returns:
        The new :class:`Alert` rows, flushed, with their payloads.
    """
    if not channels:
        return []
    session.flush()
    location_code = session.scalar(sa.select(Location.location_code).where(Location.id == discrepancy.location_id))
    sku_code = (
        session.scalar(sa.select(Sku.sku_code).where(Sku.id == discrepancy.sku_id))
        if discrepancy.sku_id is not None
        else None
    )
    if location_code is None:
        raise NotFoundError(f"location id {discrepancy.location_id} of discrepancy {discrepancy.id} not found")
    body = discrepancy_dict(discrepancy, location_code=location_code, sku_code=sku_code)
    alerts = []
    for channel in channels:
        created = utcnow()
        alert = Alert(
            discrepancy_id=discrepancy.id,
            channel=channel,
            state_change=state_change,
            payload={},
            created_at=created,
        )
        session.add(alert)
        alerts.append(alert)
    session.flush()
    for alert in alerts:
        alert.payload = {
            "schema": PAYLOAD_SCHEMA,
            "alert_id": alert.id,
            "event": f"discrepancy.{state_change.value}",
            "discrepancy": body,
            "created_at": alert.created_at.isoformat(),
        }
    session.flush()
    return alerts
