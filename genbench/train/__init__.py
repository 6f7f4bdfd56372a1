"""genbench.train."""
