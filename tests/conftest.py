"""Shared fixtures: real SQLite and real PostgreSQL databases, created and dropped per test.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, database ``test``), overridable with
``SHELFTALLY_TEST_POSTGRES_URL``. Each test gets its own schema (``search_path`` set on every
connection), dropped afterwards. SQLite tests get a fresh file in ``tmp_path``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import create_engine, session_factory
from inventory.models import Base, FacingRule, Location, LocationLevel, Sku, StockLevel

POSTGRES_URL = os.environ.get(
    "SHELFTALLY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

BACKENDS = ["sqlite", "postgresql"]


def _postgres_schema_url(schema: str) -> str:
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a new, empty database on each backend (SQLite file, PostgreSQL schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shelftally.db"  # type: ignore[operator]
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield _postgres_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a fresh database with the models' tables created."""
    eng = create_engine(db_url)
    Base.metadata.create_all(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    """Session factory on :func:`engine`."""
    return session_factory(engine)


@pytest.fixture
def backend(engine: Engine) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    return engine.dialect.name


def at(minute: int, second: int = 0) -> datetime:
    """An aware UTC instant on a fixed day: ``2026-11-29 10:<minute>:<second>``."""
    return datetime(2026, 11, 29, 10, minute, second, tzinfo=UTC)


def seed_shelf(
    session: Session,
    *,
    book: dict[str, int | None],
    location_code: str = "WH1-A01-B01-S1",
    facing_rule: FacingRule = FacingRule.VISIBLE_UNITS,
    units_per_facing: int = 1,
) -> Location:
    """Create a warehouse > shelf pair and SKUs; ``book`` maps sku_code to its book quantity
    at the shelf (``None``: the SKU exists but is not stocked there)."""
    warehouse = Location(location_code="WH1", level=LocationLevel.WAREHOUSE, name="Warehouse 1")
    session.add(warehouse)
    session.flush()
    shelf = Location(
        location_code=location_code,
        level=LocationLevel.SHELF,
        parent_id=warehouse.id,
        facing_rule=facing_rule,
        units_per_facing=units_per_facing,
    )
    session.add(shelf)
    session.flush()
    for code, quantity in book.items():
        sku = Sku(sku_code=code, name=f"Product {code}")
        session.add(sku)
        session.flush()
        if quantity is not None:
            session.add(StockLevel(location_id=shelf.id, sku_id=sku.id, quantity=quantity, source="test"))
    session.flush()
    return shelf


def count_rows(session: Session, model: type[Base]) -> int:
    """Number of rows of a model's table."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (model.pt, model.onnx, openvino/, labels, preprocess, metrics) of a
    YOLOv8n trained for 20 epochs at 128 px on toy rectangles (``tests/detector/conftest.py``).

    20, not fewer: training is seeded and deterministic on one machine, but the trajectory
    depends on the CPU's kernels. 12 epochs passed the suite on an earlier machine; on this
    one they found 45 % (8 toy pictures) and 63 % (40) of the rectangles, 20 epochs 100 % and
    98.9 % (a one-off measurement on 2026-11-29, about 55 s of training).

    Defined here, not in the detector tests' conftest, so that the detector tests and the scan
    pipeline tests share one training per session."""
    import shutil

    from detector._offline import configure_offline
    from detector.model_dir import Preprocess, write_metadata
    from tests.detector.conftest import TOY_LABELS, TOY_SIZE, write_toy_dataset

    configure_offline(tmp_path_factory.mktemp("ultralytics"))
    from ultralytics import YOLO

    work = tmp_path_factory.mktemp("tiny_detector")
    data = write_toy_dataset(work / "data")
    model = YOLO("yolov8n.yaml")
    model.train(
        data=str(data), imgsz=TOY_SIZE, epochs=20, batch=16, nbs=16, optimizer="AdamW", lr0=0.003,
        warmup_epochs=0.5, mosaic=0.0, workers=0, device="cpu", seed=0, deterministic=True,
        plots=False, val=True, project=str(work / "runs"), name="train", exist_ok=True, verbose=False, amp=False,
    )
    out = work / "model"
    out.mkdir()
    best = Path(model.trainer.best)
    shutil.copyfile(best, out / "model.pt")
    metrics = YOLO(str(out / "model.pt")).val(data=str(data), imgsz=TOY_SIZE, batch=16, device="cpu", plots=False,
                                                verbose=False, project=str(work / "runs"), name="val", exist_ok=True)
    trained = YOLO(str(out / "model.pt"))
    onnx_path = Path(trained.export(format="onnx", imgsz=TOY_SIZE, dynamic=True, simplify=True, opset=17))
    shutil.move(onnx_path, out / "model.onnx")
    ov_dir = Path(YOLO(str(out / "model.pt")).export(format="openvino", imgsz=TOY_SIZE, dynamic=True))
    (out / "openvino").mkdir()
    for suffix in (".xml", ".bin"):
        shutil.move(next(ov_dir.glob(f"*{suffix}")), out / "openvino" / f"model{suffix}")
    shutil.rmtree(ov_dir)
    write_metadata(
        out,
        labels=TOY_LABELS,
        preprocess=Preprocess(input_size=TOY_SIZE),
        metrics={"mAP50": float(metrics.box.map50), "mAP50-95": float(metrics.box.map),
                 "precision": float(metrics.box.mp), "recall": float(metrics.box.mr)},
        provenance={"recipe": "tests/conftest.py::tiny_detector"},
    )
    return out
