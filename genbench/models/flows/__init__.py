"""genbench.models.flows."""
