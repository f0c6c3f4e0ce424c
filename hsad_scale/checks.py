"""Checks of a detect run's input made before any cluster starts (and before PyTorch loads):
options, the scheduler address, AE/VAE metrics, network sizes against this machine's memory,
and saved models (``model.json``, the safetensors header, band counts) read without running
any code. Every failure is an :class:`InputError` (exit 2, one line)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from hsad_scale.errors import InputError
from hsad_scale.names import LEARNED_METHODS

#: ``[protocol://]host:port`` of a Dask scheduler (distributed's address syntax).
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx|inproc)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
#: Largest safetensors header read (the real ones are a few kB).
_MAX_HEADER = 16 * 2**20


def check_dask_address(address: str | None) -> None:
    """``address`` (``--dask-address`` / ``HSAD_DASK_ADDRESS``) is None, empty or a scheduler
    address ``[tcp://]HOST:PORT``."""
    if not address:
        return
    match = _ADDRESS.match(address.strip())
    if not match or not 0 < int(match.group(1)) < 65536:
        raise InputError(f"--dask-address {address!r} is not a scheduler address (expected tcp://HOST:PORT)")


def check_listen_address(address: str, option: str) -> None:
    """``address`` is ``[HOST]:PORT`` (a port of 0: any free one)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or any(c.isspace() or c == "/" for c in host):
        raise InputError(f"{option} {address!r} is not HOST:PORT")


def check_metrics(method: str, metrics: tuple | None) -> None:
    """``--metric`` names are scores of ``method`` (AE: resid-mahal, mse, sam, l1, latent-mahal,
    joint-mahal; VAE the same set); RX has one score and takes none."""
    if not metrics:
        return
    if method not in LEARNED_METHODS:
        raise InputError(f"--metric applies to the AE/VAE; {method.upper()} has one score")
    from hsad_scale.detectors.ae_config import AE_METRICS, VAE_METRICS

    allowed = VAE_METRICS if method == "vae" else AE_METRICS
    for metric in metrics:
        if metric not in allowed:
            raise InputError(f"unknown --metric {metric!r} for the {method.upper()}; choose from {', '.join(allowed)}")


def check_scene_size(height: int, width: int) -> None:
    """A scene needs at least two pixels: one pixel has no background to compare with."""
    if height * width < 2:
        raise InputError(f"the scene is {height} x {width} pixel(s): anomaly detection needs at least two pixels")


def network_parameters(config, bands: int) -> int:
    """Weights and biases of an AE/VAE of ``config`` on ``bands`` bands, all members together
    (the layout of :class:`hsad_scale.detectors.autoencoder.AENet`)."""
    hidden = list(config.hidden_widths(bands))

    def mlp(widths: list[int]) -> int:
        return sum(a * b + b for a, b in zip(widths, widths[1:]))

    if config.kind == "vae":
        top = ([bands, *hidden])[-1]
        encoder = mlp([bands, *hidden]) + 2 * (top * config.latent + config.latent)
    else:
        encoder = mlp([bands, *hidden, config.latent])
    return config.members * (encoder + mlp([config.latent, *hidden[::-1], bands]))


def network_bytes(config, bands: int) -> int:
    """Memory one training or scoring task needs for the network, at least: weights, gradients
    and Adam's two moments (float32), and activations of a training batch and of a scoring
    batch (:data:`~hsad_scale.detectors.ae_config.INFERENCE_BATCH` pixels) in every layer."""
    from hsad_scale.detectors.ae_config import INFERENCE_BATCH

    widths = [bands, *config.hidden_widths(bands), config.latent]
    activations = 2 * sum(widths) * config.members * (config.batch_size + INFERENCE_BATCH)
    return 4 * (4 * network_parameters(config, bands) + activations)


def available_memory() -> int:
    """Bytes of memory available on this machine now."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_network_fits(config, bands: int, what: str = "the network") -> None:
    """InputError when ``config``'s network on ``bands`` bands needs more memory than this
    machine has available: refused before PyTorch tries to allocate it."""
    need, have = network_bytes(config, bands), available_memory()
    if need > have:
        widths = "-".join(map(str, [bands, *config.hidden_widths(bands), config.latent]))
        raise InputError(f"{what} ({widths}, {config.members} member(s), {network_parameters(config, bands):,} "
                         f"parameters) needs at least {need / 2**30:,.1f} GiB, more than the "
                         f"{have / 2**30:.1f} GiB available")


def saved_model_folders(path: str | Path) -> list[Path]:
    """The AE/VAE model folders (``model.json``) of ``path``: one model folder, a folder of
    ``run-*/`` ones (``RUN_DIR/model``) or a run folder; [] when there is none."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "model.json").is_file():
            return [candidate]
        runs = sorted(candidate.glob("run-*/model.json"), key=lambda p: _run_number(p.parent.name))
        if runs:
            return [p.parent for p in runs]
    return []


def _run_number(name: str) -> int:
    suffix = name.split("-", 1)[1]
    return int(suffix) if suffix.isdigit() else -1


def saved_method(path: str | Path) -> str:
    """The detector a saved model is for (the lookup of :mod:`hsad_scale.detectors.saved`:
    ``detector.json``, ``rx_stats.npz``, or the ``kind`` in an AE/VAE ``model.json``)."""
    from hsad_scale.detectors.saved import model_folder

    folder, method, _ = model_folder(path)
    if method in LEARNED_METHODS:  # the model.json read again, strictly
        for model_json in [folder / "model.json", *sorted(folder.glob("run-*/model.json"))][:1]:
            if model_json.is_file():
                read_model_json(model_json)
    return method


def read_model_json(path: Path) -> dict:
    """A saved model's ``model.json`` (format, band count, settings), checked: InputError
    when it is not one."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not a saved hsad model ({type(exc).__name__})") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("config"), dict)
            and isinstance(meta["config"].get("kind"), str)):
        raise InputError(f"{path} is not a saved hsad model (no config with a kind)")
    return meta


def safetensors_header(path: Path) -> dict:
    """The tensors (name -> dtype, shape, data offsets) listed in a safetensors file's JSON
    header, checked against the file's size; nothing else of the file is read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if not 2 <= length <= min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {length}")
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not a safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        try:
            start, stop = entry["data_offsets"]
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {name!r} is not described properly") from None
        end = max(end, int(stop))
        if int(stop) - int(start) != 4 * count and entry.get("dtype") == "F32":
            raise InputError(f"{path}: tensor {name!r} has {int(stop) - int(start)} bytes for shape {entry['shape']}")
    if end != size - 8 - length:
        raise InputError(f"{path} is truncated or padded ({size} bytes, its header describes {8 + length + end})")
    return header


def check_saved_model(path: str | Path, bands: int) -> None:
    """A saved model (``--model``) fits a cube of ``bands`` bands and this machine's memory,
    read without loading PyTorch or running code: RX statistics' band count; every AE/VAE
    model folder's ``model.json`` (format, settings, band count) and ``model.safetensors``
    (present, header consistent, as many parameters as the settings give)."""
    from hsad_scale.detectors.ae_config import FORMAT_VERSION, config_from_dict

    method = saved_method(path)
    if method == "rx":
        return check_rx_stats(path, bands)
    if method not in LEARNED_METHODS:  # the other statistical detectors: their saved statistics
        from hsad_scale.detectors.saved import load_detector
        from hsad_scale.fitting import check_bands

        return check_bands(load_detector(path, method), _Shape(bands))
    for folder in saved_model_folders(path):
        meta = read_model_json(folder / "model.json")
        if meta.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{folder / 'model.json'}: unsupported model format {meta.get('format_version')!r}")
        try:
            config = config_from_dict(meta["config"])
            saved_bands = int(meta["bands"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{folder / 'model.json'} holds invalid settings: {str(exc).splitlines()[0]}") from None
        if saved_bands != bands:
            raise InputError(f"the saved model {folder} is for {saved_bands} bands, the cube has {bands}")
        check_network_fits(config, bands, what=f"the saved model {folder}")
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise InputError(f"the saved model {folder} has no weights (model.safetensors is missing)")
        header = safetensors_header(weights)
        count = 0
        for entry in header.values():
            n = 1
            for dim in entry["shape"]:
                n *= int(dim)
            count += n
        if count != network_parameters(config, bands):
            raise InputError(f"the weights in {weights} ({count:,} values) do not match its model.json "
                             f"({network_parameters(config, bands):,} parameters)")


def check_rx_stats(path: str | Path, bands: int) -> None:
    """Saved RX statistics (``rx_stats.npz``) hold ``bands`` features."""
    from hsad_scale.stats import BackgroundStats

    path = Path(path)
    found = [c for c in (path, path / "rx_stats.npz", path / "model" / "rx_stats.npz") if c.is_file()]
    if not found:
        raise InputError(f"no RX statistics (rx_stats.npz) found in {path}")
    try:
        stats = BackgroundStats.load(found[0])
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise InputError(f"{found[0]} holds no RX statistics: {exc}") from None
    if stats.n_features != bands:
        raise InputError(f"saved statistics have {stats.n_features} bands, the cube has {bands}")


class _Shape:
    """What :func:`hsad_scale.fitting.check_bands` reads of a cube: its band count."""

    def __init__(self, bands: int):
        self.sizes = {"band": bands}


def cube_store_shape(path: str | Path) -> tuple[int, ...] | None:
    """Shape ``(band, y, x)`` of a cube store's ``cube`` from its metadata (no data read);
    None when ``path`` is no Zarr v3 cube store."""
    try:
        shape = json.loads(Path(path, "cube", "zarr.json").read_text())["shape"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tuple(int(n) for n in shape) if isinstance(shape, list) and len(shape) == 3 else None


def check_detect_inputs(method: str, metrics: tuple | None, config, model: str | None, shape) -> None:
    """What needs the cube's shape ``(band, y, x)``: the scene's size, the AE/VAE network
    (``config``, None for RX or a saved model) against memory, a saved ``model`` against the
    band count."""
    bands, height, width = shape
    check_scene_size(height, width)
    check_metrics(method, metrics)
    if config is not None:
        check_network_fits(config, bands)
    if model:
        check_saved_model(model, bands)

