"""The anytime probe: cheap metrics measured during training at the ``trainer.eval_at`` points.

At each point the training loop calls ``probe(model)`` on its evaluation (EMA) weights and stores
the rows as :class:`~genbench.eval.metric.CurvePoint` s. The probe reuses the final evaluation's
stages at a smaller size, so its numbers mean what the final ones mean:

- ``bpd``: bits/dim on the first ``trainer.probe.nll_examples`` test images (at most
  ``eval.nll_examples``)
  (:func:`genbench.eval.likelihood.likelihood_metrics`; kind ``exact`` or ``bound`` as the model
  declares; skipped for models without a likelihood);
- ``fid`` / ``kid`` (and ``isc`` / ``prc`` when asked): ``trainer.probe.n_samples`` samples (at
  most ``eval.n_samples``) scored
  with ``trainer.probe.extractor`` (default the domain CNN: cheap at any N) against the final
  evaluation's reference split and size, so the cached reference features are shared
  (:func:`genbench.eval.fidelity.fidelity_metrics`).

Every draw is seeded: sample ``i`` from its own generator seeded from ``(trainer.probe.seed, i)``
and the likelihood's noise per batch, inside a forked RNG, so the probe gives the same numbers for
the same weights and leaves the global RNG (and thus exact resume) untouched. Each call runs on
every rank (the NLL and sampling are shared); rank 0 alone scores samples, the others return the
likelihood rows only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genbench import distributed as ddp
from genbench.data.base import Data
from genbench.errors import bad_value, positive_int, seed_int
from genbench.eval.choices import EXTRACTOR_CHOICES, METRICS, PRC_NEIGHBORHOOD
from genbench.eval.context import EvalContext
from genbench.eval.likelihood import likelihood_metrics
from genbench.eval.metric import Metric
from genbench.models.base import GenerativeModel

log = logging.getLogger(__name__)

#: what a probe can measure: ``bpd`` (likelihood) and torch-fidelity's metric groups
PROBE_METRICS = ("bpd", *METRICS)
#: the likelihood rows a probe keeps (the bound terms and nats are left to the final evaluation)
LIKELIHOOD_ROWS = ("bpd",)
Probe = Callable[[GenerativeModel], list[Metric]]


@dataclass(frozen=True)
class ProbeSettings:
    """``trainer.probe``, checked.

    Attributes:
        nll_examples: test images for bits/dim.
        n_samples: generated images for the sample metrics (0: none).
        metrics: subset of :data:`PROBE_METRICS`.
        extractor: feature extractor of the sample metrics (``domain``, ``auto``, ...).
        seed: base seed of the per-sample generators and of the likelihood noise.
        batch_size: batch size for the NLL, sampling and features.
    """

    nll_examples: int = 256
    n_samples: int = 500
    metrics: tuple[str, ...] = ("bpd", "fid", "kid")
    extractor: str = "domain"
    seed: int = 0
    batch_size: int = 256

    @classmethod
    def from_cfg(cls, node: Any) -> ProbeSettings:  # noqa: ANN401 (a config node or None)
        """``trainer.probe`` (None: the defaults); a ``ConfigError`` naming the first bad key."""
        if node is None:
            return cls()
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        if not isinstance(node, Mapping):
            raise bad_value("trainer.probe", node, "a mapping such as {n_samples: 500}")
        known = set(cls.__dataclass_fields__)
        if unknown := sorted(set(map(str, node)) - known):
            raise bad_value(
                f"trainer.probe.{unknown[0]}", node[unknown[0]], f"a key in {sorted(known)}"
            )
        d = cls()
        metrics = node.get("metrics", list(d.metrics))
        if (
            not isinstance(metrics, list | tuple)
            or not metrics
            or any(m not in PROBE_METRICS for m in metrics)
        ):
            raise bad_value(
                "trainer.probe.metrics", metrics, f"a non-empty subset of {list(PROBE_METRICS)}"
            )
        extractor = node.get("extractor", d.extractor)
        if extractor not in EXTRACTOR_CHOICES:
            raise bad_value(
                "trainer.probe.extractor", extractor, f"one of {', '.join(EXTRACTOR_CHOICES)}"
            )
        n_samples = positive_int(
            "trainer.probe.n_samples", node.get("n_samples", d.n_samples), minimum=0
        )
        need = PRC_NEIGHBORHOOD + 1 if "prc" in metrics else 2
        if 0 < n_samples < need:
            raise bad_value("trainer.probe.n_samples", n_samples, f"0 (none) or at least {need}")
        seed = seed_int("trainer.probe.seed", node.get("seed", d.seed))
        return cls(
            nll_examples=positive_int(
                "trainer.probe.nll_examples", node.get("nll_examples", d.nll_examples)
            ),
            n_samples=n_samples,
            metrics=tuple(dict.fromkeys(str(m) for m in metrics)),
            extractor=str(extractor),
            seed=seed,
            batch_size=positive_int(
                "trainer.probe.batch_size", node.get("batch_size", d.batch_size)
            ),
        )

    @property
    def fidelity(self) -> tuple[str, ...]:
        """The torch-fidelity metric groups asked for (``fid``, ``isc``, ``kid``, ``prc``)."""
        return tuple(m for m in self.metrics if m in METRICS)

    def eval_cfg(self, eval_cfg: Mapping) -> DictConfig:
        """The final evaluation's config (``conf/eval``: reference split and size, KID subset
        size, Inception weights) with this probe's sizes, seed, metrics and extractor. The sizes
        are capped at the final evaluation's (``eval.nll_examples``, ``eval.n_samples``): a
        preset that shrinks an expensive model's evaluation shrinks its probe too."""
        base = OmegaConf.create(
            OmegaConf.to_container(eval_cfg, resolve=True)
            if isinstance(eval_cfg, DictConfig)
            else dict(eval_cfg)
        )
        cap = base.get("nll_examples")
        nll_examples = self.nll_examples if cap is None else min(self.nll_examples, int(cap))
        n_samples = min(self.n_samples, int(base.get("n_samples", self.n_samples)))
        return OmegaConf.merge(
            base,
            {
                "nll": "bpd" in self.metrics,
                "nll_examples": nll_examples,
                "n_samples": n_samples,
                "sample_metrics": bool(self.fidelity) and n_samples >= 2,
                "metrics": list(self.fidelity),
                "extractor": self.extractor,
                "seed": self.seed,
                "batch_size": self.batch_size,
                "sampler_sweep": [],
                "estimators": [],
            },
        )


def build_probe(
    settings: ProbeSettings,
    data: Data,
    eval_cfg: Mapping,
    sampler: Mapping[str, Any],
    device: torch.device,
    cache_dir: Path,
) -> Probe:
    """``probe(model) -> list[Metric]``: the :class:`ProbeSettings` metrics of ``model`` (its
    current weights) on ``data``, sampling with ``sampler``. ``eval_cfg`` is the run's ``eval``
    config (reference split and size, KID subset size, Inception weights); ``cache_dir`` holds
    the domain extractor and the cached reference features, shared with the final evaluation."""
    cfg = settings.eval_cfg(eval_cfg)
    sampler = dict(sampler)
    if cfg.sample_metrics and not data.is_toy:
        cfg.sample_metrics = ddp.on_main(_extractor_ready, cfg, data, device, cache_dir)

    def probe(model: GenerativeModel) -> list[Metric]:
        start, was_training = time.perf_counter(), model.training
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                ctx = EvalContext(model, data, cfg, sampler, device, Path(cache_dir))
                rows = [m for m in likelihood_metrics(ctx) if m.name in LIKELIHOOD_ROWS]
                rows += _sample_metrics(ctx)
        finally:
            model.train(was_training)
        log.info(
            "probe: %s in %.1f s",
            ", ".join(f"{m.name} {m.value:.4g}" for m in rows) or "nothing measured",
            time.perf_counter() - start,
        )
        return rows

    return probe


def _extractor_ready(cfg: DictConfig, data: Data, device: torch.device, cache_dir: Path) -> bool:
    """Whether the probe's extractor is there (the domain CNN is trained and cached now, before
    training, rather than at the first probe); a ``ConfigError`` when it cannot be."""
    from genbench.eval.extractors import ExtractorError, resolve_extractor

    try:
        found = resolve_extractor(
            str(cfg.extractor),
            data,
            inception_weights=cfg.get("inception_weights"),
            cache_dir=Path(cache_dir),
            device=device,
        )
    except ExtractorError as err:
        raise bad_value(
            "trainer.probe.extractor",
            str(cfg.extractor),
            f"an extractor available for {data.name} ({err}), or trainer.probe.metrics=[bpd]",
        ) from None
    if found is None:
        log.warning("trainer.probe: no extractor for %s, so no sample metrics", data.name)
    return found is not None


def _sample_metrics(ctx: EvalContext) -> list[Metric]:
    """FID / KID ... of ``eval.n_samples`` seeded samples (rank 0 scores; every rank samples)."""
    if not ctx.cfg.sample_metrics or ctx.data.is_toy:
        return []
    from genbench.eval.cost import sampler_protocol
    from genbench.eval.fidelity import fidelity_metrics  # torch-fidelity only when needed

    s = ctx.samples()
    if not ddp.is_main():
        return []
    return fidelity_metrics(
        s.x,
        ctx.data,
        ctx.cfg,
        device=ctx.device,
        cache_dir=ctx.cache_dir,
        protocol=sampler_protocol(ctx, s.sampler),
    )
