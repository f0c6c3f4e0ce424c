"""``hsad inspect``: what ingest would read from a scene file, as text; nothing is written."""

from __future__ import annotations

import numpy as np

from hsad_scale import cube as cubes


def describe(src, *, gt=None, cube_key=None, gt_key=None, band_axis=None, drop_bands=None,
             swath: bool = False) -> str:
    """A few lines on the cube ingest would write from ``src``: format and layout decided,
    shape ``(band, y, x)``, bands kept and left out (and why), wavelength range (nm), CRS and
    transform, nodata, ground truth, and the readers' warnings. Reads the data once (to find
    all-nodata bands), writes nothing; InputError exactly when ingest would refuse."""
    ds = cubes.read_dataset(src, gt=gt, cube_key=cube_key, gt_key=gt_key, band_axis=band_axis,
                            drop_bands=drop_bands, swath=swath)
    attrs = ds[cubes.CUBE].attrs
    n_bands, height, width = ds[cubes.CUBE].shape
    lines = [f"source      {src}",
             f"format      {attrs.get('format', '?')}"
             + (f" (variable {attrs['cube_key']})" if attrs.get("cube_key") else ""),
             f"cube        (band, y, x) = ({n_bands}, {height}, {width}), float32 from "
             f"{attrs.get('source_dtype', 'the stored type')}"]
    if attrs.get("band_axis_evidence"):
        lines.append(f"band axis   decided by {attrs['band_axis_evidence']}")
    dropped = attrs.get("dropped_bands", [])
    lines.append(f"bands       {n_bands} kept of {attrs.get('source_bands', n_bands)}"
                 + (f"; left out: {cubes.index_ranges(dropped)}" if dropped else ""))
    if "wavelength" in ds.coords:
        w = ds["wavelength"].values
        lines.append(f"wavelength  {w.min():.2f}-{w.max():.2f} nm")
    else:
        lines.append("wavelength  none (no wavelengths in nm/µm in the file)")
    if ds.rio.crs is not None:
        t = ds.rio.transform()
        lines.append(f"crs         {ds.rio.crs.to_string()}")
        lines.append(f"transform   {tuple(round(v, 6) for v in t[:6])}"
                     + (" (rotated: x/y coords are pixel indices)" if t.b or t.d else ""))
    else:
        lines.append("crs         none (pixel coordinates)")
    if cubes.GLT_X in ds:
        g = ds[cubes.GLT_X]
        from rasterio.crs import CRS

        lines.append(f"glt         maps written on the orthorectified grid {g.shape[0]} x {g.shape[1]}, "
                     f"{CRS.from_wkt(g.attrs['crs_wkt']).to_string()}, GeoTransform {g.attrs['GeoTransform']} "
                     f"(--swath keeps swath geometry)")
    if "scale_applied" in attrs:
        lines.append(f"scaling     stored x scale + offset applied (first band: x {attrs['scale_applied'][0]:g} "
                     f"+ {attrs['offset_applied'][0]:g})")
    lines.append(f"nodata      {attrs.get('nodata', 'none')} (NaN/Inf always invalid)")
    if cubes.GROUND_TRUTH in ds:
        truth = ds[cubes.GROUND_TRUTH].values
        lines.append(f"truth       {height} x {width}, {int(np.count_nonzero(truth))} anomaly pixels"
                     + (f" ({attrs['gt_key']})" if attrs.get("gt_key") else ""))
    else:
        lines.append("truth       none")
    lines += [f"warning     {line}" for line in attrs.get("hsad_warnings", [])]
    return "\n".join(lines)
