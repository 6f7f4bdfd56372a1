"""Conditional evaluation: how well samples match their labels, per-class sample quality, the
model as a classifier, and the guidance trade-off. Runs for conditional models only.

- ``sample_accuracy@<classifier>``: the share of samples that a classifier assigns to the class
  they were drawn for (samples are balanced over the classes, see
  :func:`~genbench.eval.context.sample_labels`). Images: the dataset's domain CNN (the one behind
  ``fid@<dataset>-cnn``); 2-D toys: the exact Bayes classifier of the toy, argmax_c p(c | x)
  (``@bayes``). With a 95 % Wilson interval over the samples.
- ``intra_fid@<extractor>``: FID of each class's samples against that class's reference images,
  averaged over the classes (Miyato & Koyama 2018); the per-class counts are in the protocol.
- ``gen_class_accuracy``: the model as a classifier, argmax_y [log p(x | y) + log p(y)] with p(y)
  the training split's class shares, on the first ``eval.classify_examples`` test images
  (default ``eval.nll_examples``). Exact for
  exact likelihoods; computed from bounds or estimates otherwise (kind ``estimate``, printed
  ``≈``): a bound's gap may differ between classes. Every class's score uses the same noise
  (one generator per example), so the comparison between classes is paired.
- ``classifier_accuracy@<classifier>``: the discriminative baseline on the same test split (the
  domain CNN's own test accuracy; the Bayes classifier's on toys).
- ``eval.guidance_sweep=[w, ...]``: for models with classifier-free guidance, one set of sample
  metrics (sample accuracy, intra-FID, FID ..., ms/image, NFE) per guidance scale; rows carry the
  sampler (with ``guidance``) in their protocol.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from genbench import distributed as ddp
from genbench.eval.context import EvalContext, Samples
from genbench.eval.cost import MS_PER_IMAGE, NFE, sampler_protocol
from genbench.eval.likelihood import nll_options, with_generators
from genbench.eval.metric import Column, Metric, MetricSpec
from genbench.eval.registry import register_metric, register_spec
from genbench.models.base import likelihood_kind
from genbench.models.options import OptionError

log = logging.getLogger(__name__)

SAMPLE_ACCURACY = register_spec(
    MetricSpec(
        name="sample_accuracy",
        lower_is_better=False,
        label="sample acc",
        per_extractor=True,
        column=Column(order=26, optional=True),
    )
)
INTRA_FID = register_spec(
    MetricSpec(
        name="intra_fid",
        lower_is_better=True,
        label="intra-FID",
        per_extractor=True,
        column=Column(order=27, sections="image", optional=True),
    )
)
GEN_CLASS_ACCURACY = register_spec(
    MetricSpec(
        name="gen_class_accuracy",
        lower_is_better=False,
        label="gen-clf acc",
        column=Column(order=28, optional=True),
    )
)
CLASSIFIER_ACCURACY = register_spec(
    MetricSpec(name="classifier_accuracy", lower_is_better=None, per_extractor=True)
)
#: the name of the exact classifier of a 2-D toy in metric names
BAYES = "bayes"


def wilson(correct: int, n: int) -> tuple[float | None, float | None]:
    """95 % Wilson score interval of a proportion ``correct / n`` (scipy's ``binomtest``)."""
    if n < 1:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _accuracy(spec: MetricSpec, hits: Tensor, split: str, proto: dict, classifier: str) -> Metric:
    n, k = int(hits.numel()), int(hits.sum())
    lo, hi = wilson(k, n)
    m = spec.metric(k / max(n, 1), "measured", split, n, proto, extractor=classifier)
    return replace(m, lo=lo, hi=hi)


class Classifier:
    """Predicts labels ``[N]`` of levels ``[N, C, H, W]``: the domain CNN for images, the exact
    Bayes classifier for 2-D toys; ``name`` goes into metric names, ``protocol`` into rows."""

    def __init__(self, ctx: EvalContext) -> None:
        self.ctx = ctx
        density = ctx.data.density
        if density is not None and getattr(density, "class_probs", None) is not None:
            self.name, self.net, self.extractor = BAYES, None, None
            self.protocol: dict[str, Any] = {"classifier": "exact p(class | x) of the toy"}
            return
        from genbench.eval.extractors import DomainCNN, domain_extractor

        ext = domain_extractor(ctx.data, ctx.cache_dir, ctx.device)
        payload = torch.load(ext.weights, map_location="cpu", weights_only=True)
        net = DomainCNN(**payload["arch"])
        net.load_state_dict(payload["state_dict"])
        self.net, self.name, self.extractor = net.to(ctx.device).eval(), ext.name, ext
        self.protocol = {"classifier": ext.name, **ext.protocol()}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """``[N]`` int64 predicted classes (CPU) of levels ``x`` ``[N, C, H, W]``."""
        if self.net is None:
            return self.ctx.data.density.class_posterior(x.cpu()).argmax(1)
        from genbench.eval.extractors import levels_to_uint8, uint8_to_unit

        c, out = self.ctx.data.shape[0], []
        for b in x.split(int(self.ctx.cfg.batch_size)):
            u8 = levels_to_uint8(b.to(self.ctx.device), self.ctx.data.levels)
            out.append(self.net(uint8_to_unit(u8, c))[1].argmax(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _guidance_scales(ctx: EvalContext) -> list[float]:
    return [float(w) for w in (ctx.cfg.get("guidance_sweep") or [])]


def _accepts_guidance(ctx: EvalContext) -> bool:
    try:
        ctx.model.resolve_sampler(**{**ctx.sampler, "guidance": 1.0})
    except (OptionError, ValueError, TypeError):
        return False
    return True


def _intra_fid(ctx: EvalContext, s: Samples, proto: dict) -> list[Metric]:
    """Per-class FID (samples of class c vs reference images of class c), averaged."""
    from genbench.eval.fidelity import Settings, levels_digest, resolve_extractor, score_images

    extractor = resolve_extractor(
        str(ctx.cfg.get("extractor", "auto")),
        ctx.data,
        inception_weights=ctx.cfg.get("inception_weights"),
        cache_dir=ctx.cache_dir,
        device=ctx.device,
    )
    split = str(ctx.cfg.get("reference_split", "test"))
    ref, ref_y = ctx.data.split(split), ctx.data.split_labels(split)
    if extractor is None or ref_y is None or s.y is None:
        return []
    settings = replace(Settings.from_cfg(ctx.cfg), metrics=("fid",))
    values, counts = [], {}
    for c in range(ctx.model.num_classes):
        xs, xr = s.x[s.y.cpu() == c], ref[ref_y.cpu() == c]
        if min(len(xs), len(xr)) < 2:
            log.warning("intra-FID: class %d has %d samples, %d references", c, len(xs), len(xr))
            return []
        scored = score_images(
            xs,
            ctx.data.levels,
            xr,
            ctx.data.levels,
            extractor,
            settings,
            device=ctx.device,
            cache_dir=ctx.cache_dir,
            reference_label=f"{ctx.data.name}-{split}-class{c}",
        )
        values.append(scored[f"fid@{extractor.name}"])
        counts[str(c)] = [len(xs), len(xr)]
    p = {
        **proto,
        **extractor.protocol(),
        "reference_split": split,
        "reference_sha256": levels_digest(ref, ctx.data.levels)[:16],
        "per_class_n": counts,  # class -> [samples, reference images]
        "per_class_fid": [round(v, 4) for v in values],
    }
    mean = sum(values) / len(values)
    # the spread over classes, as the standard error of their mean
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1) / len(values))
    m = INTRA_FID.metric(mean, "measured", split, len(s.x), p, extractor=extractor.name)
    return [replace(m, lo=mean - 1.96 * se, hi=mean + 1.96 * se)]


def sample_metrics(ctx: EvalContext, clf: Classifier, sampler: dict, sweep: bool) -> list[Metric]:
    """Sample accuracy and intra-FID for ``sampler``; for a sweep entry also the unconditional
    sample metrics (FID ...) and the sampling cost, so each scale has one full set."""
    s = ctx.samples(sampler=sampler)
    proto = sampler_protocol(ctx, s.sampler)
    hits = clf.predict(s.x) == s.y.cpu()
    rows = [_accuracy(SAMPLE_ACCURACY, hits, "samples", {**proto, **clf.protocol}, clf.name)]
    if ctx.cfg.sample_metrics and not ctx.data.is_toy and ctx.cfg.get("intra_fid", True):
        rows += _intra_fid(ctx, s, proto)
    if sweep:
        rows.append(MS_PER_IMAGE.metric(s.ms_per_image, "measured", "samples", len(s.x), proto))
        rows.append(NFE.metric(s.nfe, "measured", "samples", len(s.x), proto))
        if ctx.cfg.sample_metrics and not ctx.data.is_toy and len(s.x) >= 2:
            from genbench.eval.fidelity import fidelity_metrics

            rows += fidelity_metrics(
                s.x,
                ctx.data,
                ctx.cfg,
                device=ctx.device,
                cache_dir=ctx.cache_dir,
                protocol=proto,
            )
    return rows


def class_scores(ctx: EvalContext, n: int) -> Tensor:
    """``[n, C]`` float64 -log p(x_i | y = c) in nats for the first ``n`` test examples, every
    class scored with the same per-example generators (paired noise)."""
    model, options = ctx.model, nll_options(ctx.model, ctx.cfg)
    out = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        model.eval()
        for i, j in ddp.my_batches(n, int(ctx.cfg.batch_size)):
            x = ctx.data.test[i:j].to(ctx.device).long()
            cols = []
            for c in range(model.num_classes):
                torch.manual_seed(ctx.seed * 1_000_003 + i)  # models without generators
                y = torch.full((j - i,), c, dtype=torch.long, device=ctx.device)
                nll = with_generators(model.nll, x, ctx, i, y=y, **options)
                cols.append(nll.double().cpu())
            out.append(torch.stack(cols, 1))
    mine = torch.cat(out) if out else torch.zeros(0, model.num_classes, dtype=torch.float64)
    return ddp.gather_rows(mine)


def classification_metrics(ctx: EvalContext, clf: Classifier) -> list[Metric]:
    """``gen_class_accuracy`` (models with a likelihood) and the baseline
    ``classifier_accuracy@<classifier>`` on the first ``eval.classify_examples`` test images
    (null: ``eval.nll_examples``; both null: the whole test split)."""
    limit = ctx.cfg.get("classify_examples")
    limit = ctx.cfg.get("nll_examples") if limit is None else limit
    n = len(ctx.data.test) if limit is None else min(len(ctx.data.test), int(limit))
    labels = ctx.data.test_labels[:n].cpu()
    proto = {"seed": ctx.seed, "conditional": ctx.model.num_classes, "examples": n}
    rows = [
        _accuracy(
            CLASSIFIER_ACCURACY,
            clf.predict(ctx.data.test[:n]) == labels,
            "test",
            {**proto, **clf.protocol},
            clf.name,
        )
    ]
    if ctx.model.likelihood == "none" or n < 1:
        return rows
    counts = torch.bincount(ctx.data.train_labels.cpu(), minlength=ctx.model.num_classes)
    log_prior = (counts.double() / counts.sum()).log()
    scores = -class_scores(ctx, n) + log_prior  # log p(x | y) + log p(y), [n, C]
    kind = likelihood_kind(ctx.model.likelihood)
    p = {
        **proto,
        "likelihood": ctx.model.likelihood,
        "rule": "argmax_y log p(x | y) + log p(y), p(y) = training class shares",
        "scores": kind,  # exact log-likelihoods, or bounds / estimates of them
    }
    hits = scores.argmax(1) == labels
    m = _accuracy(GEN_CLASS_ACCURACY, hits, "test", p, clf.name)
    return [*rows, replace(m, name=GEN_CLASS_ACCURACY.name, kind=_kind(kind))]


def _kind(likelihood: str) -> str:
    """``exact`` when the scores are exact log-likelihoods, else ``estimate`` (printed ≈)."""
    return "exact" if likelihood == "exact" else "estimate"


@register_metric("conditional", order=45)
def conditional_stage(ctx: EvalContext) -> list[Metric]:
    """Sample accuracy and intra-FID (the run's sampler, then each ``eval.guidance_sweep``
    scale), generative classification and its discriminative baseline; conditional models
    only."""
    if not ctx.model.conditional:
        return []
    clf = Classifier(ctx)
    rows: list[Metric] = []
    if ctx.cfg.get("classify", True):
        rows += classification_metrics(ctx, clf)
    if int(ctx.cfg.n_samples) < 1:
        return rows
    rows += sample_metrics(ctx, clf, dict(ctx.sampler), sweep=False)
    scales = _guidance_scales(ctx)
    if scales and not _accepts_guidance(ctx):
        log.warning(
            "eval.guidance_sweep=%s skipped: %s has no guidance (sampler.guidance)",
            scales,
            type(ctx.model).__name__,
        )
        return rows
    for w in scales:
        sampler = {**ctx.sampler, "guidance": w}
        if ctx.model.resolve_sampler(**sampler) == ctx.model.resolve_sampler(**ctx.sampler):
            continue  # the run's own sampler: measured above
        rows += sample_metrics(ctx, clf, sampler, sweep=True)
    return rows
