"""Detector maths on plain arrays ``(n_pixels, n_bands)``: higher score = more anomalous.

The contract every detector follows, and the registry of methods, are in
:mod:`hsad_scale.detectors.base`; saved-model lookup in :mod:`hsad_scale.detectors.saved`.
"""

#: The registered methods' names, for command-line choices without importing the detectors
#: (a test checks that the registry holds exactly these).
METHODS = ("rx", "local-rx", "utd", "rxd-utd", "cluster-rx", "ae", "vae")
#: Methods whose workers need PyTorch.
LEARNED_METHODS = ("ae", "vae")
