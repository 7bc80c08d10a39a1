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
