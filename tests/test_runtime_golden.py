"""The shipped models give the same boxes and SKU codes as recorded, on ONNX Runtime and OpenVINO.

The record (``tests/data/runtime_golden.json``) was written by ``python -m tests.runtime_golden
--write`` before the detector and classifier backends became one runtime layer
(``shelftally.runtimes``); this test loads both models through that layer and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests import runtime_golden as golden

pytestmark = pytest.mark.skipif(
    not all((golden.DATA / name).is_dir() for name in (*golden.SHELF_SETS, "grocerystore")),
    reason="the real photos of ../shared/data are not here",
)


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(golden.GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def now(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return golden.record(tmp_path_factory.mktemp("golden"))


def test_the_fixed_pictures_are_the_recorded_ones(recorded: dict, now: dict) -> None:
    assert now["shelf_pictures"] == recorded["shelf_pictures"] and now["crops"] == recorded["crops"]
    assert sum(len(d["xyxy"]) for d in recorded["detector"]["onnx"]) >= 10


@pytest.mark.parametrize("runtime", golden.RUNTIMES)
def test_shipped_detector_gives_the_recorded_boxes(runtime: str, recorded: dict, now: dict) -> None:
    for before, after in zip(recorded["detector"][runtime], now["detector"][runtime], strict=True):
        assert len(before["xyxy"]) == len(after["xyxy"])
        np.testing.assert_allclose(after["xyxy"], before["xyxy"], atol=0.05)
        np.testing.assert_allclose(after["confidence"], before["confidence"], atol=2e-4)


@pytest.mark.parametrize("runtime", golden.RUNTIMES)
def test_shipped_classifier_gives_the_recorded_sku_codes(runtime: str, recorded: dict, now: dict) -> None:
    assert now["classifier"][runtime]["sku_code"] == recorded["classifier"][runtime]["sku_code"]
    np.testing.assert_allclose(now["classifier"][runtime]["confidence"], recorded["classifier"][runtime]["confidence"],
                               atol=2e-4)


def test_both_models_run_on_the_runtime_layer(tmp_path: Path) -> None:
    from classifier.backends import load as load_classifier
    from detector.backends import load as load_detector
    from shelftally.runtimes import Session

    detector_dir = golden.with_openvino(golden.MODELS / "product-agnostic", "detector", tmp_path)
    classifier_dir = golden.with_openvino(golden.MODELS / "classifier-grocery", "classifier", tmp_path)
    for runtime in golden.RUNTIMES:
        with load_detector(detector_dir, backend=runtime, threads=1, warmup=False) as detector, \
                load_classifier(classifier_dir, backend=runtime, threads=1, warmup=False) as classifier:
            assert isinstance(detector.session, Session) and isinstance(classifier.session, Session)
            assert detector.session.runtime == classifier.session.runtime == runtime
            assert type(detector.session) is type(classifier.session)
