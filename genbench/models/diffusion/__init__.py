"""genbench.models.diffusion."""
