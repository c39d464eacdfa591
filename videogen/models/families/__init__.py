"""The built-in model families, one module each (:mod:`videogen.models.family` has the seam)."""
