"""``shelftally demo``: the README's first command, on the embedded default."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sqlalchemy as sa
from rich.console import Console
from typer.testing import CliRunner

from classifier.errors import ModelLoadError
from inventory.db import create_engine, session_factory
from inventory.models import Alert, DeliveryStatus, Discrepancy, DiscrepancyStatus, Scan
from workers.cli import app
from workers.demo import vision as demo_vision
from workers.demo.vision import SHELVES, DemoSize, demo_packshots, run_vision_demo, train_demo_models
from workers.settings import Settings


def test_demo_builds_warehouse_and_reports(tmp_path: Path) -> None:
    workdir = tmp_path / "démo dir"  # spaces and non-ASCII in the path
    result = CliRunner().invoke(app, ["demo", "--counts-only", "--workdir", str(workdir)])
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
    again = CliRunner().invoke(app, ["demo", "--counts-only", "--workdir", str(workdir)])
    assert again.exit_code == 0, again.output
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Discrepancy)) == 6
    engine.dispose()


@pytest.mark.slow
def test_vision_demo_scans_its_photos_and_reuses_its_models(tmp_path: Path) -> None:
    """The photo demo on a tiny training budget (the shipped detector, a tiny classifier): the flow, not
    the accuracy (the README reports that)."""
    size = DemoSize(training_pictures=12, detector_epochs=1, detector_imgsz=160, classifier_epochs=1,
                    classifier_input=32)
    out = io.StringIO()
    console = Console(file=out, width=200)
    workdir = tmp_path / "démo"
    database, run = run_vision_demo(workdir, console=console, settings=Settings(), size=size)
    assert [r.status for r in run.results] == ["processed"] * 6
    assert [r.location_code for r in run.results] == [code for code, _ in SHELVES for _ in range(2)]  # from labels
    assert all(r.evidence is not None and r.evidence.is_file() for r in run.results)
    engine = create_engine(f"sqlite:///{database}")
    with session_factory(engine)() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Scan)) == 6
    engine.dispose()
    text = out.getvalue()
    shipped = size.detector_dir()
    assert ("product detector: the shipped" if shipped else "trained the product detector") in text
    assert "Open discrepancies" in text and "demo finished" in text
    # The next command finds the demo's models and database: demo.env, printed with the command.
    env_file = workdir / "demo.env"
    assert f". {env_file}" in text and "shelftally scan" in text and "--captured-at" in text
    after = Settings.from_environment(env_file=env_file)
    assert after.models.detector_dir is not None and (after.models.detector_dir / "model.onnx").is_file()
    assert after.models.classifier_dir is not None and after.models.classifier_dir.is_dir()
    assert after.database_url == f"sqlite:///{database.resolve()}"
    assert after.reconcile.unknown_tolerance_facings == 1
    again = io.StringIO()
    run_vision_demo(workdir, console=Console(file=again, width=200), settings=Settings(), size=size)
    assert "reusing the demo models" in again.getvalue()


def test_demo_classifier_is_pretrained_only_where_the_extra_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_vision, "pretrained_available", lambda name: False)
    assert DemoSize().classifier_recipe() == (demo_vision.SCRATCH_BACKBONE, "full")
    without = DemoSize().key()
    monkeypatch.setattr(demo_vision, "pretrained_available", lambda name: name == demo_vision.PRETRAINED_BACKBONE)
    assert DemoSize().classifier_recipe() == (demo_vision.PRETRAINED_BACKBONE, "probe")
    assert DemoSize().key() != without  # installing the extra retrains instead of reusing the old models
    assert DemoSize(classifier_backbone="resnet18").classifier_recipe() == ("resnet18", "full")


def test_a_wrong_demo_backbone_keeps_the_models_already_there(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    kept = folder / "detector" / "model.onnx"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"trained before")
    (folder / "recipe.txt").write_text("an older recipe\n")
    for name, reason in (("nonet", "unknown_architecture"), ("resnet18.nonsense", "unknown_pretrained")):
        with pytest.raises(ModelLoadError) as caught:
            train_demo_models(folder, DemoSize(classifier_backbone=name), demo_packshots(), print)
        assert caught.value.reason == reason
        assert kept.read_bytes() == b"trained before"


def test_the_demo_uses_the_shipped_detector_unless_told_to_train(tmp_path: Path) -> None:
    from workers.cli import app

    shipped = demo_vision.SHIPPED_DETECTOR
    assert DemoSize().detector_dir() == (shipped if (shipped / "model.onnx").is_file() else None)
    assert DemoSize(detector="train").detector_dir() is None
    assert DemoSize(detector="train").key() != DemoSize().key() or DemoSize().detector_dir() is None
    done = CliRunner().invoke(app, ["demo", "--detector", "mine", "--workdir", str(tmp_path / "d")])
    assert done.exit_code == 2 and "shipped or train" in done.output
