"""A plausible synthetic scene with ground truth, generated tile by tile (any size).

Background pixels are mixtures of a few smooth endmember spectra with spatially smooth
abundances plus sensor noise; sub-pixel targets with their own spectra are implanted at
random places (about one per 48 x 48 pixels), each filling 2-40 % of its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine

from hsad_scale.cube import CUBE, GROUND_TRUTH, write_cube
from hsad_scale.errors import InputError

N_ENDMEMBERS = 5
N_TARGET_SPECTRA = 3
NOISE_STD = 0.004  # reflectance units: SNR about 100 at 0.4 reflectance
PIXELS_PER_TARGET = 48 * 48
N_WAVES = 6  # spatial sinusoids per abundance field


@dataclass(frozen=True)
class SceneSpec:
    """Scene size and seed; everything else follows from the seed."""

    height: int
    width: int
    bands: int
    seed: int = 0

    def __post_init__(self):
        if min(self.height, self.width) < 8 or self.bands < 3:
            raise InputError("a synthetic scene needs at least 8 x 8 pixels and 3 bands")


def parse_size(text: str) -> tuple[int, int]:
    """'512x256' -> (height 512, width 256)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like 512x512, got {text!r}") from None
    return height, width


def _spectra(spec: SceneSpec):
    rng = np.random.default_rng(spec.seed)
    wavelength = np.linspace(400.0, 2500.0, spec.bands)
    grid = np.linspace(0, 1, spec.bands)

    def smooth(n):  # sums of broad Gaussian bumps, reflectance in about [0.05, 0.65]
        centres = rng.uniform(0, 1, (n, 4, 1))
        widths = rng.uniform(0.08, 0.35, (n, 4, 1))
        heights = rng.uniform(0.05, 0.25, (n, 4, 1))
        return 0.05 + (heights * np.exp(-0.5 * ((grid - centres) / widths) ** 2)).sum(axis=1)

    endmembers = smooth(N_ENDMEMBERS)
    targets = smooth(N_TARGET_SPECTRA)
    waves = {
        "freq": rng.uniform(0.5, 6.0, (N_ENDMEMBERS, N_WAVES, 2)) * 2 * np.pi,
        "phase": rng.uniform(0, 2 * np.pi, (N_ENDMEMBERS, N_WAVES)),
    }
    n_targets = max(1, spec.height * spec.width // PIXELS_PER_TARGET)
    placed = {
        "row": rng.integers(1, spec.height - 2, n_targets),
        "col": rng.integers(1, spec.width - 2, n_targets),
        "size": rng.integers(1, 3, n_targets),
        "fill": rng.uniform(0.02, 0.4, n_targets),
        "kind": rng.integers(0, N_TARGET_SPECTRA, n_targets),
    }
    return wavelength, endmembers, targets, waves, placed


def _abundances(waves, rows, cols, spec):
    """Spatially smooth abundances (n_endmembers, ny, nx) summing to one."""
    v = rows[:, None] / spec.height
    u = cols[None, :] / spec.width
    f, p = waves["freq"], waves["phase"]
    fields = np.sin(f[..., 0, None, None] * v + f[..., 1, None, None] * u + p[..., None, None]).sum(axis=1)
    weights = np.exp(1.5 * fields)
    return weights / weights.sum(axis=0)


def _target_fill(placed, rows, cols):
    """Target fill fraction and kind per pixel of a tile."""
    fill = np.zeros((rows.size, cols.size))
    kind = np.zeros((rows.size, cols.size), dtype=int)
    for r, c, s, f, k in zip(placed["row"], placed["col"], placed["size"], placed["fill"], placed["kind"]):
        rr = slice(max(r - rows[0], 0), max(min(r + s - rows[0], rows.size), 0))
        cc = slice(max(c - cols[0], 0), max(min(c + s - cols[0], cols.size), 0))
        fill[rr, cc] = f
        kind[rr, cc] = k
    return fill, kind


def _tile(block_info, spec, parts, what):
    (r0, r1), (c0, c1) = block_info[None]["array-location"][-2:]
    rows, cols = np.arange(r0, r1), np.arange(c0, c1)
    _, endmembers, targets, waves, placed = parts
    fill, kind = _target_fill(placed, rows, cols)
    if what == "truth":
        return (fill > 0).astype(np.uint8)
    background = np.einsum("kyx,kb->byx", _abundances(waves, rows, cols, spec), endmembers)
    cube = (1 - fill) * background + fill * targets[kind].transpose(2, 0, 1)
    noise = np.random.default_rng([spec.seed, r0, c0]).standard_normal(cube.shape) * NOISE_STD
    return (cube + noise).astype(np.float32)


def synth_dataset(spec: SceneSpec, chunk: int = 256) -> xr.Dataset:
    """Lazy synthetic cube Dataset (band, y, x) with ground truth, wavelength and a UTM CRS."""
    parts = _spectra(spec)
    chunks = ((spec.bands,), *da.core.normalize_chunks((chunk, chunk), (spec.height, spec.width)))
    cube = da.map_blocks(_tile, dtype=np.float32, chunks=chunks, spec=spec, parts=parts, what="cube",
                         name=f"synth-cube-{spec.seed}-{spec.height}-{spec.width}-{spec.bands}")
    truth = da.map_blocks(_tile, dtype=np.uint8, chunks=chunks[1:], spec=spec, parts=parts, what="truth",
                          name=f"synth-truth-{spec.seed}-{spec.height}-{spec.width}")
    transform = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4500000.0)
    ds = xr.Dataset(
        {CUBE: (("band", "y", "x"), cube), GROUND_TRUTH: (("y", "x"), truth)},
        coords={
            "wavelength": ("band", parts[0], {"units": "nm"}),
            "y": 4500000.0 - 30.0 * (np.arange(spec.height) + 0.5),
            "x": 500000.0 + 30.0 * (np.arange(spec.width) + 0.5),
        },
        attrs={"source": f"hsad synth {spec.height}x{spec.width}x{spec.bands} seed {spec.seed}"},
    )
    return ds.rio.write_crs("EPSG:32633").rio.write_transform(transform)


def synth(dest: str | Path, spec: SceneSpec, *, chunk: int = 256, compression: str = "none",
          overwrite: bool = False) -> Path:
    """Write a synthetic scene to a cube store, streaming (memory bounded by the chunk)."""
    return write_cube(synth_dataset(spec, chunk), dest, compression=compression, overwrite=overwrite)
