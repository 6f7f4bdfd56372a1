"""genbench.models.autoregressive."""
