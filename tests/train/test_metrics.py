"""train/metrics.py against values computed by hand (the arithmetic is in the comments)."""
import numpy as np
import pytest

from featcache.train import metrics

# 4 clips, 6 classes. Predictions (argmax): 0, 0, 2, 0.
LOGITS = np.array([[9, 1, 2, 3, 4, 5],    # true 0: right
                   [9, 8, 1, 2, 3, 4],    # true 1: wrong, true class 2nd -> in the top 5
                   [1, 2, 9, 3, 4, 5],    # true 2: right
                   [9, 5, 4, 3, 2, 0]],   # true 5: wrong, true class scored lowest -> not in the top 5
                  dtype=np.float32)
TARGETS = np.array([0, 1, 2, 5])


def test_single_label_by_hand():
    m, cm = metrics.single_label(LOGITS, TARGETS, 6)
    assert m["top1"] == pytest.approx(2 / 4) and m["top5"] == pytest.approx(3 / 4)
    # recall of the classes present (0, 1, 2, 5): 1, 0, 1, 0
    assert m["mean_class_acc"] == pytest.approx(0.5)
    # F1 over classes in targets or predictions {0,1,2,5}: class 0 P=1/3 R=1 -> 0.5; 1 -> 0; 2 -> 1; 5 -> 0
    assert m["macro_f1"] == pytest.approx(1.5 / 4)
    assert m["precision"] == pytest.approx([1 / 3, 0, 1, 0, 0, 0]) and m["recall"] == pytest.approx([1, 0, 1, 0, 0, 0])
    expected = np.zeros((6, 6), dtype=int)
    expected[0, 0] = expected[1, 0] = expected[2, 2] = expected[5, 0] = 1
    np.testing.assert_array_equal(cm, expected)
    assert metrics.selection(LOGITS, TARGETS, multi=False) == pytest.approx({"top1": 0.5, "top5": 0.75})


def test_multi_label_by_hand():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])  # class 2: no positive; clip 3: no label
    logits = np.array([[2, -1, 0.5], [-1, 1, -2], [0.5, 0.2, 3], [1, -3, -1]], dtype=np.float32)
    m = metrics.multi_label(logits, targets)
    # class 1 ranked: 1 (+), 0.2 (+), -1 (-): AP = 1
    assert m["ap"][:2] == pytest.approx([1.0, 1.0]) and m["ap"][2] is None
    assert m["mAP"] == pytest.approx(1.0)
    # over the 3 labelled clips (clip 3 has no label and is excluded, as Charades does):
    # class 0 ranked 2 (+), 0.5 (+), -1 (-): AP 1 -- the unlabelled clip's 1 no longer ranks above a positive
    # best class per clip: 0 (true), 1 (true), 2 (false)
    assert m["top1"] == pytest.approx(2 / 3)
    # logit > 0: class 0 tp 2 -> 1; class 1 tp 2 -> 1; class 2 tp 0 fp 2 -> 0
    assert m["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)
    assert metrics.selection(logits, targets, multi=True) == pytest.approx({"mAP": 1.0})
    assert (m["mAP_excluded_classes"], m["unlabelled_excluded"]) == (1, 1)


def test_empty_split_gives_no_metrics():
    assert metrics.single_label(np.zeros((0, 3)), np.zeros(0, dtype=int), 3)[0] == {}
    assert metrics.multi_label(np.zeros((0, 3)), np.zeros((0, 3))) == {}


def test_average_precision_equals_sklearn_without_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        y[0] = 1
        s = rng.normal(size=30)
        assert metrics.average_precision(s, y) == pytest.approx(average_precision_score(y, s))
    # with a tie the video order decides, as a stable ranking: [+ (0.5), - (0.5)] -> 1, [- , +] -> 1/2
    assert metrics.average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == 1.0
    assert metrics.average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
