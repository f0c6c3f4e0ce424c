"""Ingest into cube stores: round trips from files the tests write, dtype conversion, nodata,
orientation, chunking and the contract of the store."""

import numpy as np
import pytest
import rasterio
import xarray as xr

from hsad_scale import cube as cubes
from hsad_scale.errors import InputError
from test_readers import MAP_INFO, TRANSFORM, as_cube, image, write_emit, write_envi, write_tiff  # noqa: F401


def _store(tmp_path, src, **kw):
    return cubes.open_cube(cubes.ingest(src, tmp_path / "cube.zarr", **kw))


def _assert_contract(ds, shape):
    assert ds[cubes.CUBE].dims == ("band", "y", "x") and ds[cubes.CUBE].shape == shape
    assert ds[cubes.CUBE].dtype == np.float32
    assert ds[cubes.CUBE].data.chunksize[0] == shape[0]  # whole band axis in one chunk


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_round_trip_with_wavelength_and_georeference(tmp_path, interleave):
    img = image(np.int16)
    ds = _store(tmp_path, write_envi(tmp_path, img, interleave), chunk=3)
    _assert_contract(ds, as_cube(img).shape)
    np.testing.assert_array_equal(ds[cubes.CUBE].values, as_cube(img).astype(np.float32))
    np.testing.assert_allclose(ds["wavelength"].values, [450, 550, 650, 850])
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.rio.transform() == TRANSFORM


def test_geotiff_round_trip_keeps_crs_transform_and_masks_nodata(tmp_path):
    cube = as_cube(image(np.uint16))
    cube[:, 2, 3] = 0  # the nodata value in every band: an invalid pixel
    ds = _store(tmp_path, write_tiff(tmp_path / "s.tif", cube, nodata=0), chunk=4)
    _assert_contract(ds, cube.shape)
    assert ds.rio.crs.to_epsg() == 32633 and ds.rio.transform() == TRANSFORM
    values = ds[cubes.CUBE].values
    assert np.isnan(values[:, 2, 3]).all()
    keep = np.ones(cube.shape[1:], bool)
    keep[2, 3] = False
    np.testing.assert_array_equal(values[:, keep], cube[:, keep].astype(np.float32))
    # pixel centres in map coordinates
    assert ds.x.values[0] == pytest.approx(500000.0 + 15.0) and ds.y.values[0] == pytest.approx(4100000.0 - 15.0)


def test_netcdf_round_trip_emit_style(tmp_path):
    refl = (image(np.float32) / 3000).astype(np.float32)
    refl[1, 1, 2] = -9999.0  # fill value in one band invalidates the pixel
    ds = _store(tmp_path, write_emit(tmp_path / "emit.nc", refl))
    _assert_contract(ds, as_cube(refl).shape)
    values = ds[cubes.CUBE].values
    assert np.isnan(values[:, 1, 1]).all()
    np.testing.assert_array_equal(values[:, 0, :], as_cube(refl)[:, 0, :])
    np.testing.assert_allclose(ds["wavelength"].values, [450, 550, 650, 850])


def test_integer_extremes_convert_without_overflow(tmp_path):
    img = image(np.uint16)
    img[0, 0, :] = 65535
    img[0, 1, :] = 0
    src = tmp_path / "s.tif"
    write_tiff(src, as_cube(img), nodata=None)
    ds = _store(tmp_path, src)
    np.testing.assert_array_equal(ds[cubes.CUBE].values[:, 0, 0], 65535.0)
    np.testing.assert_array_equal(ds[cubes.CUBE].values[:, 0, 1], 0.0)
    img16 = image(np.int16)
    img16[3, 3, :] = -32768
    src16 = tmp_path / "t.tif"
    write_tiff(src16, as_cube(img16), nodata=None)
    ds16 = cubes.open_cube(cubes.ingest(src16, tmp_path / "t.zarr"))
    np.testing.assert_array_equal(ds16[cubes.CUBE].values[:, 3, 3], -32768.0)


def test_real_mat_scene_keeps_orientation_and_ground_truth(had_dir, manifest, tmp_path):
    from conftest import load_mat_scene

    for name in ("abu-beach-1", "muufl-100x100"):  # int16 v5 and float32 v7.3 (HDF5)
        row = next(r for r in manifest if r["name"] == name)
        ds = cubes.open_cube(cubes.ingest(had_dir / row["file"], tmp_path / f"{name}.zarr", chunk=64))
        cube, truth = load_mat_scene(had_dir, row)
        np.testing.assert_array_equal(ds[cubes.CUBE].values[:, 10, 37], cube[10, 37, :].astype(np.float32))
        np.testing.assert_array_equal(ds[cubes.GROUND_TRUTH].values, (truth > 0).astype(np.uint8))
        assert int(ds[cubes.GROUND_TRUTH].sum()) == int(row["anomaly_pixels"])


def test_separate_ground_truth_and_overwrite_rules(tmp_path):
    cube = as_cube(image(np.int16))
    src = write_tiff(tmp_path / "s.tif", cube, nodata=None)
    gt = np.zeros(cube.shape[1:], np.uint8)
    gt[1, 2] = 1
    np.save(tmp_path / "gt.npy", gt)
    ds = _store(tmp_path, src, gt=tmp_path / "gt.npy")
    np.testing.assert_array_equal(ds[cubes.GROUND_TRUTH].values, gt)
    with pytest.raises(InputError, match="exists"):
        cubes.ingest(src, tmp_path / "cube.zarr")
    cubes.ingest(src, tmp_path / "cube.zarr", overwrite=True)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2)))
    with pytest.raises(InputError, match="shape"):
        cubes.ingest(src, tmp_path / "other.zarr", gt=tmp_path / "bad.npy")
    assert not (tmp_path / "other.zarr").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_compression_choice_is_written_and_read_back(tmp_path):
    src = write_tiff(tmp_path / "s.tif", as_cube(image(np.int16)), nodata=None)
    for codec in ("zstd", "lz4"):
        ds = cubes.open_cube(cubes.ingest(src, tmp_path / f"{codec}.zarr", compression=codec))
        np.testing.assert_array_equal(ds[cubes.CUBE].values, as_cube(image(np.int16)).astype(np.float32))
    with pytest.raises(InputError, match="compression"):
        cubes.ingest(src, tmp_path / "x.zarr", compression="gzip9")


def test_open_cube_rejects_what_is_not_a_cube_store(tmp_path):
    xr.Dataset({"other": (("y", "x"), np.zeros((2, 2)))}).to_zarr(tmp_path / "x.zarr")
    with pytest.raises(InputError, match="no 'cube'"):
        cubes.open_cube(tmp_path / "x.zarr")
    with pytest.raises(InputError, match="does not exist"):
        cubes.open_cube(tmp_path / "missing.zarr")
