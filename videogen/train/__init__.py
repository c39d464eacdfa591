"""Training loops for modules the renderer uses (TRIP's Temporal Noise Fusion)."""
