"""The cube's tile reader: raw chunk files where the store allows, zarr-python elsewhere;
the same values as zarr-python in every case (edge chunks, unwritten chunks, codecs)."""

import mmap
import pickle

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from hsad_scale import cube as cubes
from hsad_scale.chunk_reader import ChunkReader, zarr_dask_array


def _store(tmp_path, compression="none", shape=(5, 37, 23), chunk=(5, 16, 8), skip_chunk=None):
    values = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    path = tmp_path / f"s-{compression}.zarr"
    group = zarr.open_group(path, mode="w")
    arr = group.create_array("cube", shape=shape, chunks=chunk, dtype="float32", fill_value=np.nan,
                             compressors=cubes._compressors(compression), dimension_names=("band", "y", "x"))
    arr[...] = values
    if skip_chunk is not None:  # a chunk never written: reads as the fill value
        (path / "cube" / arr.metadata.encode_chunk_key(skip_chunk)).unlink()
        values[tuple(slice(i * c, (i + 1) * c) for i, c in zip(skip_chunk, chunk))] = np.nan
    return path, values


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_dask_array_equals_zarr_with_edge_chunks(tmp_path, compression):
    path, values = _store(tmp_path, compression)
    reader = ChunkReader(path, "cube")
    assert (reader._raw_root is not None) == (compression == "none")  # the raw path is taken only where valid
    arr = zarr_dask_array(path, "cube")
    assert arr.chunks == ((5,), (16, 16, 5), (8, 8, 7)) and arr.name.startswith("read-cube-")
    np.testing.assert_array_equal(arr.compute(), values)


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_damaged_chunk_is_refused_naming_it_on_both_paths(tmp_path, compression, damage):
    """A missing, truncated or undecodable chunk file is an InputError naming the chunk, both
    when the store is opened (listing) and when the tile is read (fast path and zarr-python
    path alike): never the fill value, never an internal error."""
    from hsad_scale.errors import InputError

    path, _ = _store(tmp_path, compression)
    reader = ChunkReader(path, "cube")
    chunk = path / "cube" / "c" / "0" / "1" / "2"
    if damage == "missing":
        chunk.unlink()
    elif damage == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:100])
    else:
        chunk.write_bytes(b"\x07" * len(chunk.read_bytes()) if compression == "none" else b"not zstd at all" * 9)
    if damage != "garbage" or compression != "none":  # raw garbage of the right size is undetectable
        with pytest.raises(InputError, match="c/0/1/2"):
            reader[(slice(0, 5), slice(16, 32), slice(16, 23))]  # the damaged (edge) tile
        with pytest.raises(InputError, match="c/0/1/2"):
            reader[(slice(0, 5), slice(10, 30), slice(10, 20))]  # a selection across it: zarr-python
    if damage == "missing" or (damage == "truncated" and compression == "none"):
        with pytest.raises(InputError, match="c/0/1/2"):
            zarr_dask_array(path, "cube")  # found by listing, before any task


def test_worker_raised_chunk_error_reaches_the_client_as_input_error(tmp_path, client):
    """The error type survives the trip from a Dask worker process."""
    from hsad_scale.errors import InputError

    path, _ = _store(tmp_path)
    arr = zarr_dask_array(path, "cube")
    (path / "cube" / "c" / "0" / "0" / "1").unlink()  # after the check: as if lost mid-run
    with pytest.raises(InputError, match="c/0/0/1"):
        client.compute(arr.sum()).result()


def test_unpickled_reader_opens_nothing_until_read(tmp_path):
    """A scheduler that cannot see the data unpacks graphs: unpickling opens no store."""
    path, values = _store(tmp_path)
    data = pickle.dumps(ChunkReader(path, "cube"))
    moved = tmp_path / "elsewhere.zarr"
    path.rename(moved)
    reader = pickle.loads(data)  # the store is not at its path: no error yet
    assert reader._opened is None and reader.shape == values.shape and reader.chunks == (5, 16, 8)
    moved.rename(path)
    np.testing.assert_array_equal(reader[(slice(0, 5), slice(0, 16), slice(0, 8))], values[:, :16, :8])


def test_selections_that_are_not_one_chunk_go_through_zarr(tmp_path):
    path, values = _store(tmp_path)
    reader = ChunkReader(path, "cube")
    for key in [(slice(0, 5), slice(3, 19), slice(0, 8)), (slice(None), slice(None), slice(None)),
                (slice(0, 5), slice(0, 16, 2), slice(0, 8))]:
        assert reader._chunk_index(key) is None
        np.testing.assert_array_equal(reader[key], values[key])
    assert reader._chunk_index((slice(0, 5), slice(32, 37), slice(16, 23))) == (0, 2, 2)


def test_reader_pickles_and_tokenises_by_store(tmp_path):
    path, values = _store(tmp_path)
    reader = pickle.loads(pickle.dumps(ChunkReader(path, "cube")))
    np.testing.assert_array_equal(reader[(slice(0, 5), slice(0, 16), slice(8, 16))], values[:, :16, 8:16])
    assert zarr_dask_array(path, "cube").name == zarr_dask_array(path, "cube").name


def test_open_cube_reads_through_the_reader_and_keeps_metadata(tmp_path):
    path, values = _store(tmp_path)
    ds = cubes.open_cube(path)
    plain = xr.open_zarr(path, consolidated=False)
    assert ds.cube.data.name.startswith("read-cube-")
    assert ds.cube.attrs == plain.cube.attrs and ds.cube.dims == plain.cube.dims
    np.testing.assert_array_equal(ds.cube.values, values)
    assert isinstance(ds.cube.data, da.Array)


def _owner(array):
    """What finally holds an array's memory: an ndarray of its own, or a buffer such as a mapping."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


def test_mapped_tiles_are_private_writable_copies_and_released(tmp_path, monkeypatch):
    """Raw chunks come as writable copy-on-write mappings: writing to a tile never reaches
    the store; mappings are counted while alive, and past the limit tiles are read instead."""
    import gc

    from hsad_scale import chunk_reader

    path, values = _store(tmp_path)
    reader = ChunkReader(path, "cube")
    before = chunk_reader._live_mappings[0]
    tile = reader[(slice(0, 5), slice(0, 16), slice(0, 8))]
    assert chunk_reader._live_mappings[0] == before + 1 and tile.flags.writeable
    assert isinstance(getattr(_owner(tile), "obj", None), mmap.mmap)  # a memoryview of the mapping
    tile[:] = 0.0
    np.testing.assert_array_equal(ChunkReader(path, "cube")[(slice(0, 5), slice(0, 16), slice(0, 8))],
                                  values[:, :16, :8])
    del tile
    gc.collect()
    assert chunk_reader._live_mappings[0] == before
    monkeypatch.setattr(chunk_reader, "MAX_LIVE_MAPPINGS", 0)
    read = reader[(slice(0, 5), slice(16, 32), slice(8, 16))]
    assert chunk_reader._live_mappings[0] == before and isinstance(_owner(read), np.ndarray)
    np.testing.assert_array_equal(read, values[:, 16:32, 8:16])
    np.testing.assert_array_equal(zarr_dask_array(path, "cube").compute(), values)
