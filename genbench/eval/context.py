"""What an evaluation stage sees: the model, the data, the eval config, and shared samples."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genbench import distributed as ddp
from genbench.data.base import Data
from genbench.eval.metric import Metric
from genbench.models.base import GenerativeModel, Sampled, with_labels
from genbench.nn.random import per_sample_generators

log = logging.getLogger(__name__)


@dataclass
class Samples:
    """Generated levels ``[N, C, H, W]`` (int64, CPU) and what they cost: device milliseconds
    and network evaluations (the mean of the per-sample counts the model reported) per image;
    ``y`` ``[N]``: the labels a conditional model drew them for (``None`` otherwise)."""

    x: Tensor
    ms_per_image: float
    nfe: float
    sampler: dict[str, Any]
    y: Tensor | None = None


def sample_labels(start: int, n: int, num_classes: int) -> Tensor:
    """``[n]`` int64 labels of samples ``start .. start + n - 1`` of a conditional model: sample
    *i* is drawn for class ``i mod C``, so every class gets an equal share (±1) whatever the batch
    size or the number of processes.

    >>> sample_labels(8, 4, 10).tolist()
    [8, 9, 0, 1]
    """
    return torch.arange(start, start + n) % num_classes


@dataclass
class EvalContext:
    model: GenerativeModel
    data: Data
    cfg: Any  # the eval config (conf/eval)
    sampler: dict[str, Any]  # sampler options (conf/sampler merged over model defaults)
    device: torch.device
    cache_dir: Path
    rows: list[Metric] = field(default_factory=list)  # results of the stages run so far
    #: per-example values a stage keeps for the run folder (``nll``: ``[n]`` nats, test order)
    per_example: dict[str, np.ndarray] = field(default_factory=dict)
    _samples: dict[str, Samples] = field(default_factory=dict)
    #: a conditional model's samples all for this class (None: every class in turn)
    label: int | None = None

    def sweep(self) -> list[dict[str, Any]]:
        """The run's sampler, then one per ``eval.sampler_sweep`` step count."""
        return [self.sampler] + [{**self.sampler, "steps": int(s)} for s in self.cfg.sampler_sweep]

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    def samples(self, n: int | None = None, sampler: dict[str, Any] | None = None) -> Samples:
        """``n`` samples (default ``eval.n_samples``) under ``sampler``; sample *i* is drawn with
        its own generator seeded from ``(eval.seed, i)``, so results do not depend on the
        batch size, nor on how many processes share the work: with several ranks each draws a
        contiguous run of batches and every rank gets all ``n`` samples, in index order;
        ``ms_per_image`` is then device time (summed over ranks) per image, and ``nfe`` the mean
        of every sample's own count. Samples are generated once per (n, sampler) and shared by
        all stages. A conditional model draws sample *i* for class ``i mod C``
        (:func:`sample_labels`), so its samples are balanced over the classes."""
        n = int(self.cfg.n_samples if n is None else n)
        sampler = dict(self.sampler if sampler is None else sampler)
        key = json.dumps([n, sampler], sort_keys=True, default=str)
        if key not in self._samples:
            bs, out, nfe = int(self.cfg.batch_size), [], []
            self.model.eval()
            start = time.perf_counter()
            with torch.inference_mode():
                for i, j in ddp.my_batches(n, bs):
                    gens = per_sample_generators(self.seed, i, j - i, self.device)
                    labels = self.labels(i, j - i)
                    s = self.model.sample(
                        j - i, generator=gens, **with_labels(self.model, labels), **sampler
                    )
                    if not isinstance(s, Sampled):
                        raise RuntimeError(
                            f"{type(self.model).__name__}.sample returned "
                            f"{type(s).__name__}; the contract is Sampled(x, nfe)"
                            " (genbench.models.base)"
                        )
                    out.append(s.x.cpu())
                    nfe.append(s.nfe)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            mine = torch.cat(out) if out else torch.zeros((0, *self.data.shape), dtype=torch.long)
            if out:
                self._check(mine)
            x = ddp.gather_rows(mine)
            nfe_all = ddp.gather_rows(
                torch.cat(nfe) if nfe else torch.zeros(0, dtype=torch.float64)
            )
            busy = float(ddp.reduce_sum(torch.tensor(seconds, dtype=torch.float64)))
            self._samples[key] = Samples(
                x,
                1000 * busy / max(n, 1),
                float(nfe_all.mean()) if n else float("nan"),
                self.model.resolve_sampler(**sampler),
                self.labels(0, n),
            )
            log.info(
                "sampled %d images in %.1f s (%.2f ms/image)", n, seconds, 1000 * busy / max(n, 1)
            )
        return self._samples[key]

    def labels(self, start: int, n: int) -> Tensor | None:
        """``[n]`` labels of samples ``start ..`` for a conditional model (on the evaluation
        device), ``None`` for an unconditional one."""
        if not self.model.conditional:
            return None
        if self.label is not None:
            return torch.full((n,), int(self.label), dtype=torch.long, device=self.device)
        return sample_labels(start, n, self.model.num_classes).to(self.device)

    def _check(self, x: Tensor) -> None:
        shape = (self.data.shape, tuple(x.shape[1:]))
        if shape[0] != shape[1] or x.dtype != torch.int64:
            raise RuntimeError(
                f"{type(self.model).__name__}.sample returned {x.dtype} "
                f"{tuple(x.shape)}; the contract is int64 [n, *{shape[0]}]"
            )
        if int(x.min()) < 0 or int(x.max()) >= self.data.levels:
            raise RuntimeError(
                f"{type(self.model).__name__}.sample returned levels outside "
                f"[0, {self.data.levels})"
            )
