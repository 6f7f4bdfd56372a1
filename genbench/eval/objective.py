"""The validation objective ``genbench train`` returns to a Hydra sweeper (``objective=``).

Hyperparameters are chosen on held-out *validation* data, never on the test split the leaderboard
ranks by. The objective is one number, lower is better:

- ``bpd``: the model's bits/dim on the first ``objective_examples`` validation examples (the
  test-set routine of :mod:`genbench.eval.likelihood` run on the validation split; a bound for
  bound models), for models with a likelihood;
- ``fid`` / ``kid``: FID or KID of ``objective_examples`` samples against as many validation
  images, with the dataset's domain extractor (:mod:`genbench.eval.fidelity`), for image data;
- ``sample_nll``: minus the mean true log-probability (nats) of ``objective_examples`` samples,
  for 2-D toys, whose exact density is known (:mod:`genbench.eval.toy`);
- ``auto``: ``bpd`` for models with a likelihood, else ``fid`` on images, ``sample_nll`` on toys.

It is recorded as a metric row named ``objective`` with ``split="val"``; the protocol names the
underlying metric (``protocol["metric"]``: ``bpd``, ``fid@digits-cnn`` ...).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from genbench import distributed as ddp
from genbench.data.base import Data
from genbench.errors import bad_value, positive_int
from genbench.eval.context import EvalContext
from genbench.eval.likelihood import likelihood_metrics
from genbench.eval.metric import Metric, MetricSpec
from genbench.eval.registry import register_spec
from genbench.eval.toy import sample_log_likelihood
from genbench.models.base import GenerativeModel

log = logging.getLogger(__name__)

OBJECTIVES = ("auto", "bpd", "fid", "kid", "sample_nll")
OBJECTIVE = register_spec(MetricSpec(name="objective", lower_is_better=True, label="val objective"))


def resolve_objective(name: Any, likelihood: str, toy: bool) -> str:
    """The objective ``objective=<name>`` means for a model of this ``likelihood`` kind on toy
    or image data; ``ConfigError`` naming the valid choices for anything else."""
    valid = ["auto", *(["bpd"] if likelihood != "none" else [])]
    valid += ["sample_nll"] if toy else ["fid", "kid"]
    if name not in valid:
        why = (
            ""
            if name not in OBJECTIVES
            else f" for this model on {'a 2-D toy' if toy else 'images'}"
        )
        raise bad_value("objective", name, f"one of {valid}{why}")
    if name == "auto":
        return "bpd" if likelihood != "none" else "sample_nll" if toy else "fid"
    return name


def validation_objective(
    model: GenerativeModel,
    data: Data,
    name: str,
    examples: int,
    eval_cfg: Any,
    sampler: dict[str, Any],
    device: torch.device,
    cache_dir: Path,
) -> Metric | None:
    """The ``objective`` row (split ``val``) of a resolved objective ``name`` on at most
    ``examples`` validation examples (or samples); None on ranks other than 0, and when the
    dataset offers no extractor for ``fid`` / ``kid`` (a warning is logged). Every rank of a
    multi-process run must call it (the NLL and the sampling are shared)."""
    n = min(positive_int("objective_examples", examples), len(data.val))
    cfg = OmegaConf.merge(
        eval_cfg,
        {
            "nll": True,
            "nll_examples": n,
            "n_samples": n,
            "extractor": "domain",
            "metrics": [name] if name in ("fid", "kid") else [],
            "reference_split": "val",
            "n_reference": n,
            "estimators": [],
        },
    )
    if name == "bpd":
        val_y = data.val_labels[:n] if data.val_labels is not None else None
        held_out = dataclasses.replace(data, test=data.val[:n], test_labels=val_y)
        ctx = EvalContext(model, held_out, cfg, dict(sampler), device, cache_dir)
        rows = {m.name: m for m in likelihood_metrics(ctx)}
        bpd = rows["bpd"]
        proto = {**bpd.protocol, "metric": "bpd"}
        return Metric(OBJECTIVE.name, bpd.value, bpd.kind, "val", bpd.n, bpd.unit, proto)
    ctx = EvalContext(model, data, cfg, dict(sampler), device, cache_dir)
    samples = ctx.samples(n)
    if not ddp.is_main():
        return None
    proto = {"sampler": samples.sampler, "seed": ctx.seed}
    if name == "sample_nll":
        ll = sample_log_likelihood(samples.x, data.density)["sample_ll"]
        proto |= {"metric": "sample_nll"}
        return Metric(OBJECTIVE.name, -ll, "measured", "val", n, "nats", proto)
    from genbench.eval.fidelity import fidelity_metrics  # torch-fidelity: ~1.3 s to import

    rows = fidelity_metrics(
        samples.x, data, cfg, device=device, cache_dir=cache_dir, protocol=proto
    )
    found = [m for m in rows if m.name.partition("@")[0] == name]
    if not found:
        log.warning("no validation %s for %s: it has no domain extractor", name, data.name)
        return None
    m = found[0]
    proto = {**m.protocol, "metric": m.name}
    return Metric(OBJECTIVE.name, m.value, m.kind, "val", m.n, m.unit, proto)
