"""genbench.models.gan."""
