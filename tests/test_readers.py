"""Scene readers: round trips on files written here, bad inputs, and the real HAD scenes."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import h5py
import netCDF4
import numpy as np
import pytest
import rasterio
import scipy.io
import spectral.io.envi as spy_envi
from affine import Affine
from rasterio.crs import CRS

from hsad_scale.errors import InputError
from hsad_scale.readers.dispatch import read_scene
from hsad_scale.readers.envi import read_envi
from hsad_scale.readers.geotiff import read_geotiff, wavelength_nm
from hsad_scale.readers.mat import read_mat
from hsad_scale.readers.netcdf import read_netcdf

ROWS, COLS, BANDS = 7, 5, 4  # non-square so that a transposed image cannot pass
UTM33 = CRS.from_epsg(32633)
TRANSFORM = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4100000.0)
MAP_INFO = "{UTM, 1.000, 1.000, 500000.0, 4100000.0, 30.0, 30.0, 33, North, WGS-84, units=Meters}"


def image(dtype=np.int16, seed=0) -> np.ndarray:
    """A (rows, cols, bands) test image with distinct values."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3000, size=(ROWS, COLS, BANDS)).astype(dtype)


def as_cube(img: np.ndarray) -> np.ndarray:
    """(rows, cols, bands) -> (band, y, x): the readers' contract."""
    return np.transpose(img, (2, 0, 1))


def assert_cube(source, expected: np.ndarray) -> None:
    """Lazy dask cube with the expected pixels and dtype."""
    assert isinstance(source.cube, da.Array)
    assert source.cube.dtype == expected.dtype
    np.testing.assert_array_equal(source.cube.compute(), expected)


# --- ENVI -------------------------------------------------------------------------------

def write_envi(tmp_path, img, interleave, name="scene", **extra):
    """ENVI image through spectral, with µm wavelengths and map info; returns the .hdr path."""
    hdr = tmp_path / f"{name}.hdr"
    metadata = {"wavelength": [0.45, 0.55, 0.65, 0.85], "wavelength units": "Micrometers",
                "data ignore value": -9999, "map info": MAP_INFO, **extra}
    spy_envi.save_image(str(hdr), img, interleave=interleave, metadata=metadata, ext=".img")
    return hdr


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_interleaves_round_trip(tmp_path, interleave):
    img = image(np.int16)
    hdr = write_envi(tmp_path, img, interleave)
    for path in (hdr, tmp_path / "scene.img"):
        s = read_envi(path)
        assert_cube(s, as_cube(img))
        np.testing.assert_allclose(s.wavelength, [450, 550, 650, 850])
        assert s.wavelength.dtype == np.float64
        assert s.nodata == -9999
        assert CRS.from_wkt(s.crs).to_epsg() == 32633
        assert s.transform.almost_equals(TRANSFORM)
        assert s.ground_truth is None


def test_envi_hand_written_big_endian_uint16_with_offset(tmp_path):
    img = image(np.uint16)
    data = tmp_path / "raw.bip"
    data.write_bytes(b"\0" * 16 + img.astype(">u2").tobytes())  # bip = (rows, cols, bands)
    (tmp_path / "raw.hdr").write_text(
        "ENVI\nsamples = 5\nlines = 7\nbands = 4\nheader offset = 16\nfile type = ENVI Standard\n"
        "data type = 12\ninterleave = bip\nbyte order = 1\n"
        "wavelength = {450.5, 551, 652, 853}\n")
    s = read_scene(data)
    assert_cube(s, as_cube(img))
    np.testing.assert_allclose(s.wavelength, [450.5, 551, 652, 853])  # nm kept (no units)
    assert s.crs is None and s.transform is None and s.nodata is None


def test_envi_without_wavelength_or_georeference(tmp_path):
    hdr = tmp_path / "plain.hdr"
    spy_envi.save_image(str(hdr), image(np.float32), interleave="bsq", ext=".dat")
    s = read_scene(hdr)
    assert s.wavelength is None and s.crs is None and s.transform is None
    assert s.cube.dtype == np.float32


def test_envi_bad_inputs(tmp_path):
    hdr = write_envi(tmp_path, image(), "bsq")
    with pytest.raises(InputError, match="wavelengths for 4 bands"):
        read_envi(write_envi(tmp_path, image(), "bsq", name="bad_wl", wavelength=[1, 2]))
    (tmp_path / "scene.img").unlink()
    with pytest.raises(InputError, match="no data file"):
        read_envi(hdr)
    lonely = tmp_path / "lonely.img"
    lonely.write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match="no ENVI header"):
        read_envi(lonely)
    (tmp_path / "junk.hdr").write_text("not a header\n")
    (tmp_path / "junk.img").write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match="cannot read ENVI header"):
        read_scene(tmp_path / "junk.hdr")


# --- GeoTIFF ----------------------------------------------------------------------------

def write_tiff(path, cube, *, tags=None, band_tags=None, descriptions=None, nodata=0):
    """(band, y, x) cube as a GeoTIFF in UTM 33N."""
    with rasterio.open(path, "w", driver="GTiff", width=cube.shape[2], height=cube.shape[1],
                       count=cube.shape[0], dtype=cube.dtype, crs=UTM33, transform=TRANSFORM,
                       nodata=nodata) as dst:
        dst.write(cube)
        dst.update_tags(**(tags or {}))
        for i in range(cube.shape[0]):
            if band_tags:
                dst.update_tags(i + 1, **band_tags[i])
            if descriptions:
                dst.set_band_description(i + 1, descriptions[i])
    return path


def test_geotiff_round_trip_keeps_crs_transform_nodata(tmp_path):
    cube = as_cube(image(np.uint16))
    path = write_tiff(tmp_path / "s.tif", cube, nodata=0,
                      band_tags=[{"wavelength": w, "wavelength_units": "nm"}
                                 for w in (450, 550, 650, 850)])
    s = read_geotiff(path)
    assert_cube(s, cube)
    assert CRS.from_wkt(s.crs) == UTM33
    assert s.transform == TRANSFORM
    assert s.nodata == 0
    np.testing.assert_allclose(s.wavelength, [450, 550, 650, 850])
    lazy = pickle.loads(pickle.dumps(s.cube))  # the lazy graph travels to workers
    np.testing.assert_array_equal(lazy.compute(scheduler="threads"), cube)


def test_geotiff_wavelengths_from_dataset_tag_and_descriptions(tmp_path):
    cube = as_cube(image(np.int16))
    tags = {"wavelength": "{0.45, 0.55, 0.65, 0.85}"}
    s = read_scene(write_tiff(tmp_path / "a.tiff", cube, tags=tags))
    np.testing.assert_allclose(s.wavelength, [450, 550, 650, 850])
    s = read_scene(write_tiff(tmp_path / "b.tif", cube, descriptions=["451", "552", "653", "854"]))
    np.testing.assert_allclose(s.wavelength, [451, 552, 653, 854])
    for i, names in enumerate((["B1", "B2", "B3", "B4"], ["1", "2", "3", "4"])):
        s = read_scene(write_tiff(tmp_path / f"c{i}.tif", cube, descriptions=names))
        assert s.wavelength is None


def test_geotiff_bad_inputs(tmp_path):
    single = write_tiff(tmp_path / "one.tif", as_cube(image())[:1])
    with pytest.raises(InputError, match="single-band"):
        read_scene(single)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(InputError, match="cannot read GeoTIFF"):
        read_scene(junk)
    with pytest.raises(InputError, match="--cube-key"):
        read_scene(write_tiff(tmp_path / "ok.tif", as_cube(image())), cube_key="data")


# --- NetCDF -----------------------------------------------------------------------------

def write_emit(path, refl):
    """EMIT-like file: reflectance(downtrack, crosstrack, bands), band group, location group."""
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in zip(("downtrack", "crosstrack", "bands"), refl.shape):
            nc.createDimension(name, size)
        v = nc.createVariable("reflectance", "f4", ("downtrack", "crosstrack", "bands"),
                              fill_value=-9999.0)
        v[:] = refl
        g = nc.createGroup("sensor_band_parameters")
        w = g.createVariable("wavelengths", "f4", ("bands",))
        w[:] = [450.0, 550.0, 650.0, 850.0]
        w.units = "nm"
        g.createVariable("fwhm", "f4", ("bands",))[:] = 8.0
        loc = nc.createGroup("location")
        loc.createVariable("lat", "f8", ("downtrack", "crosstrack"))[:] = 40.0
    return path


def test_netcdf_emit_style(tmp_path):
    refl = (image(np.float32) / 3000).astype(np.float32)
    refl[2, 3, :] = -9999.0
    s = read_netcdf(write_emit(tmp_path / "emit.nc", refl))
    assert_cube(s, as_cube(refl))
    assert s.nodata == -9999.0
    np.testing.assert_allclose(s.wavelength, [450, 550, 650, 850])
    assert s.ground_truth is None and s.crs is None
    cube = pickle.loads(pickle.dumps(s.cube))  # the lazy graph travels to workers
    np.testing.assert_array_equal(cube.compute(scheduler="threads"), as_cube(refl))


@pytest.mark.parametrize("suffix", [".nc", ".h5"])
def test_netcdf_generic_int16_with_gt_and_um_wavelength(tmp_path, suffix):
    img = image(np.int16)
    gt = np.zeros((ROWS, COLS), np.uint8)
    gt[1, 2] = 1
    path = tmp_path / f"generic{suffix}"
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("y", ROWS), ("x", COLS), ("wavelength", BANDS)):
            nc.createDimension(name, size)
        nc.createVariable("radiance", "i2", ("y", "x", "wavelength"), fill_value=-1)[:] = img
        w = nc.createVariable("wavelength", "f8", ("wavelength",))
        w[:] = [0.45, 0.55, 0.65, 0.85]
        w.units = "micrometers"
        nc.createVariable("GT", "u1", ("x", "y"))[:] = gt.T
    s = read_scene(path)
    assert_cube(s, as_cube(img))
    np.testing.assert_allclose(s.wavelength, [450, 550, 650, 850])
    np.testing.assert_array_equal(s.ground_truth, gt)
    assert s.nodata == -1


def test_netcdf_named_x_y_dims_are_reordered(tmp_path):
    img = image(np.float32)
    path = tmp_path / "xy.nc"
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("band", BANDS), ("x", COLS), ("y", ROWS)):
            nc.createDimension(name, size)
        nc.createVariable("cube", "f4", ("band", "x", "y"))[:] = np.transpose(img, (2, 1, 0))
        nc.createVariable("band", "i4", ("band",))[:] = np.arange(1, BANDS + 1)  # band numbers
    s = read_netcdf(path)
    assert_cube(s, as_cube(img))
    assert s.wavelength is None


def test_netcdf_cf_grid_mapping_gives_crs_and_transform(tmp_path):
    img = image(np.float32)
    path = tmp_path / "utm.nc"
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("y", ROWS), ("x", COLS), ("band", BANDS)):
            nc.createDimension(name, size)
        nc.createVariable("y", "f8", ("y",))[:] = 4100000.0 - 15 - 30 * np.arange(ROWS)
        nc.createVariable("x", "f8", ("x",))[:] = 500000.0 + 15 + 30 * np.arange(COLS)
        nc.createVariable("spatial_ref", "i4").crs_wkt = UTM33.to_wkt()
        v = nc.createVariable("cube", "f4", ("y", "x", "band"))
        v[:] = img
        v.grid_mapping = "spatial_ref"
    s = read_netcdf(path)
    assert_cube(s, as_cube(img))
    assert CRS.from_wkt(s.crs) == UTM33
    assert s.transform.almost_equals(TRANSFORM)


def test_netcdf_bad_inputs(tmp_path):
    path = tmp_path / "two.nc"
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("y", ROWS), ("x", COLS), ("band", BANDS)):
            nc.createDimension(name, size)
        nc.createVariable("a", "f4", ("y", "x", "band"))[:] = 0
        nc.createVariable("b", "f4", ("y", "x", "band"))[:] = 0
        nc.createVariable("flat", "f4", ("y", "x"))[:] = 0
        nc.createVariable("gt", "u1", ("x",))[:] = 0
    with pytest.raises(InputError, match="several 3-D"):
        read_netcdf(path)
    assert read_netcdf(path, cube_key="b").cube.shape == (BANDS, ROWS, COLS)
    with pytest.raises(InputError, match="'nope' not found"):
        read_netcdf(path, cube_key="nope")
    with pytest.raises(InputError, match="single-band"):
        read_netcdf(path, cube_key="flat")
    with pytest.raises(InputError, match="ground truth 'gt'"):
        read_netcdf(path, cube_key="a", gt_key="gt")
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(InputError, match="cannot read"):
        read_scene(junk)


# --- MATLAB -----------------------------------------------------------------------------

def write_mat73(path, variables: dict):
    """MATLAB v7.3 file: HDF5 with a 512-byte MATLAB user block, arrays stored transposed."""
    classes = {np.dtype(np.int16): "int16", np.dtype(np.uint16): "uint16",
               np.dtype(np.float32): "single", np.dtype(np.float64): "double",
               np.dtype(np.uint8): "uint8"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            ds = f.create_dataset(name, data=np.asarray(value).T, chunks=True)  # column-major
            ds.attrs["MATLAB_class"] = np.bytes_(classes[np.asarray(value).dtype])
        f.create_dataset("label", data=np.frombuffer(b"abc", np.uint8).astype(np.uint16).T
                         ).attrs["MATLAB_class"] = np.bytes_("char")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ")
    with open(path, "r+b") as f:
        f.write(header + b"\0" * 8 + b"\x00\x02IM")
    return path


def test_mat_v5_auto_keys_and_dtype(tmp_path):
    img, gt = image(np.uint16), np.zeros((ROWS, COLS), np.uint8)
    gt[6, 4] = gt[0, 1] = 1
    path = tmp_path / "v5.mat"
    scipy.io.savemat(path, {"data": img, "map": gt, "wl": np.array([[0.45, 0.55, 0.65, 0.85]])})
    s = read_mat(path)
    assert_cube(s, as_cube(img))
    np.testing.assert_array_equal(s.ground_truth, gt)
    np.testing.assert_allclose(s.wavelength, [450, 550, 650, 850])
    assert (s.attrs["cube_key"], s.attrs["gt_key"]) == ("data", "map")


def test_mat_v5_unusual_names(tmp_path):
    img, gt = image(np.int16), np.eye(ROWS, COLS, dtype=bool)
    path = tmp_path / "odd.mat"
    scipy.io.savemat(path, {"Salinas_corrected": img, "small": img[:2, :2], "HSI_GT": gt,
                            "other": np.ones((ROWS, COLS))})
    with pytest.raises(InputError, match=r"several 3-D variables .*--cube-key"):
        read_mat(path)  # two candidate cubes: picking one would be a guess
    s = read_mat(path, cube_key="Salinas_corrected")
    assert (s.attrs["cube_key"], s.attrs["gt_key"]) == ("Salinas_corrected", "HSI_GT")
    assert_cube(s, as_cube(img))
    np.testing.assert_array_equal(s.ground_truth != 0, gt)


@pytest.mark.parametrize("materialize", [False, True])
def test_mat_v73_lazy_orientation_and_pickle(tmp_path, materialize):
    img, gt = image(np.int16), np.zeros((ROWS, COLS), np.uint8)
    gt[6, 0] = 1
    path = write_mat73(tmp_path / "v73.mat", {"hsi": img, "groundtruth": gt})
    s = read_mat(path, materialize=materialize)
    assert s.attrs["mat_version"] == "7.3" and s.attrs["gt_key"] == "groundtruth"
    assert_cube(s, as_cube(img))
    np.testing.assert_array_equal(s.ground_truth, gt)
    cube = pickle.loads(pickle.dumps(s.cube))
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(cube[:, 2:6, 1:4].compute(), as_cube(img)[:, 2:6, 1:4])
    assert read_scene(path.rename(tmp_path / "v73.h5")).attrs["format"] == "mat"  # by magic


def test_mat_bad_inputs(tmp_path):
    img = image()
    path = tmp_path / "s.mat"
    scipy.io.savemat(path, {"data": img, "map": np.zeros((ROWS, COLS)),
                            "wrong": np.zeros((COLS, ROWS))})
    with pytest.raises(InputError, match=r"'cube' not found .*data \(7, 5, 4\)"):
        read_mat(path, cube_key="cube")
    with pytest.raises(InputError, match="'nope' not found"):
        read_mat(path, gt_key="nope")
    with pytest.raises(InputError, match=r"'wrong' .* expected \(rows, cols\) = \(7, 5\)"):
        read_scene(path, gt_key="wrong")
    with pytest.raises(InputError, match="single-band"):
        read_mat(path, cube_key="map")
    flat = tmp_path / "flat.mat"
    scipy.io.savemat(flat, {"image": np.zeros((ROWS, COLS))})
    with pytest.raises(InputError, match="no 3-D"):
        read_scene(flat)
    for name, content in (("junk.mat", b"not a mat file at all" * 10), ("empty.mat", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match="cannot read MATLAB"):
            read_scene(tmp_path / name)
    v73 = write_mat73(tmp_path / "v73.mat", {"data": img})
    with pytest.raises(InputError, match="'map' not found"):
        read_mat(v73, gt_key="map")


# --- dispatch ---------------------------------------------------------------------------

def test_dispatch_bad_paths(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_scene(tmp_path / "missing.mat")
    with pytest.raises(InputError, match="not a file"):
        read_scene(tmp_path)
    other = tmp_path / "scene.xyz"
    other.write_bytes(b"hello world")
    with pytest.raises(InputError, match="unknown format"):
        read_scene(other)


def test_dispatch_netcdf_by_magic(tmp_path):
    refl = image(np.float32)
    path = write_emit(tmp_path / "granule.nc", refl).rename(tmp_path / "granule.bin")
    assert_cube(read_scene(path), as_cube(refl))


def test_dispatch_separate_ground_truth(tmp_path):
    img, gt = image(), np.zeros((ROWS, COLS), np.uint8)
    gt[3, 3] = 1
    scene = tmp_path / "s.mat"
    scipy.io.savemat(scene, {"data": img, "map": np.zeros((ROWS, COLS))})
    np.save(tmp_path / "gt.npy", gt)
    scipy.io.savemat(tmp_path / "gt.mat", {"truth": gt, "wl": np.ones((1, 4))})
    write_tiff(tmp_path / "gt.tif", gt[None])
    for gt_file in ("gt.npy", "gt.mat", "gt.tif"):
        s = read_scene(scene, gt_path=tmp_path / gt_file)
        np.testing.assert_array_equal(s.ground_truth, gt)
    np.save(tmp_path / "bad.npy", gt.T)
    with pytest.raises(InputError, match=r"\(5, 7\) matches no spatial layout .* = \(7, 5\)"):
        read_scene(scene, gt_path=tmp_path / "bad.npy")
    write_tiff(tmp_path / "multi.tif", np.stack([gt, gt]))
    with pytest.raises(InputError, match="2 bands"):
        read_scene(scene, gt_path=tmp_path / "multi.tif")
    with pytest.raises(InputError, match="not found"):
        read_scene(scene, gt_path=tmp_path / "nope.npy")


@pytest.mark.parametrize(("values", "units", "nm"), [
    ([0.4, 2.5], "Micrometers", [400, 2500]), ([0.4, 2.5], None, [400, 2500]),
    ([400, 2500], "Unknown", None), ([400, 2500], "nanometers", [400, 2500]),  # only nm/µm units
    ([10000, 4000], "Wavenumber", [1000, 2500]), ([1, 2], "Index", None),
    ([1, 2, 3], None, None), ([0, 1, 2], "", None),  # band numbers, not wavelengths
])
def test_wavelength_units(values, units, nm):
    w = wavelength_nm(values, units)
    assert w is None if nm is None else np.allclose(w, nm)


# --- real scenes ------------------------------------------------------------------------

def test_real_scenes_keys_shapes_and_anomalies(had_dir, manifest):
    assert manifest
    for row in manifest:
        s = read_mat(had_dir / row["file"])
        shape = (int(row["bands"]), int(row["height"]), int(row["width"]))
        keys = (s.attrs["cube_key"], s.attrs["gt_key"])
        assert keys == (row["cube_key"], row["gt_key"]), row["name"]
        assert s.cube.shape == shape and str(s.cube.dtype) == row["dtype"], row["name"]
        assert s.ground_truth.shape == shape[1:], row["name"]
        assert np.count_nonzero(s.ground_truth) == int(row["anomaly_pixels"]), row["name"]
