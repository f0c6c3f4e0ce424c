"""Background statistics and whitening on plain arrays.

Everything here works on pixels as ``(n_pixels, n_features)`` arrays (features are bands
for RX, residual bands or latent units for the autoencoders). The Dask wiring that feeds
tiles into these functions lives in :mod:`hsad_scale.tiles` (and, for the band summary,
:mod:`hsad_scale.sampling`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import blas, solve_triangular

#: Covariances with eigenvalue ratio below this are regularised with a ridge.
RCOND_REGULARISE = 1e-10
#: Ridge added to a covariance that needs it, as a fraction of its mean eigenvalue.
RIDGE_FRACTION = 1e-6
#: Whitening runs its matrix product in float32 while the condition number stays below this
#: (measured on the shared scenes, triangular whitening and float32 sum of squares: per-pixel
#: relative error <= 1.5e-5 at condition 8e8).
FLOAT32_MAX_CONDITION = 1e9
#: Pixels per block in the per-tile kernels: large enough for BLAS, small enough for the cache
#: and for the allocator to reuse memory instead of faulting in fresh pages each time.
BLOCK_PIXELS = 8192


@dataclass(frozen=True)
class BackgroundStats:
    """Pixel count, mean ``(k,)`` and scatter matrix ``(k, k)`` (sum of outer products of
    deviations from the mean), all float64. Merged with Chan et al.'s pairwise update."""

    count: int
    mean: np.ndarray
    scatter: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> "BackgroundStats":
        return cls(0, np.zeros(n_features), np.zeros((n_features, n_features)))

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, all_valid: bool = False) -> "BackgroundStats":
        """Statistics of ``pixels`` ``(n, k)``; rows holding NaN are skipped (``all_valid``:
        the caller has dropped them already). Works through blocks of :data:`BLOCK_PIXELS`
        rows, each centred into one reused float64 buffer, merged exactly."""
        if not all_valid:
            pixels = drop_invalid(pixels)
        out = cls.empty(pixels.shape[1])
        for start in range(0, pixels.shape[0], BLOCK_PIXELS):
            out = out.merge(cls._from_block(pixels[start : start + BLOCK_PIXELS]))
        return out

    @classmethod
    def _from_block(cls, pixels: np.ndarray) -> "BackgroundStats":
        """One BLAS call per block: ``dsyrk`` of the pixels less a shift ``s`` (the mean of a
        strided subsample, close to the block's mean), with a column of ones appended, gives
        the shifted scatter, the sum of deviations and the count together; the scatter about
        the mean is then ``sum (x-s)(x-s)^T - n (m-s)(m-s)^T``, exact up to rounding because
        ``m - s`` is small against the spread."""
        n, k = pixels.shape
        shift = pixels[:: max(1, n // 64)].mean(axis=0, dtype=np.float64)
        order = "C" if pixels.flags.c_contiguous else "F"  # the buffer's layout follows the input's: no transposing copy
        augmented = _block_buffer(n, k + 1, order=order)  # (n, k + 1) float64
        np.subtract(pixels, shift, out=augmented[:, :k])  # exact float32 -> float64 conversion, then shift
        augmented[:, k] = 1.0
        # (k+1, k+1), upper triangle of augmented^T augmented; BLAS sees the Fortran-ordered operand
        gram = blas.dsyrk(1.0, augmented.T, trans=0) if order == "C" else blas.dsyrk(1.0, augmented, trans=1)
        offset = gram[:k, k] / n  # m - s
        scatter = np.triu(gram[:k, :k])
        scatter += np.triu(gram[:k, :k], 1).T
        scatter -= np.outer(gram[:k, k], offset)
        return cls(n, shift + offset, scatter)

    def is_finite(self) -> bool:
        """False when a NaN/Inf pixel went into the statistics."""
        return bool(np.isfinite(self.mean).all() and np.isfinite(np.diagonal(self.scatter)).all())

    @property
    def n_features(self) -> int:
        return self.mean.shape[0]

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance ``(k, k)``."""
        return self.scatter / max(self.count - 1, 1)

    def merge(self, other: "BackgroundStats") -> "BackgroundStats":
        if other.count == 0 or self.count == 0:
            return self if other.count == 0 else other
        count, mean, delta, weight = _chan_update(self, other)
        return BackgroundStats(count, mean, self.scatter + other.scatter + np.outer(delta, delta) * weight)

    def save(self, path: str | Path) -> None:
        """Save as ``.npz`` (no pickles): loads with :meth:`load`."""
        np.savez(path, count=np.int64(self.count), mean=self.mean, scatter=self.scatter)

    @classmethod
    def load(cls, path: str | Path) -> "BackgroundStats":
        with np.load(path, allow_pickle=False) as f:
            return cls(int(f["count"]), f["mean"], f["scatter"])


@dataclass(frozen=True)
class BandSummary:
    """Per-feature count, mean ``(k,)``, sum of squared deviations ``(k,)`` (float64, merged
    with Chan et al.'s update like :class:`BackgroundStats`, without the cross terms), minimum
    and maximum ``(k,)``: what a per-band scaling needs, at a fraction of a covariance's cost."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> "BandSummary":
        zeros = np.zeros(n_features)
        return cls(0, zeros, zeros, np.full(n_features, np.inf), np.full(n_features, -np.inf))

    @classmethod
    def from_pixels(cls, pixels: np.ndarray) -> "BandSummary":
        """Summary of the rows of ``pixels`` ``(n, k)`` without NaN/Inf."""
        pixels = drop_invalid(pixels)
        n, k = pixels.shape
        if n == 0:
            return cls.empty(k)
        mean = pixels.mean(axis=0, dtype=np.float64)
        m2 = np.zeros(k)
        for start in range(0, n, BLOCK_PIXELS):
            block = pixels[start : start + BLOCK_PIXELS]
            order = "C" if block.flags.c_contiguous else "F"
            centred = _block_buffer(*block.shape, order=order)
            np.subtract(block, mean, out=centred)
            m2 += np.einsum("ij,ij->j", centred, centred)
        return cls(n, mean, m2, pixels.min(axis=0).astype(np.float64), pixels.max(axis=0).astype(np.float64))

    def merge(self, other: "BandSummary") -> "BandSummary":
        if other.count == 0 or self.count == 0:
            return self if other.count == 0 else other
        count, mean, delta, weight = _chan_update(self, other)
        return BandSummary(count, mean, self.m2 + other.m2 + delta * delta * weight,
                           np.minimum(self.minimum, other.minimum), np.maximum(self.maximum, other.maximum))

    @property
    def variance(self) -> np.ndarray:
        """Unbiased variance ``(k,)``."""
        return self.m2 / max(self.count - 1, 1)


def _chan_update(a, b) -> tuple[int, np.ndarray, np.ndarray, float]:
    """Chan et al.'s pairwise update of two non-empty parts with ``count`` and ``mean``:
    merged count and mean, the difference of means and the weight ``n_a n_b / n`` of its
    outer product in the merged sum of squared deviations."""
    count = a.count + b.count
    delta = b.mean - a.mean
    return count, a.mean + delta * (b.count / count), delta, a.count * b.count / count


def merge_all(parts) -> BackgroundStats:
    """Merge an iterable of :class:`BackgroundStats` (pairwise, in order)."""
    parts = list(parts)
    out = parts[0]
    for part in parts[1:]:
        out = out.merge(part)
    return out


_buffers = threading.local()


def _block_buffer(n: int, k: int, dtype=np.float64, order: str = "F") -> np.ndarray:
    """A ``(n, k)`` scratch array in ``order``, reused by this thread (no fresh pages to
    fault in for every block)."""
    name = f"block_{np.dtype(dtype).name}_{order}"
    flat = getattr(_buffers, name, None)
    if flat is None or flat.size < n * k:
        flat = np.empty(max(n, BLOCK_PIXELS) * max(k, 2), dtype=dtype)
        setattr(_buffers, name, flat)
    return flat[: n * k].reshape((n, k), order=order)


def drop_invalid(pixels: np.ndarray) -> np.ndarray:
    """Rows of ``pixels`` ``(n, k)`` without NaN/Inf."""
    valid = np.isfinite(pixels.sum(axis=1))
    return pixels if valid.all() else pixels[valid]


@dataclass(frozen=True)
class Whitener:
    """Maps pixels to whitened coordinates: ``||matrix @ (x - mean)||^2`` is the squared
    Mahalanobis distance, ``matrix`` the inverse of the covariance's Cholesky factor (lower
    triangular: half the flops of a full whitening matrix). ``ridge`` is what was added to the
    covariance's diagonal (0 when it was well conditioned); ``precision`` is the dtype of the
    tile-wise matrix product."""

    mean: np.ndarray  # (k,) float64
    matrix: np.ndarray  # (k, k) float64, lower triangular
    ridge: float
    condition: float
    precision: str

    def __post_init__(self):
        if np.triu(self.matrix, 1).any():
            raise ValueError("the whitening matrix must be lower triangular")

    def describe(self) -> dict:
        """Run metadata: what regularisation and precision were used."""
        return {
            "ridge": self.ridge,
            "regularised": self.ridge > 0,
            "condition_number": self.condition,
            "matmul_precision": self.precision,
        }

    def mahalanobis(self, pixels: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance ``(n,)`` float64 of ``pixels`` ``(n, k)``; NaN rows give NaN.
        The product runs in float32 only for float32 pixels (never below the input's precision)."""
        out = np.empty(pixels.shape[0], dtype=np.float64)
        fast = self.precision == "float32" and pixels.dtype == np.float32
        dtype = np.float32 if fast else np.float64
        trmm = blas.strmm if fast else blas.dtrmm
        offset = self.mean.astype(dtype)
        matrix = np.asfortranarray(self.matrix, dtype=dtype)
        # the rounding of the mean to the product's dtype is corrected exactly after the product
        correction = (self.matrix @ (offset.astype(np.float64) - self.mean)).astype(dtype)
        for start in range(0, pixels.shape[0], BLOCK_PIXELS):
            block = pixels[start : start + BLOCK_PIXELS]
            order = "C" if block.flags.c_contiguous else "F"
            centred = _block_buffer(*block.shape, dtype, order=order)  # (n, k), the input's layout, reused
            np.subtract(block, offset, out=centred, casting="unsafe")
            if order == "F":  # centred @ matrix^T, in place
                whitened = trmm(1.0, matrix, centred, side=1, lower=1, trans_a=1, overwrite_b=1)
            else:  # (matrix @ centred^T)^T, in place on the Fortran-ordered transpose
                whitened = trmm(1.0, matrix, centred.T, side=0, lower=1, trans_a=0, overwrite_b=1).T
            whitened += correction
            # a sum of k squares in the product's dtype (float32: 1e-6 relative error, 4x faster)
            out[start : start + BLOCK_PIXELS] = np.einsum("ij,ij->i", whitened, whitened)
        return out

    mahalanobis.nan_rows_give_nan = True  # a row with a NaN/Inf gives NaN or Inf: see tiles._score_every_pixel


def whitener(stats: BackgroundStats) -> Whitener:
    """Whitening of ``stats``' covariance, regularised only where it is singular or
    ill-conditioned (fewer pixels than features, constant or duplicated features)."""
    if stats.count < 2:
        from hsad_scale.errors import InputError

        raise InputError(f"the cube has {stats.count} valid pixel(s) (every other one is NaN or nodata in some band): "
                         "background statistics need at least two")
    cov = stats.covariance
    eigval, eigvec = np.linalg.eigh(cov)
    top = max(float(eigval[-1]), np.finfo(float).tiny)
    ridge = 0.0
    if stats.count <= stats.n_features or eigval[0] <= RCOND_REGULARISE * top:
        mean_variance = float(np.trace(cov)) / stats.n_features
        # all features constant (e.g. dead latent units): unit ridge, i.e. Euclidean distance
        ridge = RIDGE_FRACTION * mean_variance if mean_variance > 1e-30 else 1.0
        eigval = np.maximum(eigval, 0.0) + ridge
        cov = (eigvec * eigval) @ eigvec.T
    condition = float(eigval[-1] / eigval[0])
    factor = np.linalg.cholesky((cov + cov.T) / 2)  # condition <= 1e10 here: well inside float64
    matrix = solve_triangular(factor, np.eye(stats.n_features), lower=True)
    fits_float32 = condition <= FLOAT32_MAX_CONDITION and float(np.abs(matrix).max()) < 1e30
    precision = "float32" if fits_float32 else "float64"
    return Whitener(stats.mean.copy(), np.tril(matrix), ridge, condition, precision)


def _jsonable(value):
    """JSON form of numpy scalars and arrays (``json.dumps(default=...)``; used by outputs.write_json)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
