"""The scan pipeline end to end on real SQLite and PostgreSQL, with models trained in the suite."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from detector.types import Detections
from inventory.errors import NaiveDatetimeError, UnknownLocationError
from inventory.models import Alert, Detection, Discrepancy, DiscrepancyKind, Observation, Scan, ScanStatus
from inventory.reconcile import ReconcilePolicy
from tests.conftest import count_rows
from tests.workers.conftest import SHELF, encode, toy_scene
from workers.scan.locate import location_label_image
from workers.scan.pipeline import PipelineConfig, ScanPipeline, crop_boxes, load_models

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
GOOD_SEEDS = (1, 2, 3, 4)  # toy pictures the tiny detector and classifier count exactly (checked below)


@pytest.fixture
def pipeline(
    factory: sessionmaker[Session], tiny_detector: Path, toy_classifier: Path, tmp_path: Path, shelf_book: None
) -> ScanPipeline:
    detector, recognizer = load_models(tiny_detector, toy_classifier, threads=1)
    return ScanPipeline(
        factory=factory, detector=detector, recognizer=recognizer, policy=ReconcilePolicy(),
        config=PipelineConfig(evidence_dir=tmp_path / "evidence", channels=("log",)), clock=lambda: NOW,
    )


def at(minutes: int) -> datetime:
    return NOW - timedelta(hours=1) + timedelta(minutes=minutes)


# ---------------------------------------------------------------- crops


@pytest.mark.parametrize(
    ("xyxy", "expected_shapes", "expected_kept"),
    [
        (np.zeros((0, 4)), [], []),
        ([[10, 20, 30, 60]], [(40, 20, 3)], [0]),
        ([[10.2, 20.7, 29.5, 59.1]], [(40, 20, 3)], [0]),  # rounded outwards
        ([[-5, -5, 10, 10]], [(10, 10, 3)], [0]),  # clipped (detector boxes usually are already)
        ([[90, 90, 120, 120]], [(10, 10, 3)], [0]),
        ([[10, 10, 11, 40], [5, 5, 25, 25]], [(20, 20, 3)], [1]),  # 1 px wide: degenerate, dropped
        ([[50, 50, 50, 50]], [], []),
    ],
)
def test_crop_boxes(xyxy: list[list[float]], expected_shapes: list[tuple[int, ...]], expected_kept: list[int]) -> None:
    pixels = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3).astype(np.uint8)
    boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
    detections = Detections(boxes, np.full(len(boxes), 0.9, np.float32), np.zeros(len(boxes), np.int64))
    crops, kept = crop_boxes(pixels, detections, min_box_px=2)
    assert [c.shape for c in crops] == expected_shapes
    assert kept.tolist() == expected_kept
    if crops:
        x1, y1 = (max(0, int(np.floor(v))) for v in boxes[kept[0], :2])
        assert np.array_equal(crops[0][0, 0], pixels[y1, x1])


# ---------------------------------------------------------------- counting and reconciling


@pytest.mark.slow
def test_toy_pictures_are_counted_exactly(pipeline: ScanPipeline, factory: sessionmaker[Session]) -> None:
    for minute, seed in enumerate(GOOD_SEEDS):
        image, truth = toy_scene(seed)
        result = pipeline.scan(encode(image), source=f"toy-{seed}.png", location_code=SHELF, captured_at=at(minute))
        assert result.status == "processed", result
        assert result.counts == truth, f"seed {seed}"
        assert result.unknown_facings == 0
        assert set(result.timings_ms) == {"decode", "detect", "crop", "classify", "persist", "reconcile", "evidence"}
    with factory() as session:
        scans = session.scalars(sa.select(Scan).order_by(Scan.id)).all()
        assert [s.status for s in scans] == [ScanStatus.PROCESSED] * len(GOOD_SEEDS)
        assert all(s.detector_version and s.classifier_version for s in scans)
        assert count_rows(session, Detection) == sum(sum(toy_scene(s)[1].values()) for s in GOOD_SEEDS)


@pytest.mark.slow
def test_shortage_is_confirmed_on_the_second_scan_with_evidence(
    pipeline: ScanPipeline, factory: sessionmaker[Session]
) -> None:
    results = []
    for minute, seed in enumerate(GOOD_SEEDS[:2]):
        image, _ = toy_scene(seed)
        results.append(pipeline.scan(encode(image), source="cam", location_code=SHELF, captured_at=at(minute)))
    last = results[-1]
    lines = {line.sku_code: line for line in last.lines}
    # SKU-GREEN is in the book (4) but never in a toy picture: out of stock, confirmed by 2 scans.
    assert lines["SKU-GREEN"].discrepancy == "out_of_stock" and lines["SKU-GREEN"].consecutive_scans == 2
    assert lines["SKU-GREEN"].book == 4 and lines["SKU-GREEN"].counted == 0
    with factory() as session:
        kinds = {d.kind for d in session.scalars(sa.select(Discrepancy))}
        assert DiscrepancyKind.OUT_OF_STOCK in kinds
        assert count_rows(session, Alert) >= 1  # the outbox row for the confirmed discrepancy
    for result in results:
        assert result.evidence is not None and result.evidence.is_file()
        picture = cv2.imdecode(np.frombuffer(result.evidence.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape[1] == toy_scene(GOOD_SEEDS[0])[0].shape[1]
        assert result.evidence.name == f"scan-{result.scan_id:08d}.jpg"


@pytest.mark.slow
def test_the_same_picture_twice_is_one_scan(pipeline: ScanPipeline, factory: sessionmaker[Session]) -> None:
    data = encode(toy_scene(GOOD_SEEDS[0])[0])
    first = pipeline.scan(data, source="a.png", location_code=SHELF, captured_at=at(0))
    second = pipeline.scan(data, source="copy of a.png", location_code=SHELF, captured_at=at(0))
    assert first.status == "processed" and second.status == "duplicate"
    assert second.scan_id == first.scan_id and "detect" not in second.timings_ms  # the models did not run
    with factory() as session:
        assert count_rows(session, Scan) == 1
        assert count_rows(session, Observation) == len(first.counts)


# ---------------------------------------------------------------- bad input


def _truncated_jpeg() -> bytes:
    data = encode(toy_scene(GOOD_SEEDS[0])[0], ".jpg")
    return data[: len(data) // 2]


BAD_INPUTS = [
    ("empty.png", b"", "empty_file"),
    ("notes.jpg", b"shelf A-01: 12 cartons of milk\n", "not_an_image"),
    ("login.jpg", b"<!DOCTYPE html><html><body><form action=/login>Password</form></body></html>", "not_an_image"),
    ("cut.jpg", None, "corrupt_image"),
]


@pytest.mark.slow
def test_every_bad_picture_is_rejected_with_its_reason_and_good_ones_still_count(
    pipeline: ScanPipeline, factory: sessionmaker[Session]
) -> None:
    good, truth = toy_scene(GOOD_SEEDS[1])
    outcomes = []
    for minute, (name, data, _) in enumerate(BAD_INPUTS):
        outcomes.append(pipeline.scan(data if data is not None else _truncated_jpeg(), source=name,
                                      location_code=SHELF, captured_at=at(minute)))
        outcomes.append(pipeline.scan(encode(good), source=f"good-{minute}.png", location_code=SHELF,
                                      captured_at=at(minute)))
    rejected = outcomes[0::2]
    counted = outcomes[1::2]
    assert [r.reason for r in rejected] == [reason for _, _, reason in BAD_INPUTS]
    assert all(r.status == "rejected" and r.scan_id is not None and r.counts == {} for r in rejected)
    assert all(r.status == "processed" and r.counts == truth for r in counted)
    with factory() as session:
        rows = session.scalars(sa.select(Scan).where(Scan.status == ScanStatus.REJECTED).order_by(Scan.id)).all()
        assert [s.reject_reason for s in rows] == [reason for _, _, reason in BAD_INPUTS]
        rejected_ids = [s.id for s in rows]
        assert session.scalar(sa.select(sa.func.count()).select_from(Observation)
                              .where(Observation.scan_id.in_(rejected_ids))) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Detection)
                              .where(Detection.scan_id.in_(rejected_ids))) == 0


@pytest.mark.slow
def test_a_picture_over_the_pixel_limit_is_rejected(pipeline: ScanPipeline) -> None:
    small_limit = ScanPipeline(
        factory=pipeline.factory, detector=pipeline.detector, recognizer=pipeline.recognizer,
        policy=pipeline.policy, config=PipelineConfig(max_pixels=100 * 100), clock=pipeline.clock,
    )
    result = small_limit.scan(encode(toy_scene(1)[0]), source="big.png", location_code=SHELF, captured_at=at(0))
    assert (result.status, result.reason) == ("rejected", "image_too_large")


@pytest.mark.slow
def test_a_capture_time_far_in_the_future_is_rejected(pipeline: ScanPipeline) -> None:
    result = pipeline.scan(encode(toy_scene(1)[0]), source="clock.png", location_code=SHELF,
                           captured_at=NOW + timedelta(days=1))
    assert (result.status, result.reason) == ("rejected", "captured_in_future")


@pytest.mark.slow
def test_unreadable_path_is_rejected(pipeline: ScanPipeline, tmp_path: Path) -> None:
    result = pipeline.scan_path(tmp_path / "vanished.jpg", location_code=SHELF, captured_at=at(0))
    assert (result.status, result.reason) == ("rejected", "unreadable_file")


@pytest.mark.slow
def test_caller_mistakes_raise(pipeline: ScanPipeline) -> None:
    data = encode(toy_scene(1)[0])
    with pytest.raises(UnknownLocationError):
        pipeline.scan(data, source="x", location_code="NO-SUCH-SHELF", captured_at=at(0))
    with pytest.raises(NaiveDatetimeError):
        pipeline.scan(data, source="x", location_code=SHELF, captured_at=datetime(2026, 1, 1))


# ---------------------------------------------------------------- orientation, capture time, location


def _jpeg(image_rgb: np.ndarray, *, orientation: int = 1, taken: str | None = None) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    if taken is not None:
        exif.get_ifd(0x8769)[0x9003] = taken
        exif.get_ifd(0x8769)[0x9011] = "+00:00"
    out = io.BytesIO()
    Image.fromarray(image_rgb).save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


@pytest.mark.slow
def test_exif_rotated_picture_gives_boxes_in_the_upright_frame(
    pipeline: ScanPipeline, factory: sessionmaker[Session]
) -> None:
    upright, truth = toy_scene(GOOD_SEEDS[2])
    # Orientation 6: the stored pixels are the upright picture turned 90 degrees counter-clockwise.
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    plain = pipeline.scan(_jpeg(upright), source="upright.jpg", location_code=SHELF, captured_at=at(0))
    rotated = pipeline.scan(_jpeg(stored, orientation=6), source="rotated.jpg", location_code=SHELF,
                            captured_at=at(1))
    assert plain.counts == truth and rotated.counts == truth
    with factory() as session:
        def boxes(scan_id: int | None) -> np.ndarray:
            rows = session.scalars(sa.select(Detection).where(Detection.scan_id == scan_id)).all()
            return np.array(sorted((d.x1, d.y1, d.x2, d.y2) for d in rows))

        assert np.abs(boxes(plain.scan_id) - boxes(rotated.scan_id)).max() <= 3.0


@pytest.mark.slow
def test_capture_time_comes_from_exif_when_not_given(pipeline: ScanPipeline) -> None:
    result = pipeline.scan(_jpeg(toy_scene(1)[0], taken="2026:11:29 10:30:00"), source="phone.jpg",
                           location_code=SHELF)
    assert result.captured_at == datetime(2026, 11, 29, 10, 30, tzinfo=UTC)


@pytest.mark.slow
def test_location_is_read_from_a_label_in_the_picture(pipeline: ScanPipeline) -> None:
    shelf, _ = toy_scene(GOOD_SEEDS[0], scale=4)  # 512 x 512
    label = location_label_image(SHELF, size_px=200)
    canvas = np.full((shelf.shape[0] + label.shape[0] + 20, shelf.shape[1], 3), 255, np.uint8)
    canvas[: shelf.shape[0]] = shelf
    canvas[shelf.shape[0] + 10 : shelf.shape[0] + 10 + label.shape[0], 10 : 10 + label.shape[1]] = label
    result = pipeline.scan(encode(canvas), source="labelled.png", captured_at=at(0))
    assert result.status == "processed" and result.location_code == SHELF
    unlabelled = pipeline.scan(encode(shelf), source="no-label.png", captured_at=at(1))
    assert (unlabelled.status, unlabelled.reason, unlabelled.location_code) == (
        "rejected", "location_not_found", None)
    corrupt = pipeline.scan(b"\xff\xd8\xff\xe0 broken", source="broken.jpg", captured_at=at(2))
    assert (corrupt.status, corrupt.reason, corrupt.location_code) == ("rejected", "corrupt_image", None)


@pytest.mark.slow
def test_a_file_over_the_byte_limit_is_rejected_unread(pipeline: ScanPipeline, tmp_path: Path) -> None:
    small = ScanPipeline(
        factory=pipeline.factory, detector=pipeline.detector, recognizer=pipeline.recognizer,
        policy=pipeline.policy, config=PipelineConfig(max_bytes=1000), clock=pipeline.clock,
    )
    path = tmp_path / "huge.png"
    path.write_bytes(encode(toy_scene(1)[0]) + b"\0" * 2000)
    result = small.scan_path(path, location_code=SHELF, captured_at=at(0))
    assert (result.status, result.reason) == ("rejected", "file_too_large")
    with small.factory() as session:
        scan = session.get(Scan, result.scan_id)
        assert scan is not None and scan.image_size_bytes == path.stat().st_size  # its size, though never read


@pytest.mark.slow
def test_a_copied_file_without_a_camera_time_is_the_same_picture(
    pipeline: ScanPipeline, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    import os

    data = encode(toy_scene(GOOD_SEEDS[0])[0])  # PNG: no EXIF time
    first, copy = tmp_path / "a.png", tmp_path / "copy of a.png"
    first.write_bytes(data)
    copy.write_bytes(data)
    os.utime(first, (at(0).timestamp(), at(0).timestamp()))
    os.utime(copy, (at(30).timestamp(), at(30).timestamp()))  # copying changed the file time
    one = pipeline.scan_path(first, location_code=SHELF)
    two = pipeline.scan_path(copy, location_code=SHELF)
    assert one.status == "processed" and one.captured_at == at(0)
    assert two.status == "duplicate" and two.scan_id == one.scan_id
    # With an explicit capture time the same bytes are a new scan (a fixed camera, an unchanged shelf).
    three = pipeline.scan(data, source="camera-7", location_code=SHELF, captured_at=at(45))
    assert three.status == "processed" and three.scan_id != one.scan_id
    with factory() as session:
        assert count_rows(session, Scan) == 2


@pytest.mark.slow
def test_a_scan_older_than_the_newest_one_is_flagged_stale(pipeline: ScanPipeline) -> None:
    newer = pipeline.scan(encode(toy_scene(GOOD_SEEDS[0])[0]), source="new", location_code=SHELF,
                          captured_at=at(30))
    older = pipeline.scan(encode(toy_scene(GOOD_SEEDS[1])[0]), source="old", location_code=SHELF,
                          captured_at=at(10))
    assert not newer.stale
    assert older.status == "processed" and older.stale


@pytest.mark.slow
def test_an_evidence_image_that_cannot_be_written_is_reported(pipeline: ScanPipeline, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    broken = ScanPipeline(
        factory=pipeline.factory, detector=pipeline.detector, recognizer=pipeline.recognizer,
        policy=pipeline.policy, config=PipelineConfig(evidence_dir=blocker / "evidence"), clock=pipeline.clock,
    )
    result = broken.scan(encode(toy_scene(1)[0]), source="x.png", location_code=SHELF, captured_at=at(0))
    assert result.status == "processed" and result.evidence is None
    assert result.evidence_error is not None and "evidence image not written" in result.evidence_error


@pytest.mark.slow
def test_the_pixel_limit_is_the_pipelines_not_pillows(pipeline: ScanPipeline) -> None:
    big = io.BytesIO()
    Image.new("1", (15000, 15000)).save(big, "PNG")  # 225 MP, over Pillow's default guard of 179 MP
    limited = ScanPipeline(
        factory=pipeline.factory, detector=pipeline.detector, recognizer=pipeline.recognizer,
        policy=pipeline.policy, config=PipelineConfig(max_pixels=200_000_000), clock=pipeline.clock,
    )
    result = limited.scan(big.getvalue(), source="big.png", location_code=SHELF, captured_at=at(0))
    assert (result.status, result.reason) == ("rejected", "image_too_large")
    assert result.message is not None and "limit of 200000000" in result.message


@pytest.mark.slow
def test_swapped_model_directories_are_named_as_such(tiny_detector: Path, toy_classifier: Path) -> None:
    from shelftally.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        load_models(toy_classifier, tiny_detector)
    assert caught.value.reason == "not_a_detector" and "swapped" in str(caught.value)


@pytest.mark.slow
def test_int8_needs_openvino_and_falls_back_to_fp32_without_an_int8_model(
    tiny_detector: Path, toy_classifier: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import shutil

    from classifier.export import export_openvino
    from shelftally.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        load_models(tiny_detector, toy_classifier, backend="onnx", classifier_precision="int8")
    assert caught.value.reason == "int8_needs_openvino"
    classifier = tmp_path / "classifier"
    shutil.copytree(toy_classifier, classifier)
    export_openvino(classifier / "model.onnx")
    with caplog.at_level("WARNING"):
        detector, recognizer = load_models(tiny_detector, classifier, backend="openvino", detector_precision="int8",
                                           classifier_precision="int8", threads=1)
    assert detector.precision == recognizer.backend.precision == "fp32"
    assert caplog.text.count("int8_missing") == 2


def test_a_location_label_card_is_not_a_product_but_a_product_with_its_barcode_is() -> None:
    from workers.scan.pipeline import _without_labels

    code = (50.0, 900.0, 190.0, 1040.0)  # a read QR code, 140 x 140 px
    boxes = np.array([
        [20, 880, 220, 1120],   # the printed card around it: the code covers 41 % of it -> dropped
        [60, 910, 180, 1030],   # the code itself (over half of the box on the code) -> dropped
        [0, 300, 400, 1100],    # a large carton that happens to hold the label: code 6 % of it -> kept
        [400, 100, 600, 400],   # a product elsewhere -> kept
        [100, 1000, 300, 1200],  # partly on the code (9 % of this box, 18 % of the code inside) -> kept
    ], np.float32)
    detections = Detections(boxes, np.full(len(boxes), 0.9, np.float32), np.zeros(len(boxes), np.int64))
    kept = _without_labels(detections, [code])
    assert kept.xyxy.tolist() == boxes[2:].tolist()
    assert len(_without_labels(detections, [])) == len(boxes)
