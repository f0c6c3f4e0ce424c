"""Which axis of a stored 3-D array is the band axis, decided from evidence.

A cube may be stored ``(rows, cols, bands)`` (MATLAB, ENVI BIP), ``(bands, rows, cols)``
(PyTorch, GDAL) or ``(rows, bands, cols)`` (PRISMA, ENVI BIL). Sizes alone do not tell
(a 100 x 100 crop of a 100-band sensor, a 162 x 80 x 100 array), so the band axis is taken
only from evidence in the file:

- dimension names (NetCDF: ``bands``/``wavelength``, or the two others named like y and x);
- the shape of a 2-D ground truth: the two spatial axes have its shape;
- the length of a wavelength vector: the band axis has its length;
- ``band_axis`` given by the user (``first``, ``middle``, ``last``, 0, 1, 2 or a dim name).

When the evidence is absent or disagrees, InputError asks for ``--band-axis``.
"""

from __future__ import annotations

from hsad_scale.errors import InputError

AXIS_WORDS = {"first": 0, "middle": 1, "last": 2, "0": 0, "1": 1, "2": 2, "-1": 2}


def user_band_axis(band_axis, dims: tuple | None = None) -> int | None:
    """``--band-axis`` as 0, 1 or 2 (None when not given); InputError when not understood."""
    if band_axis is None:
        return None
    text = str(band_axis).strip()
    if text.lower() in AXIS_WORDS:
        return AXIS_WORDS[text.lower()]
    if dims is not None and text in [str(d) for d in dims]:
        return [str(d) for d in dims].index(text)
    names = f", or one of the dims {', '.join(map(str, dims))}" if dims else ""
    raise InputError(f"--band-axis {band_axis!r} not understood: use first, middle, last, 0, 1, 2{names}")


def spatial_shape(shape: tuple, axis: int) -> tuple:
    """The ``(rows, cols)`` sizes left when ``axis`` is the band axis."""
    return tuple(s for i, s in enumerate(shape) if i != axis)


def decide_band_axis(shape: tuple, where: str, *, band_axis: int | None = None,
                     truth_shapes: dict | None = None, wavelength_sizes: dict | None = None,
                     named_axes: dict | None = None) -> tuple[int, str]:
    """``(band axis, the evidence that decided it)`` for a 3-D array of ``shape``.

    ``truth_shapes``: ground-truth candidates ``{name: 2-D shape}``; ``wavelength_sizes``:
    wavelength vectors ``{name: length}``; ``named_axes``: ``{axis: why}`` from dimension
    names. Raises InputError when a ground truth matches no spatial layout, when the
    evidence does not single out one axis, or when ``band_axis`` contradicts a ground truth.
    """
    truth_shapes = truth_shapes or {}
    wavelength_sizes = wavelength_sizes or {}
    named_axes = named_axes or {}
    for name, tshape in truth_shapes.items():
        fits = [a for a in range(3) if spatial_shape(shape, a) == tuple(tshape)]
        if not fits:
            raise InputError(f"{where}: ground truth '{name}' {tuple(tshape)} matches no spatial "
                             f"layout of the cube {tuple(shape)}; expected (rows, cols) = "
                             f"{spatial_shape(shape, 2)} with bands last (pass --gt-key, or --gt "
                             f"with the right file)")
    if band_axis is not None:
        for name, tshape in truth_shapes.items():
            if spatial_shape(shape, band_axis) != tuple(tshape):
                raise InputError(f"{where}: with --band-axis {band_axis} the image is "
                                 f"{spatial_shape(shape, band_axis)}, but ground truth '{name}' "
                                 f"is {tuple(tshape)}")
        return band_axis, "--band-axis"
    evidence = []  # (kind, axes it allows)
    if named_axes:
        evidence.append((f"dimension names ({'; '.join(named_axes.values())})", set(named_axes)))
    for name, tshape in truth_shapes.items():
        evidence.append((f"ground truth '{name}' {tuple(tshape)}",
                         {a for a in range(3) if spatial_shape(shape, a) == tuple(tshape)}))
    for name, size in wavelength_sizes.items():
        axes = {a for a in range(3) if shape[a] == size}
        if axes:
            evidence.append((f"wavelength vector '{name}' of {size} values", axes))
    allowed = {0, 1, 2}
    for _, axes in evidence:
        allowed &= axes
    if evidence and len(allowed) == 1:
        axis = allowed.pop()
        return axis, "; ".join(kind for kind, _ in evidence)
    if not evidence:
        why = "nothing in the file tells which axis holds the bands (no ground truth, wavelength vector or dimension names)"
    elif not allowed:
        why = "the evidence disagrees (" + "; ".join(kind for kind, _ in evidence) + ")"
    else:
        why = "the evidence (" + "; ".join(kind for kind, _ in evidence) + ") fits axes " + \
              ", ".join(str(a) for a in sorted(allowed))
    raise InputError(f"{where}: cannot tell the band axis of the {tuple(shape)} array: {why}; "
                     f"pass --band-axis first|middle|last (or --gt)")
