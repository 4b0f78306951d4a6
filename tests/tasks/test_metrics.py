"""Metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from fedecho.tasks.metrics import (
    accuracy,
    auroc,
    auroc_per_class,
    balanced_accuracy,
    bland_altman,
    classification_metrics,
    confusion_matrix,
    dice_per_label,
    f1_macro,
    iou_per_label,
    mae,
    precision_macro,
    r2,
    recall_macro,
    regression_metrics,
    rmse,
    segmentation_metrics,
    specificity,
    specificity_macro,
)


@pytest.fixture
def labelled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 samples of 4 classes: true labels, probabilities (N, 4), argmax predictions."""
    rng = np.random.default_rng(7)
    y_true = np.repeat(np.arange(4), 15)
    logits = rng.normal(size=(60, 4)) + 1.5 * np.eye(4)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y_true, probs, probs.argmax(1)


# --- classification -----------------------------------------------------------------------------
def test_label_metrics_equal_sklearn(labelled):
    y_true, _, y_pred = labelled
    assert accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert precision_macro(y_true, y_pred) == pytest.approx(
        skm.precision_score(y_true, y_pred, average="macro", zero_division=0)
    )
    assert recall_macro(y_true, y_pred) == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"))
    assert f1_macro(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    # torch tensors are accepted and give the same values
    assert f1_macro(torch.from_numpy(y_true), torch.from_numpy(y_pred)) == pytest.approx(f1_macro(y_true, y_pred))


def test_balanced_accuracy_with_a_predicted_only_class_equals_sklearn():
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 2, 1, 1, 0])  # class 2 never true
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.balanced_accuracy_score(y_true, y_pred)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(expected) == pytest.approx((0.5 + 2 / 3) / 2)


def test_confusion_matrix_and_specificity_hand_computed():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    expected = [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 4), expected)
    # class 0: TN 2, FP 1; class 1: TN 2, FP 1; class 2: TN 4, FP 0; class 3 (absent): TN 5, FP 0
    np.testing.assert_allclose(specificity(y_true, y_pred, 4), [2 / 3, 2 / 3, 1.0, 1.0])
    assert specificity_macro(y_true, y_pred, 4) == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)


def test_specificity_equals_sklearn_multilabel_confusion(labelled):
    y_true, _, y_pred = labelled
    mcm = skm.multilabel_confusion_matrix(y_true, y_pred, labels=range(4))
    expected = mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])
    np.testing.assert_allclose(specificity(y_true, y_pred, 4), expected)


def test_specificity_undefined_when_every_sample_is_that_class():
    spec = specificity([1, 1, 1], [1, 0, 1], 2)
    assert spec[0] == pytest.approx(2 / 3) and math.isnan(spec[1])
    assert specificity_macro([1, 1, 1], [1, 0, 1], 2) == pytest.approx(2 / 3)


def test_auroc_binary_equals_sklearn_and_accepts_both_layouts():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 40), 0, 1)
    expected = skm.roc_auc_score(y, p)
    assert auroc(y, p) == pytest.approx(expected)
    assert auroc(y, np.stack([1 - p, p], 1)) == pytest.approx(expected)
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)  # hand count: 3 of 4 pairs


def test_auroc_binary_with_one_class_present_is_nan():
    assert math.isnan(auroc([1, 1, 1], [0.2, 0.6, 0.9]))


def test_auroc_multiclass_equals_sklearn_ovr_macro(labelled):
    y_true, probs, _ = labelled
    expected = skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
    assert auroc(y_true, probs) == pytest.approx(expected)
    per_class = [skm.roc_auc_score(y_true == c, probs[:, c]) for c in range(4)]
    np.testing.assert_allclose(auroc_per_class(y_true, probs), per_class)


def test_auroc_class_absent_from_targets_is_nan_and_left_out_of_the_macro(labelled):
    y_true, probs, _ = labelled
    keep = y_true != 2  # class 2 absent from targets
    per_class = auroc_per_class(y_true[keep], probs[keep])
    assert math.isnan(per_class[2])
    expected = [skm.roc_auc_score(y_true[keep] == c, probs[keep][:, c]) for c in (0, 1, 3)]
    np.testing.assert_allclose(per_class[[0, 1, 3]], expected)
    assert auroc(y_true[keep], probs[keep]) == pytest.approx(np.mean(expected))


def test_classification_metrics_dict(labelled):
    y_true, probs, y_pred = labelled
    out = classification_metrics(y_true, probs, ["a", "b", "c", "d"])
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(y_true, probs, multi_class="ovr"))
    assert set(out) >= {"balanced_accuracy", "f1", "precision", "recall", "specificity", "specificity/d", "auroc/a"}
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        classification_metrics(y_true, probs, ["a", "b", "c"])


def test_classification_input_errors():
    with pytest.raises(ValueError, match="y_pred has class indices"):
        confusion_matrix([0, 1], [0, 5], 2)
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="3 samples but y_pred has 2"):
        accuracy([0, 1, 1], [0, 1])


# --- segmentation -------------------------------------------------------------------------------
def test_dice_and_iou_hand_computed():
    pred = np.array([[1, 1, 0], [0, 0, 2]])
    target = np.array([[1, 0, 0], [1, 0, 0]])
    # label 1: |P∩T| = 1, |P| = 2, |T| = 2; label 2: predicted only; label 3: absent in both
    np.testing.assert_allclose(dice_per_label(pred, target, [1, 2, 3]), [[0.5, 0.0, 1.0]])
    np.testing.assert_allclose(iou_per_label(pred, target, [1, 2, 3]), [[1 / 3, 0.0, 1.0]])
    nan_empty = dice_per_label(pred, target, [3], empty_value=float("nan"))
    assert math.isnan(nan_empty[0, 0])


def test_dice_iou_equal_sklearn_on_binary_masks():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 3, (16, 16))
    target = rng.integers(0, 3, (16, 16))
    for label in (1, 2):
        p, t = (pred == label).ravel(), (target == label).ravel()
        assert dice_per_label(pred, target, [label])[0, 0] == pytest.approx(skm.f1_score(t, p))
        assert iou_per_label(pred, target, [label])[0, 0] == pytest.approx(skm.jaccard_score(t, p))


def test_segmentation_metrics_average_per_image():
    target = np.zeros((2, 4, 4), int)
    target[:, :2, :2] = 1  # 4 LV pixels in each image
    pred = target.copy()
    pred[1] = 0
    pred[1, :2, :1] = 1  # image 1: 2 of 4 pixels -> Dice 2·2/(2+4) = 2/3
    out = segmentation_metrics(pred, target, {1: "lv_cavity", 2: "myocardium"})
    assert out["dice/lv_cavity"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["iou/lv_cavity"] == pytest.approx((1 + 0.5) / 2)
    assert out["dice/myocardium"] == 1.0  # empty in both everywhere -> defined as 1
    assert out["dice"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    nan_out = segmentation_metrics(pred, target, {1: "lv", 2: "myo"}, empty_value=float("nan"))
    assert math.isnan(nan_out["dice/myo"]) and nan_out["dice"] == pytest.approx((1 + 2 / 3) / 2)


def test_segmentation_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differs from target shape"):
        dice_per_label(np.zeros((2, 3)), np.zeros((3, 3)), [1])


# --- regression and agreement ---------------------------------------------------------------------
def test_regression_metrics_equal_sklearn_and_closed_form():
    rng = np.random.default_rng(1)
    target = rng.normal(55, 10, 30)
    pred = target + rng.normal(0, 4, 30)
    assert mae(pred, target) == pytest.approx(skm.mean_absolute_error(target, pred))
    assert rmse(pred, target) == pytest.approx(skm.root_mean_squared_error(target, pred))
    assert r2(pred, target) == pytest.approx(skm.r2_score(target, pred))
    out = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert out["mae"] == pytest.approx(2 / 3)
    assert out["rmse"] == pytest.approx(math.sqrt(4 / 3))
    # SS_res = 4, SS_tot = (1-8/3)^2 + (2-8/3)^2 + (5-8/3)^2 = 26/3
    assert out["r2"] == pytest.approx(1 - 4 / (26 / 3))


def test_r2_undefined_cases_and_bad_input():
    assert math.isnan(r2([1.0], [2.0]))
    assert math.isnan(r2([1.0, 2.0], [3.0, 3.0]))
    with pytest.raises(ValueError, match="NaN"):
        mae([1.0, float("nan")], [1.0, 2.0])


def test_bland_altman_closed_form():
    result = bland_altman([11.0, 22.0, 33.0], [10.0, 20.0, 30.0])  # differences 1, 2, 3
    assert result.bias == pytest.approx(2.0)
    assert result.sd == pytest.approx(1.0)
    assert result.loa_low == pytest.approx(2.0 - 1.959964, abs=1e-6)
    assert result.loa_high == pytest.approx(2.0 + 1.959964, abs=1e-6)
    assert result.n == 3
    assert result.as_metrics("/edv")["bias/edv"] == pytest.approx(2.0)
    single = bland_altman([1.0], [0.0])
    assert single.bias == 1.0 and math.isnan(single.loa_high)
