"""Detector maths on plain arrays ``(n_pixels, n_bands)``: higher score = more anomalous."""
