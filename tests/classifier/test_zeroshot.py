"""Fusing vision and text: the calibrated weight keeps vision-alone accuracy where chosen; text names untrained SKUs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classifier.zeroshot import calibrate_weight, fuse

ROOT = Path(__file__).resolve().parents[2]
GROCERY = ROOT.parent / "shared" / "data" / "grocerystore"


def _case(seed: int, n: int = 200, k: int = 12, text_quality: float = 0.5) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    visual = rng.dirichlet(np.ones(k), n)
    right = rng.random(n) < 0.6  # vision right on about 60 %
    visual[right, truth[right]] += 1.0
    visual /= visual.sum(axis=1, keepdims=True)
    text = rng.random((n, k)) * 0.2
    read = rng.random(n) < text_quality
    text[read, truth[read]] = 0.9  # text read well on some pictures
    return visual, text, truth


@pytest.mark.parametrize("seed", range(5))
def test_the_calibrated_weight_never_names_fewer_right_than_vision_alone(seed: int) -> None:
    visual, text, truth = _case(seed)
    weight = calibrate_weight(visual, text, truth)
    fused = (fuse(visual, text, weight).argmax(axis=1) == truth).mean()
    assert fused >= (visual.argmax(axis=1) == truth).mean()
    assert weight > 0  # here the text helps


def test_noise_for_text_keeps_vision_alone() -> None:
    visual, _, truth = _case(7)
    noise = np.random.default_rng(8).random(visual.shape)
    assert calibrate_weight(visual, noise, truth) == 0.0


def test_text_names_a_sku_the_classifier_never_saw() -> None:
    visual = np.array([[0.7, 0.3, 0.0]])  # the third SKU is not among the classifier's classes
    text = np.array([[0.0, 0.0, 0.8]])
    assert fuse(visual, text, 0.0).argmax() == 0
    assert fuse(visual, text, 20.0).argmax() == 2


@pytest.mark.skipif(not GROCERY.is_dir(), reason="the Grocery Store dataset of ../shared/data is not here")
def test_evaluate_zero_shot_on_real_val_pictures() -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    from typer.testing import CliRunner

    from workers.cli import app

    result = CliRunner().invoke(app, ["evaluate", "zero-shot", "--data", str(GROCERY), "--model",
                                      str(ROOT / "models" / "classifier-grocery"), "--limit", "1", "--threads", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("visual_top1", "fused_top1", "text_only_top1_packaged", "held_out_text_top1"):
        assert key in report
    assert report["pictures"] >= 50 and report["packaged_pictures"] >= 10
    assert report["fused_top1_in_sample"] >= report["visual_top1"] >= 0.5
    assert report["text_only_top1_packaged"] > 1 / 81  # better than chance, from printed text alone
    assert report["held_out_text_top1"] is None  # the shipped model was trained on every class


# --- reading crops in a scan: TextFusion ---------------------------------------------------------------------------


class FakeReader:
    """Stands in for the OCR reader: returns what it was told for each crop (by its top-left pixel value)."""

    def __init__(self, reads: dict[int, object]) -> None:
        self.reads = reads
        self.calls: list[int] = []

    def read(self, crop: np.ndarray) -> object:
        from classifier.ocr import ReadText

        key = int(crop[0, 0, 0])
        self.calls.append(key)
        return self.reads.get(key, ReadText())


def _fusion(reads: dict[int, object]) -> tuple[object, FakeReader]:
    from classifier.text import SkuText, TextMatcher
    from classifier.zeroshot import TextFusion

    master = [SkuText("BRAVO-APPLE", "Bravo Apple Juice", gtin="7310865004703"),
              SkuText("ARLA-MILK", "Arla Medium Fat Milk"), SkuText("OATLY-OAT", "Oatly Oat Drink")]
    reader = FakeReader(reads)
    return TextFusion(TextMatcher(master), reader, weight=8.0, min_crop_px=16), reader


def _crops(*keys: int, size: int = 64) -> list[np.ndarray]:
    return [np.full((size, size, 3), key, np.uint8) for key in keys]


LABELS = ["BRAVO-APPLE", "ARLA-MILK"]  # the classifier was not trained on OATLY-OAT


def test_a_barcode_names_its_sku_over_a_wrong_visual_guess() -> None:
    from classifier.ocr import ReadText

    fusion, _ = _fusion({1: ReadText(gtins=("07310865004703",))})
    named = fusion.name(_crops(1), LABELS, np.array([[0.4, 0.6]], np.float32), ["ARLA-MILK"], [0.6])
    assert (named[0].sku_code, named[0].modality, named[0].visual_sku) == ("BRAVO-APPLE", "barcode", "ARLA-MILK")
    assert named[0].gtin == "07310865004703" and named[0].confidence == 1.0


def test_an_unreadable_crop_changes_nothing() -> None:
    fusion, reader = _fusion({})
    named = fusion.name(_crops(2, 3), LABELS, np.array([[0.5, 0.5], [0.7, 0.3]], np.float32), [None, "BRAVO-APPLE"],
                        [0.5, 0.7])
    assert [(n.sku_code, n.modality) for n in named] == [(None, "visual"), ("BRAVO-APPLE", "visual")]
    assert sorted(reader.calls) == [2, 3]


def test_text_names_a_sku_the_classifier_never_saw_and_keeps_what_it_agrees_with() -> None:
    from classifier.ocr import ReadLine, ReadText

    def said(text: str) -> ReadText:
        return ReadText((ReadLine(text, 0.99, (0.0, 0.0, 10.0, 10.0)),))

    fusion, _ = _fusion({4: said("OATLY oat drink"), 5: said("Bravo apple")})
    named = fusion.name(_crops(4, 5), LABELS, np.array([[0.5, 0.5], [0.8, 0.2]], np.float32), [None, "BRAVO-APPLE"],
                        [0.5, 0.8])
    assert (named[0].sku_code, named[0].modality) == ("OATLY-OAT", "text")
    assert (named[1].sku_code, named[1].modality) == ("BRAVO-APPLE", "visual+text")
    assert named[0].text == "OATLY oat drink" and 0.0 < named[0].confidence <= 1.0


def test_confident_or_small_crops_are_not_read() -> None:
    fusion, reader = _fusion({})
    crops = [*_crops(6), *_crops(7, size=8)]
    fusion.name(crops, LABELS, np.array([[0.95, 0.05], [0.5, 0.5]], np.float32), ["BRAVO-APPLE", None], [0.95, 0.5])
    assert reader.calls == []  # the first is sure enough, the second too small to read


def test_observed_boxes_keep_their_modality_through_a_fleet_message() -> None:
    from workers.scan.pipeline import ObservedPicture

    message = {
        "picture": {"source": "a.jpg", "image_sha256": "ab" * 32, "size_bytes": 10, "location_code": "A",
                    "captured_at": "2026-12-01T10:00:00+00:00", "label_boxes": [], "timings_ms": {}},
        "width_px": 100, "height_px": 80, "detector_version": "d", "classifier_version": "c",
        "boxes": [[1, 2, 30, 40, 0.9, 0, "BRAVO-APPLE", 1.0, "barcode", "ARLA-MILK", "JUICE", "07310865004703"],
                  [5, 6, 50, 60, 0.8, 0, None, 0.3]],  # a box from a worker that read no text
    }
    observed = ObservedPicture.from_dict(message)
    assert observed.boxes[0].modality == "barcode" and observed.boxes[0].gtin == "07310865004703"
    assert observed.boxes[1].modality == "visual" and observed.boxes[1].read_text is None
    assert ObservedPicture.from_dict(observed.to_dict()) == observed
