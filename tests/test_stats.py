"""Background statistics and whitening on plain arrays."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hsad_scale.detectors.rx import fit_rx, rx_reference, score_rx
from hsad_scale.stats import BackgroundStats, merge_all, whitener


def _pixels(n=500, bands=12, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(bands, bands))
    return (rng.normal(size=(n, bands)) @ mixing + 1000.0).astype(np.float32)


def test_merge_equals_statistics_of_the_whole():
    x = _pixels()
    whole = BackgroundStats.from_pixels(x)
    parts = merge_all(BackgroundStats.from_pixels(p) for p in np.array_split(x, [7, 8, 200, 201, 433]))
    assert parts.count == whole.count
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(parts.scatter, whole.scatter, rtol=1e-9)
    np.testing.assert_allclose(whole.covariance, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9)


def test_merge_is_stable_for_a_large_offset():
    # raw sums of squares lose everything at this offset in float64; the pairwise merge does not
    x = _pixels(n=2000, bands=4).astype(np.float64) * 1e-3 + 1e8
    merged = merge_all(BackgroundStats.from_pixels(p) for p in np.array_split(x, 50))
    reference = np.cov(x, rowvar=False)
    np.testing.assert_allclose(merged.covariance, reference, rtol=1e-5)
    naive = (x.T @ x - len(x) * np.outer(x.mean(0), x.mean(0))) / (len(x) - 1)
    assert np.abs(naive - reference).max() > 1e3 * np.abs(reference).max()


def test_invalid_rows_are_skipped():
    x = _pixels()
    with_nan = x.copy()
    with_nan[[3, 40]] = np.nan
    s = BackgroundStats.from_pixels(with_nan)
    assert s.count == x.shape[0] - 2
    np.testing.assert_allclose(s.mean, np.delete(x, [3, 40], axis=0).astype(np.float64).mean(axis=0))


def test_well_conditioned_scores_match_reference_without_ridge():
    x = _pixels()
    model = fit_rx(x)
    assert model.ridge == 0 and not model.describe()["regularised"]
    np.testing.assert_allclose(score_rx(model, x), rx_reference(x), rtol=1e-4)


@pytest.mark.parametrize("case", ["constant band", "duplicated band", "fewer pixels than bands"])
def test_singular_covariance_is_regularised_not_fatal(case):
    x = _pixels(n=300, bands=10).astype(np.float64)
    if case == "constant band":
        x[:, 3] = 7.0
    elif case == "duplicated band":
        x[:, 4] = x[:, 5]
    else:
        x = x[:6]
    model = fit_rx(x)
    scores = score_rx(model, x)
    assert np.isfinite(scores).all()
    assert model.describe()["regularised"] and model.ridge > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_constant_features_score_finite(dtype):
    """Dead latent units: every feature constant. Scores are finite (Euclidean to the mean)."""
    train = np.zeros((500, 4), dtype=dtype)
    model = fit_rx(train)
    probe = np.array([[0, 0, 0, 0], [1, 0, 0, 0]], dtype=dtype)
    scores = score_rx(model, probe)
    assert np.isfinite(scores).all() and model.ridge > 0
    np.testing.assert_allclose(scores, [0.0, 1.0], atol=1e-6)


def test_stats_save_load_round_trip(tmp_path):
    s = BackgroundStats.from_pixels(_pixels())
    s.save(tmp_path / "s.npz")
    t = BackgroundStats.load(tmp_path / "s.npz")
    assert t.count == s.count
    np.testing.assert_array_equal(t.mean, s.mean)
    np.testing.assert_array_equal(t.scatter, s.scatter)


def test_float32_and_float64_products_agree():
    x = _pixels()  # float32, as cubes are
    model = fit_rx(x)
    assert model.precision == "float32"
    exact = type(model)(model.mean, model.matrix, model.ridge, model.condition, "float64")
    np.testing.assert_allclose(model.mahalanobis(x), exact.mahalanobis(x), rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bands=st.integers(2, 12), scale=st.floats(1e-3, 1e3))
def test_rx_is_invariant_to_invertible_affine_band_transforms(seed, bands, scale):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, bands))
    a = rng.normal(size=(bands, bands)) * scale
    if abs(np.linalg.det(a)) < 1e-6 * scale**bands or np.linalg.cond(a) > 1e4:
        a += np.eye(bands) * scale * 3
    b = rng.normal(size=bands) * 100
    before = score_rx(fit_rx(x), x)
    y = x @ a.T + b
    after = score_rx(fit_rx(y), y)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-6 * bands)


def test_band_summary_merges_to_the_whole_array_figures():
    from hsad_scale.stats import BandSummary

    rng = np.random.default_rng(5)
    x = (rng.normal(size=(3000, 7)) * [1, 10, 1e3, 1, 1, 1, 1] + 1e4).astype(np.float32)
    x[17] = np.nan
    parts = [BandSummary.from_pixels(p) for p in (x[:5], x[5:1200], x[1200:1200], np.asfortranarray(x[1200:]))]
    total = parts[0]
    for p in parts[1:]:
        total = total.merge(p)
    valid = x[np.isfinite(x).all(axis=1)].astype(np.float64)
    assert total.count == len(valid)
    np.testing.assert_allclose(total.mean, valid.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(total.variance, valid.var(axis=0, ddof=1), rtol=1e-9)
    np.testing.assert_array_equal(total.minimum, valid.min(axis=0))
    np.testing.assert_array_equal(total.maximum, valid.max(axis=0))
