"""Alerts as a transactional outbox: one row per discrepancy state change and channel.

:func:`enqueue` is called by reconciliation and by admin actions inside their transaction, so an
alert exists if and only if the state change was committed. The body describes the discrepancy
as it was at the state change (a :class:`StateChange` snapshot), even when a later scan in the
same batch changes it again. Delivery happens afterwards
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
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inventory.db import utcnow
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


@dataclass(frozen=True)
class StateChange:
    """A discrepancy state change to announce, with the discrepancy as it was at that moment.

    Attributes:
        discrepancy: the discrepancy (its id may not be assigned yet; filled in at enqueue).
        state_change: what happened.
        body: :func:`discrepancy_dict` snapshot; ``id`` and ``sku_code`` are filled in by
            :func:`enqueue`.
    """

    discrepancy: Discrepancy
    state_change: AlertStateChange
    body: dict[str, Any]

    @classmethod
    def of(cls, discrepancy: Discrepancy, state_change: AlertStateChange, location_code: str) -> StateChange:
        """Snapshot ``discrepancy`` now."""
        return cls(discrepancy, state_change, discrepancy_dict(discrepancy, location_code=location_code, sku_code=None))


def state_change(session: Session, discrepancy: Discrepancy, change: AlertStateChange) -> StateChange:
    """Snapshot a stored discrepancy (looks up its location code)."""
    location_code = session.scalar(sa.select(Location.location_code).where(Location.id == discrepancy.location_id))
    return StateChange.of(discrepancy, change, location_code or "")


def enqueue(session: Session, *, changes: Sequence[StateChange], channels: Sequence[str]) -> list[Alert]:
    """Write one pending alert per state change and channel (does not commit).

    Costs a fixed number of statements for any number of changes.

    Args:
        session: the caller's session; the alerts commit with the state changes.
        changes: what to announce, in order.
        channels: sink names (``"log"``, ``"webhook"``); an empty sequence writes nothing.

    Returns:
        The new :class:`Alert` rows, flushed, ordered by change then channel.
    """
    if not channels or not changes:
        return []
    session.flush()  # assigns ids to new discrepancies
    sku_ids = {c.discrepancy.sku_id for c in changes if c.discrepancy.sku_id is not None}
    sku_codes: dict[int, str] = (
        dict(session.execute(sa.select(Sku.id, Sku.sku_code).where(Sku.id.in_(sku_ids))).all()) if sku_ids else {}
    )
    created = utcnow()
    pairs = []
    for change in changes:
        body = dict(change.body)
        body["id"] = change.discrepancy.id
        sku_id = change.discrepancy.sku_id
        body["sku_code"] = sku_codes[sku_id] if sku_id is not None else None
        for channel in channels:
            alert = Alert(
                discrepancy_id=change.discrepancy.id,
                channel=channel,
                state_change=change.state_change,
                payload={},
                created_at=created,
            )
            pairs.append((alert, body))
    session.add_all([alert for alert, _ in pairs])
    session.flush()
    for alert, body in pairs:
        alert.payload = {
            "schema": PAYLOAD_SCHEMA,
            "alert_id": alert.id,
            "event": f"discrepancy.{alert.state_change.value}",
            "discrepancy": body,
            "created_at": alert.created_at.isoformat(),
        }
    session.flush()
    return [alert for alert, _ in pairs]
