"""videogen: distributed renderer for latent video diffusion models with temporal layers."""

__version__ = "0.1.0"
