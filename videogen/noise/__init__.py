"""Noise sources for the sampler: per-frame Gaussian, warped (Go-with-the-Flow), image prior (TRIP)."""
