"""``shelftally demo``: the README's first command, on the embedded default."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from inventory.db import create_engine, session_factory
from inventory.models import Alert, DeliveryStatus, Discrepancy, DiscrepancyStatus
from workers.cli import app


def test_demo_builds_warehouse_and_reports(tmp_path: Path) -> None:
    workdir = tmp_path / "démo dir"  # spaces and non-ASCII in the path
    result = CliRunner().invoke(app, ["demo", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    for kind in ("shortage", "out_of_stock", "overage", "misplaced", "unknown_product"):
        assert kind in result.output
    database = workdir / "shelftally.db"
    assert str(database) in result.output
    engine = create_engine(f"sqlite:///{database}")
    with session_factory(engine)() as session:
        open_kinds = sorted(
            d.kind.value
            for d in session.scalars(sa.select(Discrepancy).where(Discrepancy.status != DiscrepancyStatus.RESOLVED))
        )
        assert open_kinds == ["misplaced", "out_of_stock", "overage", "shortage", "unknown_product"]
        alerts = session.scalars(sa.select(Alert)).all()
        assert len(alerts) == 5 and all(a.delivery_status is DeliveryStatus.DELIVERED for a in alerts)
    engine.dispose()
    # running it again starts from scratch and gives the same report
    again = CliRunner().invoke(app, ["demo", "--workdir", str(workdir)])
    assert again.exit_code == 0, again.output
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Discrepancy)) == 6
    engine.dispose()
