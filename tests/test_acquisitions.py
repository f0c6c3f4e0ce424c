"""Files shaped like real acquisitions, written here from real HAD pixels: what ingest refuses
(exit 2, one line, nothing written) and the cube it writes for the rest (orientation: source
pixel (r, c) is ``cube[:, r, c]``; values; wavelengths in nm; bands left out)."""

from __future__ import annotations

import json

import h5py
import netCDF4
import numpy as np
import pytest
import rasterio
import scipy.io
from affine import Affine
from rasterio.crs import CRS

from hsad_scale import cube as cubes
from hsad_scale.cli import main

ROWS, COLS = 20, 30  # a crop of HYDICE: non-square, so a transposed cube cannot pass
WAVELENGTH_NM = np.round(np.linspace(400.0, 2500.0, 162), 3)


@pytest.fixture(scope="module")
def hydice(had_dir, manifest):
    """Real HYDICE pixels: (data uint16 (rows, cols, 162), ground truth uint8 (rows, cols)),
    a 20 x 30 crop holding anomaly pixels."""
    from conftest import load_mat_scene

    row = next(r for r in manifest if r["name"] == "hydice")
    data, truth = load_mat_scene(had_dir, row)
    r0, c0 = 40, 60
    crop = data[r0:r0 + ROWS, c0:c0 + COLS].astype(np.uint16)
    gt = (truth[r0:r0 + ROWS, c0:c0 + COLS] > 0).astype(np.uint8)
    assert np.array_equal(crop, data[r0:r0 + ROWS, c0:c0 + COLS])  # uint16 holds them exactly
    return crop, gt


def hsad(*args) -> int:
    """Run the command line in this process; return its exit status."""
    return main([str(a) for a in args])


def refused(capfd, tmp_path, *args, dest="out.zarr", match=None):
    """``hsad ingest ARGS DEST``: exit 2, one stderr line ``hsad: error: ...`` (matching
    ``match``), nothing written (no DEST, no temporary sibling)."""
    capfd.readouterr()
    status = hsad("ingest", *args, tmp_path / dest)
    err = [line for line in capfd.readouterr().err.splitlines() if not line.startswith("[hsad]")]
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("hsad: error: "), err
    if match:
        assert match in err[0], err[0]
    assert not (tmp_path / dest).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or ".tmp" in p.name] == []
    return err[0]


def ingested(tmp_path, *args, dest="cube.zarr"):
    assert hsad("ingest", *args, tmp_path / dest) == 0
    return cubes.open_cube(tmp_path / dest)


def assert_pixels(ds, data_rcb, bands=None):
    """``cube[:, r, c]`` is source pixel (r, c) (float32 of the stored values), for every pixel."""
    expected = np.transpose(data_rcb, (2, 0, 1)).astype(np.float32)
    if bands is not None:
        expected = expected[bands]
    np.testing.assert_array_equal(ds[cubes.CUBE].values, expected)


# --- ENVI ------------------------------------------------------------------------------------

def write_envi(path, data_rcb, interleave="bsq", *, dtype="<u2", data_type=12, extra="",
               offset=0, body=None, wl="nm"):
    """ENVI image written by hand (header + raw), ``data_rcb`` (rows, cols, bands)."""
    rows, cols, bands = data_rcb.shape
    order = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}.get(interleave, (2, 0, 1))
    raw = np.ascontiguousarray(np.transpose(data_rcb, order)).astype(dtype).tobytes()
    path.write_bytes(b"\0" * offset + (raw if body is None else body(raw)))
    wl_lines = {"nm": "wavelength units = Nanometers\nwavelength = {"
                      + ", ".join(f"{w:.3f}" for w in WAVELENGTH_NM[:bands]) + "}\n",
                "none": ""}.get(wl, wl)
    path.with_suffix(".hdr").write_text(
        f"ENVI\nsamples = {cols}\nlines = {rows}\nbands = {bands}\nheader offset = {offset}\n"
        f"file type = ENVI Standard\ndata type = {data_type}\ninterleave = {interleave}\n"
        f"byte order = 0\n{wl_lines}{extra}")
    return path


@pytest.mark.parametrize(("kind", "kw", "match"), [
    ("shorter", dict(body=lambda raw: raw[: len(raw) * 6 // 10]), "smaller than its header"),
    ("one byte short", dict(body=lambda raw: raw[:-1]), "smaller than its header"),
    ("longer", dict(body=lambda raw: raw + b"\0" * 4000), "larger than its header"),
    ("offset past end", dict(body=lambda raw: b"", offset=0, extra=""), None),
    ("unknown interleave", dict(interleave="bsx"), "unknown interleave"),
    ("complex", dict(data_type=6, dtype="<c8"), "complex"),
])
def test_envi_refusals(capfd, tmp_path, hydice, kind, kw, match):
    data, _ = hydice
    if kind == "offset past end":
        path = write_envi(tmp_path / "s.img", data, offset=0)
        hdr = path.with_suffix(".hdr")
        hdr.write_text(hdr.read_text().replace("header offset = 0", f"header offset = {path.stat().st_size + 10}"))
        match = "past the end"
    else:
        path = write_envi(tmp_path / "s.img", data, **kw)
    refused(capfd, tmp_path, path, match=match)
    refused(capfd, tmp_path, path.with_suffix(".hdr"), match=match)  # the header given instead


def test_complex_geotiff_and_mat_refused(capfd, tmp_path, hydice):
    data, _ = hydice
    z = (data[:, :, :8] + 1j * data[:, :, :8]).astype(np.complex64)
    with rasterio.open(tmp_path / "c.tif", "w", driver="GTiff", width=COLS, height=ROWS, count=8,
                       dtype="complex64") as dst:
        dst.write(np.transpose(z, (2, 0, 1)))
    refused(capfd, tmp_path, tmp_path / "c.tif", match="complex")
    scipy.io.savemat(tmp_path / "c.mat", {"data": z})
    refused(capfd, tmp_path, tmp_path / "c.mat", match="complex")


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_every_interleave_is_the_source_pixels(tmp_path, hydice, interleave):
    data, _ = hydice
    ds = ingested(tmp_path, write_envi(tmp_path / "s.img", data, interleave))
    assert_pixels(ds, data)
    np.testing.assert_allclose(ds["wavelength"].values, WAVELENGTH_NM)


def test_envi_bad_bands_left_out_and_empty_pixels_masked(capfd, tmp_path, hydice):
    data, _ = hydice
    cube = data.astype(np.int16)
    cube[:, :, 100:105] = -9999  # blanked water-vapour bands ...
    cube[:, :, 7] = -9999  # ... and one more, not listed in bbl
    cube[3, 4, :] = -9999  # an empty pixel
    cube[5, 6, 50] = -9999  # a pixel invalid in one band
    bbl = ", ".join("0" if b in range(100, 105) else "1" for b in range(162))
    path = write_envi(tmp_path / "rfl.img", cube, dtype="<i2", data_type=2,
                      extra=f"data ignore value = -9999\nbbl = {{{bbl}}}\n")
    capfd.readouterr()
    ds = ingested(tmp_path, path)
    err = capfd.readouterr().err
    kept = [b for b in range(162) if b != 7 and b not in range(100, 105)]
    attrs = ds[cubes.CUBE].attrs
    assert attrs["dropped_bands"] == [7, 100, 101, 102, 103, 104]
    assert attrs["dropped_band_reasons"][0].startswith("every value is the nodata value -9999")
    assert attrs["dropped_band_reasons"][1:] == ["bbl = 0 in the ENVI header"] * 5
    assert "[hsad] warning: 6 of 162 bands left out of the cube" in err
    np.testing.assert_allclose(ds["wavelength"].values, WAVELENGTH_NM[kept])
    values = ds[cubes.CUBE].values
    assert values.shape == (156, ROWS, COLS)
    invalid = np.isnan(values).all(axis=0)
    assert invalid.sum() == 2 and invalid[3, 4] and invalid[5, 6]
    ok = ~invalid
    np.testing.assert_array_equal(values[:, ok], np.transpose(data, (2, 0, 1))[kept][:, ok].astype(np.float32))


def test_envi_drop_bands_by_index_and_wavelength(tmp_path, hydice):
    data, _ = hydice
    path = write_envi(tmp_path / "s.img", data)
    ds = ingested(tmp_path, path, "--drop-bands", "0-3,10,1350-1450nm")
    in_range = [b for b in range(162) if 1350 <= WAVELENGTH_NM[b] <= 1450]
    dropped = sorted({0, 1, 2, 3, 10, *in_range})
    assert ds[cubes.CUBE].attrs["dropped_bands"] == dropped and len(in_range) == 8
    kept = [b for b in range(162) if b not in dropped]
    assert_pixels(ds, data, kept)
    np.testing.assert_allclose(ds["wavelength"].values, WAVELENGTH_NM[kept])


@pytest.mark.parametrize(("spec", "match"), [("0-200", "within 0-161"), ("abc", "not an index"),
                                             ("7-3", "ends before")])
def test_drop_bands_refusals(capfd, tmp_path, hydice, spec, match):
    data, _ = hydice
    refused(capfd, tmp_path, write_envi(tmp_path / "s.img", data), "--drop-bands", spec, match=match)


def test_drop_bands_in_nm_need_wavelengths(capfd, tmp_path, hydice):
    data, _ = hydice
    path = write_envi(tmp_path / "s.img", data, wl="none")
    refused(capfd, tmp_path, path, "--drop-bands", "1350-1450nm", match="no wavelengths")


def test_too_few_bands_or_no_valid_pixel(capfd, tmp_path, hydice):
    data, _ = hydice
    cube = data[:, :, :4].astype(np.int16)
    cube[:, :, 1:] = -9999  # one band left
    path = write_envi(tmp_path / "a.img", cube, dtype="<i2", data_type=2, wl="none",
                      extra="data ignore value = -9999\n")
    refused(capfd, tmp_path, path, match="only 1 of 4 bands hold valid values")
    cube = data[:, :, :4].astype(np.int16)
    cube[:, :, 0][::2] = -9999  # every pixel invalid in one band or another, no band empty
    cube[:, :, 1][1::2] = -9999
    path = write_envi(tmp_path / "b.img", cube, dtype="<i2", data_type=2, wl="none",
                      extra="data ignore value = -9999\n")
    refused(capfd, tmp_path, path, match="no valid pixel")


@pytest.mark.parametrize(("wl_text", "units"), [
    (", ".join(str(i) for i in range(1, 163)), "Unknown"),  # ENVI's default: band numbers
    (", ".join(str(i) for i in range(1, 163)), None),  # band numbers without units
    (", ".join(f"{w:.3f}" for w in WAVELENGTH_NM), "Unknown"),  # nm-like, units not stated
    (", ".join(f"{w / 1000:.6f}" for w in WAVELENGTH_NM), "Unknown"),  # µm-like: no guess
    (", ".join(f"{w:.3f}" for w in WAVELENGTH_NM), "Micrometers"),  # nm values, wrong unit
])
def test_wavelengths_with_unknown_units_are_not_wavelengths(capfd, tmp_path, hydice, wl_text, units):
    data, _ = hydice
    unit_line = f"wavelength units = {units}\n" if units else ""
    path = write_envi(tmp_path / "s.img", data, wl=f"{unit_line}wavelength = {{{wl_text}}}\n")
    capfd.readouterr()
    ds = ingested(tmp_path, path)
    warnings = [l for l in capfd.readouterr().err.splitlines() if l.startswith("[hsad] warning:")]
    assert "wavelength" not in ds.coords
    assert len(warnings) == 1 and "not taken as wavelengths" in warnings[0]
    assert ds[cubes.CUBE].attrs["hsad_warnings"] == [warnings[0][len("[hsad] warning: "):]]
    assert_pixels(ds, data)


def test_micrometre_units_become_nm(tmp_path, hydice):
    data, _ = hydice
    wl = ", ".join(f"{w / 1000:.6f}" for w in WAVELENGTH_NM)
    ds = ingested(tmp_path, write_envi(tmp_path / "s.img", data,
                                       wl=f"wavelength units = Micrometers\nwavelength = {{{wl}}}\n"))
    np.testing.assert_allclose(ds["wavelength"].values, WAVELENGTH_NM, rtol=1e-6)


def test_rotated_map_info_keeps_the_full_affine(tmp_path, hydice, client):
    """AVIRIS-NG style ``map info`` with ``rotation=``: no 1-D x/y coordinate is a pixel centre,
    so x/y are pixel indices and the affine (rotation included) is kept whole."""
    data, _ = hydice
    map_info = ("map info = {UTM, 1.000, 1.000, 724522.127, 4074620.759, 5.1, 5.1, 11, North, "
                "WGS-84, units=Meters, rotation=75.0}\n")
    ds = ingested(tmp_path, write_envi(tmp_path / "s.img", data, extra=map_info))
    t = ds.rio.transform()
    with rasterio.open(tmp_path / "s.img") as src:  # GDAL's reading of the ENVI rotation
        np.testing.assert_allclose(t[:6], src.transform[:6], rtol=1e-12)
    assert (t.c, t.f) == pytest.approx((724522.127, 4074620.759))
    assert np.hypot(t.a, t.d) == pytest.approx(5.1) and np.hypot(t.b, t.e) == pytest.approx(5.1)
    assert abs(np.degrees(np.arctan2(t.d, t.a))) == pytest.approx(75.0)
    np.testing.assert_array_equal(ds.x.values, np.arange(COLS))
    np.testing.assert_array_equal(ds.y.values, np.arange(ROWS))
    assert_pixels(ds, data)
    from hsad_scale.pipeline import run_detect  # the maps carry the same rotated affine

    run = run_detect(tmp_path / "cube.zarr", tmp_path / "run", client=client, quiet=True)
    with rasterio.open(run / "scores.tif") as tif:
        np.testing.assert_allclose(tif.transform[:6], t[:6], rtol=1e-12)
    np.testing.assert_allclose(xr_open(run / "scores.zarr").rio.transform()[:6], t[:6], rtol=1e-12)


# --- .mat ------------------------------------------------------------------------------------

def write_mat73(path, variables: dict):
    """MATLAB v7.3 file: HDF5 with a 512-byte user block, arrays stored column-major."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            value = np.asarray(value)
            f.create_dataset(name, data=value.T).attrs["MATLAB_class"] = np.bytes_(
                {"uint16": "uint16", "uint8": "uint8", "float64": "double"}[value.dtype.name])
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ")
                + b"\0" * 8 + b"\x00\x02IM")
    return path


@pytest.mark.parametrize(("version", "gt_shape"), [("5", None), ("7.3", None), ("5", (1, ROWS, COLS)),
                                                  ("7.3", (1, ROWS, COLS))])
def test_mat_band_first_decided_by_ground_truth(capfd, tmp_path, hydice, version, gt_shape):
    """PyTorch-style (bands, rows, cols) cube; its ground truth (rows, cols) or (1, rows, cols)."""
    data, gt = hydice
    chw = np.ascontiguousarray(np.transpose(data, (2, 0, 1)))  # (bands, rows, cols)
    path = tmp_path / "chw.mat"
    saved_gt = gt if gt_shape is None else gt.reshape(gt_shape)
    if version == "5":
        scipy.io.savemat(path, {"data": chw, "map": saved_gt})
    else:
        write_mat73(path, {"data": chw, "map": saved_gt})
    capfd.readouterr()
    ds = ingested(tmp_path, path)
    assert "stored with its bands on axis 0" in capfd.readouterr().err
    assert_pixels(ds, data)
    np.testing.assert_array_equal(ds[cubes.GROUND_TRUTH].values, gt)


def test_mat_band_axis_from_wavelength_vector_or_option(capfd, tmp_path, hydice):
    data, _ = hydice
    rbc = np.ascontiguousarray(np.transpose(data, (0, 2, 1)))  # (rows, bands, cols): PRISMA-like
    scipy.io.savemat(tmp_path / "w.mat", {"data": rbc, "wavelength": WAVELENGTH_NM[None]})
    ds = ingested(tmp_path, tmp_path / "w.mat", dest="w.zarr")
    assert_pixels(ds, data)
    np.testing.assert_allclose(ds["wavelength"].values, WAVELENGTH_NM)
    scipy.io.savemat(tmp_path / "bare.mat", {"data": rbc})
    refused(capfd, tmp_path, tmp_path / "bare.mat", match="--band-axis")  # no evidence
    assert_pixels(ingested(tmp_path, tmp_path / "bare.mat", "--band-axis", "middle"), data)
    np.save(tmp_path / "gt.npy", np.zeros((ROWS, COLS), np.uint8))  # a separate ground truth decides
    assert_pixels(ingested(tmp_path, tmp_path / "bare.mat", "--gt", tmp_path / "gt.npy", dest="g.zarr"), data)


def test_mat_ambiguities_refused(capfd, tmp_path, hydice):
    data, gt = hydice
    scipy.io.savemat(tmp_path / "two.mat", {"data": data, "denoised": data, "map": gt})
    refused(capfd, tmp_path, tmp_path / "two.mat", match="several 3-D variables")
    assert_pixels(ingested(tmp_path, tmp_path / "two.mat", "--cube-key", "denoised"), data)
    scipy.io.savemat(tmp_path / "badgt.mat", {"data": data, "map": gt[:, :-1]})
    refused(capfd, tmp_path, tmp_path / "badgt.mat", match="matches no spatial layout")
    scipy.io.savemat(tmp_path / "ok.mat", {"data": data, "map": gt})
    refused(capfd, tmp_path, tmp_path / "ok.mat", "--band-axis", "first", match="ground truth 'map'")


# --- truncated or corrupt files ---------------------------------------------------------------

def _truncate(path, fraction=0.6):
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    return path


def test_truncated_or_corrupt_files_are_named(capfd, tmp_path, hydice):
    data, gt = hydice
    cube = np.transpose(data, (2, 0, 1))
    with rasterio.open(tmp_path / "t.tif", "w", driver="GTiff", width=COLS, height=ROWS, count=162,
                       dtype="uint16") as dst:
        dst.write(cube)
    with netCDF4.Dataset(tmp_path / "t.nc", "w") as nc:
        for name, size in zip(("y", "x", "bands"), data.shape):
            nc.createDimension(name, size)
        nc.createVariable("reflectance", "u2", ("y", "x", "bands"))[:] = data
    with netCDF4.Dataset(tmp_path / "t3.nc", "w", format="NETCDF3_CLASSIC") as nc:  # raw: read as fill
        for name, size in zip(("y", "x", "bands"), data.shape):
            nc.createDimension(name, size)
        nc.createVariable("reflectance", "i2", ("y", "x", "bands"))[:] = data.astype(np.int16)
    scipy.io.savemat(tmp_path / "t.mat", {"data": data, "map": gt})
    write_mat73(tmp_path / "t73.mat", {"data": data, "map": gt})
    for name in ("t.tif", "t.nc", "t3.nc", "t.mat", "t73.mat"):
        path = _truncate(tmp_path / name)
        line = refused(capfd, tmp_path, path)
        assert str(path) in line
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x07" * 500)
    assert str(tmp_path / "junk.h5") in refused(capfd, tmp_path, tmp_path / "junk.h5")
    with rasterio.open(tmp_path / "rgb.png", "w", driver="PNG", width=COLS, height=ROWS, count=3,
                       dtype="uint8") as dst:  # an RGB picture named .tif is not a cube
        dst.write(np.zeros((3, ROWS, COLS), np.uint8))
    (tmp_path / "rgb.png").rename(tmp_path / "rgb.tif")
    assert "not a GeoTIFF" in refused(capfd, tmp_path, tmp_path / "rgb.tif")


# --- GeoTIFF ---------------------------------------------------------------------------------

def test_geotiff_scale_offset_give_physical_values(tmp_path, hydice):
    data, _ = hydice
    cube = np.transpose(data, (2, 0, 1))
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", width=COLS, height=ROWS, count=162,
                       dtype="uint16", crs=CRS.from_epsg(32633), nodata=65535,
                       transform=Affine(30, 0, 500000, 0, -30, 4100000)) as dst:
        dst.write(cube)
        dst.scales = [1e-4] * 162
        dst.offsets = [-0.1] * 162
    ds = ingested(tmp_path, tmp_path / "s.tif")
    expected = cube.astype(np.float32) * np.float32(1e-4) + np.float32(-0.1)
    np.testing.assert_allclose(ds[cubes.CUBE].values, expected, rtol=1e-6)
    assert ds[cubes.CUBE].attrs["scale_applied"][0] == pytest.approx(1e-4)


def test_geotiff_envi_style_band_descriptions(tmp_path, hydice):
    data, _ = hydice
    with rasterio.open(tmp_path / "d.tif", "w", driver="GTiff", width=COLS, height=ROWS, count=162,
                       dtype="uint16") as dst:
        dst.write(np.transpose(data, (2, 0, 1)))
        for b in range(162):
            dst.set_band_description(b + 1, f"Band {b + 1} (Band {b + 1}) ({WAVELENGTH_NM[b]:.6f} Nanometers)")
    ds = ingested(tmp_path, tmp_path / "d.tif")
    np.testing.assert_allclose(ds["wavelength"].values, WAVELENGTH_NM)
    assert_pixels(ds, data)


# --- NetCDF / HDF5 ---------------------------------------------------------------------------

def test_netcdf_band_first_without_dim_names(capfd, tmp_path, hydice):
    data, gt = hydice
    with h5py.File(tmp_path / "chw.h5", "w") as f:
        f["cube"] = np.ascontiguousarray(np.transpose(data, (2, 0, 1)))
    refused(capfd, tmp_path, tmp_path / "chw.h5", match="--band-axis")
    assert_pixels(ingested(tmp_path, tmp_path / "chw.h5", "--band-axis", "first"), data)
    for name, saved in (("gt", gt), ("anomaly_mask", gt[None])):  # (rows, cols) or (1, rows, cols)
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["cube"] = np.ascontiguousarray(np.transpose(data, (2, 0, 1)))
            f[name] = saved
        ds = ingested(tmp_path, tmp_path / f"{name}.h5", dest=f"{name}.zarr")
        assert_pixels(ds, data)
        np.testing.assert_array_equal(ds[cubes.GROUND_TRUTH].values, gt)


def test_netcdf_single_time_step_cube(tmp_path, hydice):
    data, _ = hydice
    with netCDF4.Dataset(tmp_path / "t.nc", "w") as nc:
        for name, size in zip(("time", "y", "x", "wavelength"), (1, *data.shape)):
            nc.createDimension(name, size)
        nc.createVariable("radiance", "u2", ("time", "y", "x", "wavelength"))[:] = data[None]
        w = nc.createVariable("wavelength", "f8", ("wavelength",))
        w[:] = WAVELENGTH_NM
        w.units = "nm"
    ds = ingested(tmp_path, tmp_path / "t.nc")
    assert_pixels(ds, data)
    np.testing.assert_allclose(ds["wavelength"].values, WAVELENGTH_NM)


PRISMA_VNIR = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube"


def write_prisma_l2d(path, data_rcb):
    """PRISMA L2D in its HDF-EOS structure: cubes ``(rows, bands, cols)`` uint16 in
    ``HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields``, wavelengths (nm), band flags and reflectance
    scale in root attributes (``List_Cw_Vnir``, ``List_Cw_Vnir_Flags``, ``L2ScaleVnirMin/Max``)."""
    bands = data_rcb.shape[2]
    wl = WAVELENGTH_NM[:bands].copy()
    flags = np.ones(bands, np.int8)
    flags[[0, 5]] = 0
    wl[0] = 0.0  # PRISMA lists 0 for a band it does not deliver
    with h5py.File(path, "w") as f:
        fields = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields"
        f[f"{fields}/VNIR_Cube"] = np.ascontiguousarray(np.transpose(data_rcb, (0, 2, 1)))
        f[f"{fields}/SWIR_Cube"] = np.ascontiguousarray(np.transpose(data_rcb, (0, 2, 1)))
        f["HDFEOS/SWATHS/PRS_L2D_HCO/Geolocation Fields/Latitude"] = np.zeros(data_rcb.shape[:2])
        f.attrs["List_Cw_Vnir"] = wl.astype(np.float32)
        f.attrs["List_Cw_Vnir_Flags"] = flags
        f.attrs["L2ScaleVnirMin"] = 0.0
        f.attrs["L2ScaleVnirMax"] = 2.0
    return wl, flags


def test_prisma_l2d_cube_by_group_path(capfd, tmp_path, hydice):
    data, _ = hydice
    wl, flags = write_prisma_l2d(tmp_path / "PRS_L2D.he5", data)
    refused(capfd, tmp_path, tmp_path / "PRS_L2D.he5", match=PRISMA_VNIR)  # VNIR or SWIR?
    ds = ingested(tmp_path, tmp_path / "PRS_L2D.he5", "--cube-key", PRISMA_VNIR)
    kept = [b for b in range(162) if flags[b]]
    assert ds[cubes.CUBE].attrs["dropped_bands"] == [0, 5]
    np.testing.assert_allclose(ds["wavelength"].values, wl[kept], rtol=1e-6)
    reflectance = np.transpose(data, (2, 0, 1))[kept].astype(np.float32) * np.float32(2.0 / 65535)
    np.testing.assert_allclose(ds[cubes.CUBE].values, reflectance, rtol=1e-6)


def test_one_column_mat_scene(tmp_path, hydice):
    data, gt = hydice
    column = data.reshape(-1, 1, 162)
    scipy.io.savemat(tmp_path / "col.mat", {"data": column, "map": gt.reshape(-1, 1)})
    ds = ingested(tmp_path, tmp_path / "col.mat")
    assert ds[cubes.CUBE].shape == (162, ROWS * COLS, 1)
    assert_pixels(ds, column)
    np.testing.assert_array_equal(ds[cubes.GROUND_TRUTH].values, gt.reshape(-1, 1))


def test_inspect_prints_the_decisions_and_writes_nothing(capfd, tmp_path, hydice):
    data, gt = hydice
    cube = data.astype(np.int16)
    cube[:, :, 100:105] = -9999
    path = write_envi(tmp_path / "rfl.img", cube, dtype="<i2", data_type=2,
                      extra="data ignore value = -9999\n")
    np.save(tmp_path / "gt.npy", gt)
    before = sorted(p.name for p in tmp_path.iterdir())
    capfd.readouterr()
    assert hsad("inspect", path, "--gt", tmp_path / "gt.npy") == 0
    out = capfd.readouterr().out
    assert "(band, y, x) = (157, 20, 30)" in out
    assert "157 kept of 162; left out: 100-104" in out
    assert f"wavelength  {WAVELENGTH_NM[0]:.2f}-{WAVELENGTH_NM[-1]:.2f} nm" in out
    assert f"{int(gt.sum())} anomaly pixels" in out and "nodata      -9999" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    path.with_suffix(".img").write_bytes(path.with_suffix(".img").read_bytes()[:-2])
    assert hsad("inspect", path) == 2


# --- EMIT L2A --------------------------------------------------------------------------------

EMIT_WKT = CRS.from_epsg(4326).to_wkt()
EMIT_GEOTRANSFORM = (-118.5, 0.0005, 0.0, 34.2, 0.0, -0.0005)


def emit_glt(rows, cols, height=26, width=36, angle=12.0):
    """A GLT of a swath seen rotated by ``angle`` degrees on a ``height`` x ``width`` grid:
    nearest swath pixel of each grid pixel (1-based), 0 outside the swath."""
    i, j = np.meshgrid(np.arange(height) - height / 2, np.arange(width) - width / 2, indexing="ij")
    a = np.radians(angle)
    r = np.rint(np.cos(a) * i - np.sin(a) * j + rows / 2).astype(int)
    c = np.rint(np.sin(a) * i + np.cos(a) * j + cols / 2).astype(int)
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    return np.where(inside, c + 1, 0).astype(np.int32), np.where(inside, r + 1, 0).astype(np.int32)


def write_emit_l2a(path, refl, good):
    """EMIT L2A reflectance in its NetCDF structure: ``reflectance (downtrack, crosstrack,
    bands)`` fill -9999, ``sensor_band_parameters/{wavelengths, fwhm, good_wavelengths}``,
    ``location/{lat, lon, elev, glt_x, glt_y}``, root ``geotransform`` and ``spatial_ref``."""
    rows, cols, bands = refl.shape
    glt_x, glt_y = emit_glt(rows, cols)
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("downtrack", rows), ("crosstrack", cols), ("bands", bands),
                           ("ortho_y", glt_x.shape[0]), ("ortho_x", glt_x.shape[1])):
            nc.createDimension(name, size)
        nc.geotransform = np.array(EMIT_GEOTRANSFORM)
        nc.spatial_ref = EMIT_WKT
        nc.title = "EMIT L2A Estimated Surface Reflectance 60 m V001"
        v = nc.createVariable("reflectance", "f4", ("downtrack", "crosstrack", "bands"), fill_value=-9999.0)
        v[:] = refl
        g = nc.createGroup("sensor_band_parameters")
        g.createVariable("wavelengths", "f4", ("bands",))[:] = WAVELENGTH_NM[:bands]
        g["wavelengths"].units = "nm"
        g.createVariable("fwhm", "f4", ("bands",))[:] = 8.5
        g.createVariable("good_wavelengths", "u1", ("bands",))[:] = good
        loc = nc.createGroup("location")
        for name in ("lat", "lon", "elev"):
            loc.createVariable(name, "f8", ("downtrack", "crosstrack"), fill_value=-9999.0)[:] = 0.0
        loc.createVariable("glt_x", "i4", ("ortho_y", "ortho_x"), fill_value=0)[:] = glt_x
        loc.createVariable("glt_y", "i4", ("ortho_y", "ortho_x"), fill_value=0)[:] = glt_y
    return glt_x, glt_y


def test_emit_l2a_scores_on_the_glt_grid(capfd, tmp_path, hydice, client):
    from hsad_scale.pipeline import run_detect

    data, _ = hydice
    refl = (data.astype(np.float32) / 10000).astype(np.float32)
    refl[2, 3, :] = -9999.0  # a fill pixel
    good = np.ones(162, np.uint8)
    good[[0, 1, 100, 101, 102]] = 0  # EMIT's bad wavelengths
    glt_x, glt_y = write_emit_l2a(tmp_path / "EMIT_L2A_RFL.nc", refl, good)
    ortho = run_detect(tmp_path / "EMIT_L2A_RFL.nc", tmp_path / "ortho", client=client, quiet=True)
    swath = run_detect(tmp_path / "EMIT_L2A_RFL.nc", tmp_path / "swath", client=client, quiet=True,
                       ingest_options={"swath": True})
    cube = cubes.open_cube(ortho / "cube.zarr")
    kept = [b for b in range(162) if good[b]]
    assert cube[cubes.CUBE].attrs["dropped_bands"] == [0, 1, 100, 101, 102]
    np.testing.assert_allclose(cube["wavelength"].values, WAVELENGTH_NM[kept], rtol=1e-6)
    values = cube[cubes.CUBE].values  # the cube itself is the swath: (band, downtrack, crosstrack)
    assert np.isnan(values[:, 2, 3]).all()
    np.testing.assert_array_equal(values[:, 0, :], np.transpose(refl, (2, 0, 1))[kept][:, 0, :])
    s_swath = xr_open(swath / "scores.zarr")["score"].values
    s_ortho = xr_open(ortho / "scores.zarr")["score"].values
    assert s_swath.shape == (ROWS, COLS) and s_ortho.shape == glt_x.shape
    hit = glt_x > 0
    np.testing.assert_array_equal(s_ortho[hit], s_swath[glt_y[hit] - 1, glt_x[hit] - 1])
    assert np.isnan(s_ortho[~hit]).all() and (~hit).any()
    with rasterio.open(ortho / "scores.tif") as tif:
        assert tif.crs == CRS.from_epsg(4326)
        np.testing.assert_allclose(tif.transform.to_gdal(), EMIT_GEOTRANSFORM)
        np.testing.assert_array_equal(tif.read(1), s_ortho)
    with rasterio.open(swath / "scores.tif") as tif:  # swath geometry has no affine: the pixel grid
        assert tif.crs is None and tif.transform.is_identity
    record = json.loads((ortho / "run.json").read_text())
    assert record["ingest"]["dropped_bands"] == [0, 1, 100, 101, 102]
    capfd.readouterr()
    assert hsad("inspect", tmp_path / "EMIT_L2A_RFL.nc") == 0
    out = capfd.readouterr().out
    assert f"orthorectified grid {glt_x.shape[0]} x {glt_x.shape[1]}, EPSG:4326" in out
    assert "157 kept of 162; left out: 0-1, 100-102" in out


def xr_open(path):
    """A store opened as a user would: plain ``xr.open_zarr`` (consolidated metadata, CRS)."""
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently
        return xr.open_zarr(path)


def test_terminal_stays_quiet(tmp_path, hydice):
    """A header with upper-case keys (Spectral Python warns over several lines), band numbers
    as wavelengths and a float64 source with values beyond float32: only ``[hsad]`` lines."""
    import subprocess
    import sys

    data, _ = hydice
    cube = data.astype(np.float64)
    cube[0, 0, 0] = 1e300  # overflows float32: an invalid pixel, not a numpy warning
    path = write_envi(tmp_path / "s.img", cube, dtype="<f8", data_type=5,
                      wl="Wavelength Units = Unknown\nWavelength = {"
                         + ", ".join(str(i) for i in range(1, 163)) + "}\n")
    run = subprocess.run([sys.executable, "-m", "hsad_scale.cli", "ingest", str(path), str(tmp_path / "c.zarr")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert all(line.startswith("[hsad] ") for line in lines), lines
    assert sum(line.startswith("[hsad] warning:") for line in lines) == 1
    values = cubes.open_cube(tmp_path / "c.zarr")[cubes.CUBE].values
    assert np.isnan(values[:, 0, 0]).all() and not np.isnan(values[:, 0, 1]).any()


def test_enmap_l2a_geotiff_with_metadata_xml(tmp_path, hydice):
    """EnMAP L2A: ``...-SPECTRAL_IMAGE.TIF`` (int16, nodata -32768) and ``...-METADATA.XML``
    with per-band wavelength, gain and offset."""
    data, _ = hydice
    name = "ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302_20230628T165614Z"
    cube = np.transpose(data, (2, 0, 1)).astype(np.int16)
    cube[:, 0, 0] = -32768
    with rasterio.open(tmp_path / f"{name}-SPECTRAL_IMAGE.TIF", "w", driver="GTiff", width=COLS, height=ROWS,
                       count=162, dtype="int16", nodata=-32768, crs=CRS.from_epsg(32633),
                       transform=Affine(30, 0, 368000, 0, -30, 5810000)) as dst:
        dst.write(cube)
    gain = np.full(162, 1e-4)
    offset = np.linspace(0.0, 0.01, 162)
    band_xml = "".join(
        f'<bandID number="{b + 1}"><wavelengthCenterOfBand>{WAVELENGTH_NM[b]}</wavelengthCenterOfBand>'
        f"<FWHMOfBand>8.0</FWHMOfBand><GainOfBand>{gain[b]}</GainOfBand><OffsetOfBand>{offset[b]}</OffsetOfBand></bandID>"
        for b in range(162))
    (tmp_path / f"{name}-METADATA.XML").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?><level_X><specific><bandCharacterisation>{band_xml}'
        f"</bandCharacterisation></specific></level_X>")
    ds = ingested(tmp_path, tmp_path / f"{name}-SPECTRAL_IMAGE.TIF")
    np.testing.assert_allclose(ds["wavelength"].values, WAVELENGTH_NM)
    expected = cube.astype(np.float32) * gain.astype(np.float32)[:, None, None] + offset.astype(np.float32)[:, None, None]
    expected[:, 0, 0] = np.nan
    np.testing.assert_allclose(ds[cubes.CUBE].values, expected, rtol=1e-6)
    assert ds.rio.crs.to_epsg() == 32633


def test_drop_bands_on_a_cube_store(tmp_path, hydice, client):
    from hsad_scale.pipeline import run_detect

    data, _ = hydice
    store = tmp_path / "c.zarr"
    assert hsad("ingest", write_envi(tmp_path / "s.img", data), store) == 0
    run = run_detect(store, tmp_path / "run", client=client, quiet=True,
                     ingest_options={"drop_bands": "0-9,1350-1450nm"})
    record = json.loads((run / "run.json").read_text())
    assert record["shape"]["band"] == 162 - 10 - 8
    assert record["ingest"]["warnings"][-1].startswith("--drop-bands: store bands 0-9, ")
