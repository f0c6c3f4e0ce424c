"""What the ingest checks cost: the band survey (one pass over the source to find bands that
hold only nodata, and the valid pixels) against the whole ingest (survey + write), each in a
fresh process so that peak memory is its own.

    python benchmarks/ingest_survey.py --size 2048 --bands 100

Writes a random int16 ENVI BSQ image of SIZE x SIZE x BANDS into a temporary folder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import resource, sys, time
from hsad_scale import cube as cubes
from hsad_scale.readers.dispatch import read_scene
start = time.perf_counter()
if sys.argv[1] == "survey":
    cubes.band_survey(read_scene(sys.argv[2]))
else:
    cubes.ingest(sys.argv[2], sys.argv[3], overwrite=True)
print(f"{time.perf_counter() - start:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f}")
"""


def write_envi(folder: Path, size: int, bands: int) -> Path:
    """A random int16 BSQ image written band by band (bounded memory)."""
    rng = np.random.default_rng(0)
    data = folder / "scene.img"
    with open(data, "wb") as f:
        for _ in range(bands):
            rng.integers(0, 4000, (size, size), dtype=np.int16).astype("<i2").tofile(f)
    (folder / "scene.hdr").write_text(
        f"ENVI\nsamples = {size}\nlines = {size}\nbands = {bands}\nheader offset = 0\n"
        f"file type = ENVI Standard\ndata type = 2\ninterleave = bsq\nbyte order = 0\n"
        f"data ignore value = -9999\n")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--bands", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_envi(Path(tmp), args.size, args.bands)
        mb = data.stat().st_size / 1e6
        for mode in ("survey", "ingest"):
            out = subprocess.run([sys.executable, "-c", MEASURE, mode, str(data), str(Path(tmp) / "c.zarr")],
                                 capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
            print(f"{mode:<7} {args.size}x{args.size}x{args.bands} int16 ({mb:.0f} MB): "
                  f"{float(out[0]):.2f} s, peak RSS {float(out[1]):.2f} GB")


if __name__ == "__main__":
    main()
