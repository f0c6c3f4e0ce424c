"""ROC figures against ground truth."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hsad_scale.errors import InputError
from hsad_scale.evaluate import average_roc, metrics, partial_auc, roc, tpr_at


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roc_points_equal_sklearn_with_ties(dtype):
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(3)
    truth = rng.random((80, 70)) < 0.03
    scores = (np.round(rng.normal(size=truth.shape) * 4) + 3 * truth).astype(dtype)  # many ties
    fpr, tpr = roc(scores, truth)
    sk_fpr, sk_tpr, _ = sk_roc_curve(truth.ravel(), scores.ravel(), drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert metrics(scores, truth)["auc"] == pytest.approx(roc_auc_score(truth.ravel(), scores.ravel()))
