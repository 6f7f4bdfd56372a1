"""Valid values of the sample-quality settings, importable without torch-fidelity (importing it
costs about 1.3 s of every process's start-up: it loads torchvision and ``torch._dynamo``), so
configs are validated and runs without sample metrics start without it."""

METRICS = ("fid", "isc", "kid", "prc")
PRC_NEIGHBORHOOD = 3  # k of the k-NN balls of precision / recall (Kynkaanniemi et al. 2019)
EXTRACTOR_CHOICES = ("auto", "inception-v3", "domain")
