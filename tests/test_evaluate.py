"""ROC figures against ground truth."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hsad_scale.errors import InputError
from hypothesis import given, settings
from hypothesis import strategies as st

from hsad_scale.evaluate import (anomaly_scores, average_roc, count_background, metrics, partial_auc, roc,
                                 roc_counts, tpr_at)


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    truth = np.zeros((60, 50), dtype=np.uint8)
    truth[10:14, 20:25] = 1
    scores = rng.normal(size=truth.shape) + 2.5 * truth
    return scores, truth


def test_auc_matches_sklearn_and_nan_pixels_are_left_out():
    scores, truth = _scene()
    with_nan = scores.copy()
    with_nan[0, :10] = np.nan
    m = metrics(with_nan, truth)
    keep = np.isfinite(with_nan)
    assert m["auc"] == pytest.approx(roc_auc_score(truth[keep], with_nan[keep]))
    assert m["n_background"] + m["n_anomaly"] == keep.sum()


def test_metric_keys_name_the_figures_metrics_returns():
    from hsad_scale.names import METRIC_KEYS

    scores, truth = _scene()
    assert [k for k in metrics(scores, truth) if not k.startswith("n_")] == list(METRIC_KEYS)


def test_perfect_and_inverted_detectors():
    _, truth = _scene()
    perfect = metrics(truth.astype(float), truth)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_fpr_0.001"] == 1.0 and perfect["pauc_0.01"] == pytest.approx(1.0)
    inverted = metrics(-truth.astype(float), truth)
    assert inverted["auc"] == 0.0 and inverted["tpr_at_fpr_0.01"] == 0.0


def test_tpr_interpolation_and_partial_auc_on_a_known_curve():
    fpr = np.array([0.0, 0.02, 1.0])
    tpr = np.array([0.0, 0.5, 1.0])
    assert tpr_at(fpr, tpr, 0.01) == pytest.approx(0.25)
    # area under the line tpr = 25 fpr from 0 to 0.01, divided by 0.01
    assert partial_auc(fpr, tpr, 0.01) == pytest.approx(0.125)
    # a staircase: vertical steps add no area, whatever vertex the step's FPR interpolates to
    stairs_fpr, stairs_tpr = np.array([0.0, 0.0, 0.005, 0.005, 0.02, 1.0]), np.array([0.0, 0.5, 0.5, 1.0, 1.0, 1.0])
    assert partial_auc(stairs_fpr, stairs_tpr, 0.01) == pytest.approx(0.75)
    assert partial_auc(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]), 0.01) == pytest.approx(1.0)
    # the chance diagonal gives max_fpr / 2
    assert partial_auc(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.01) == pytest.approx(0.005)


def test_bad_ground_truth_is_a_clear_error():
    scores, truth = _scene()
    with pytest.raises(InputError, match="no anomaly"):
        metrics(scores, np.zeros_like(truth))
    with pytest.raises(InputError, match="shape"):
        metrics(scores, truth[:-1])


def test_average_roc_of_identical_runs_has_no_spread():
    scores, truth = _scene()
    curve = roc(scores, truth)
    avg = average_roc([curve, curve, curve])
    np.testing.assert_allclose(avg["tpr_std"], 0, atol=1e-12)
    assert np.all(np.diff(avg["tpr_mean"]) >= 0)
    np.testing.assert_allclose(avg["tpr_mean"], np.interp(avg["fpr"], *curve))


def _assert_same_curve(fpr, tpr, full_fpr, full_tpr):
    """(fpr, tpr) are vertices of the full curve, in order, and every vertex left out lies
    on a horizontal run between two kept ones (no interpolated TPR or area changes)."""
    full = list(zip(full_fpr.tolist(), full_tpr.tolist()))
    where = [full.index(p) for p in zip(fpr.tolist(), tpr.tolist())]
    assert where[0] == 0 and where[-1] == len(full) - 1 and np.all(np.diff(where) > 0)
    for a, b in zip(where[:-1], where[1:]):
        if b - a > 1:
            assert np.all(full_tpr[a : b + 1] == full_tpr[a]), "a dropped vertex is not on a horizontal run"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roc_points_equal_sklearn_with_ties(dtype):
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(3)
    truth = rng.random((80, 70)) < 0.03
    scores = (np.round(rng.normal(size=truth.shape) * 4) + 3 * truth).astype(dtype)  # many ties
    fpr, tpr = roc(scores, truth)
    sk_fpr, sk_tpr, _ = sk_roc_curve(truth.ravel(), scores.ravel(), drop_intermediate=False)
    _assert_same_curve(fpr, tpr, sk_fpr, sk_tpr)
    assert metrics(scores, truth)["auc"] == pytest.approx(roc_auc_score(truth.ravel(), scores.ravel()))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 400), st.sampled_from([1, 3, 50]), st.floats(0.01, 0.6))
def test_roc_counts_give_the_full_curve(seed, n, levels, anomaly_fraction):
    """Any mix of ties, NaN and anomaly fractions: the curve is sklearn's, less horizontal
    interior vertices; AUC and the low-FPR figures equal those of the full curve."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(seed)
    truth = rng.random(n) < anomaly_fraction
    truth[:2] = [True, False]
    scores = np.floor(rng.random(n) * levels) + truth * rng.random()
    scores[rng.random(n) < 0.05] = np.nan
    scores[:2] = [1.0, 0.0]
    keep = np.isfinite(scores)
    sk_fpr, sk_tpr, _ = sk_roc_curve(truth[keep], scores[keep], drop_intermediate=False)
    sk_fpr, sk_tpr = np.r_[0.0, sk_fpr], np.r_[0.0, sk_tpr]  # sklearn starts after the top score
    if sk_fpr[1] == 0 and sk_tpr[1] == 0:
        sk_fpr, sk_tpr = sk_fpr[1:], sk_tpr[1:]
    fpr, tpr = roc(scores, truth)
    _assert_same_curve(fpr, tpr, sk_fpr, sk_tpr)
    figures = metrics(scores, truth)
    assert figures["auc"] == pytest.approx(roc_auc_score(truth[keep], scores[keep]), abs=1e-12)
    for at in (1e-3, 1e-2, 1e-1):
        assert figures[f"tpr_at_fpr_{at:g}"] == pytest.approx(tpr_at(sk_fpr, sk_tpr, at), abs=1e-12)
    assert figures["pauc_0.01"] == pytest.approx(partial_auc(sk_fpr, sk_tpr), abs=1e-12)
    assert figures["n_anomaly"] == truth[keep].sum() and figures["n_background"] == (~truth[keep]).sum()


def test_counts_of_parts_add_up_to_the_whole():
    """Counting tile by tile against the same thresholds gives the counts of the whole map."""
    scores, truth = _scene(4)
    scores = np.round(scores * 3).astype(np.float32)
    whole = roc_counts(scores, truth)
    parts = [count_background(scores[r : r + 7], truth[r : r + 7], whole.thresholds) for r in range(0, 60, 7)]
    np.testing.assert_array_equal(sum(p[0] for p in parts), whole.negative_ties)
    np.testing.assert_array_equal(sum(p[1] for p in parts), whole.negative_gaps)
    picked = np.concatenate([anomaly_scores(scores[r : r + 7], truth[r : r + 7]) for r in range(0, 60, 7)])
    np.testing.assert_array_equal(np.sort(picked), np.sort(anomaly_scores(scores, truth)))
