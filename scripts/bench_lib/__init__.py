"""genbench's performance benchmarks (``scripts/bench``): runner overhead, evaluation, sampling,
sweeps, the quickstart and CPU threading, each reported as a ratio measured side by side."""
