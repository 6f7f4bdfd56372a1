"""Conditional evaluation: balanced sample labels, the generative classifier against a known
Bayes classifier, sample accuracy, and the guidance sweep."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_cfg
from omegaconf import open_dict
from torch import nn

from genbench.data.base import Data
from genbench.eval.conditional import wilson
from genbench.eval.context import sample_labels
from genbench.eval.evaluate import evaluate
from genbench.models.base import GenerativeModel, Sampled, check_sampler_options
from genbench.models.options import option_number
from genbench.nn.condition import guided
from genbench.nn.random import categorical

CPU = torch.device("cpu")
SHAPE, K = (2, 1, 1), 4


class ClassHistogram(GenerativeModel):
    """p(x | y) = prod_d softmax(logits[y, d]): an exact conditional likelihood; the null row
    ``logits[C]`` is the unconditional table that classifier-free guidance mixes in."""

    family = "autoregressive"
    likelihood = "exact"
    conditional_support = True

    def __init__(self, shape=SHAPE, levels=K, num_classes=0):
        super().__init__(shape, levels, num_classes)
        rows = max(num_classes, 1) + 1
        self.logits = nn.Parameter(torch.zeros(rows, *self.shape, self.levels))

    def _logp(self, y):
        return torch.log_softmax(self.logits[y], -1)  # [N, C, H, W, K]

    def log_probs(self, x, y):
        y = torch.zeros(len(x), dtype=torch.long) if y is None else y  # unconditional: row 0
        picked = self._logp(y).gather(-1, x.long().unsqueeze(-1))
        return picked.flatten(1).sum(1)

    def training_losses(self, x, phase="main", y=None):
        return {"loss": -self.log_probs(x, self.labels(y, len(x)))}

    def nll(self, x, *, y=None, generator=None):
        return -self.log_probs(x, self.labels(y, len(x))).double()

    def resolve_sampler(self, **sampler):
        check_sampler_options(sampler, ("guidance",), "ClassHistogram")
        return {"guidance": option_number("sampler.guidance", sampler.get("guidance", 0), low=0)}

    def sample(self, n, *, y=None, generator=None, **sampler):
        w = self.resolve_sampler(**sampler)["guidance"]
        y = self.labels(y, n)
        if y is None:
            return Sampled.constant(
                categorical(self._logp(torch.zeros(n).long()), generator=generator), 1
            )
        null = torch.full_like(y, self.num_classes)
        logits = guided(self._logp(y), self._logp(null), w)
        return Sampled.constant(categorical(logits, generator=generator), 1)


def two_class_data(n_test=400, seed=0):
    """Two classes with known factorized class-conditionals over K levels of 2 sub-pixels and
    prior (0.3, 0.7): the Bayes classifier is argmax_y log q_y(x) + log p(y)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(2 * torch.randn(2, 2, K, generator=g, dtype=torch.float64), -1)
    prior = torch.tensor([0.3, 0.7], dtype=torch.float64)

    def draw(n):
        y = torch.multinomial(prior, n, replacement=True, generator=g)
        x = torch.stack([torch.multinomial(q[c], 1, generator=g)[:, 0] for c in y.tolist()])
        return x.reshape(n, 2, 1, 1), y

    (tr, ytr), (va, yva), (te, yte) = draw(1000), draw(100), draw(n_test)
    data = Data(
        "twoclass", K, tr, va, te, train_labels=ytr, val_labels=yva, test_labels=yte,
        num_classes=2,
    )  # fmt: skip
    return data, q, prior


def bayes_predictions(x, q, prior):
    x = x.reshape(-1, 2)
    logp = torch.stack([q[c, 0, x[:, 0]].log() + q[c, 1, x[:, 1]].log() for c in range(2)], 1)
    return (logp + prior.log()).argmax(1)


def eval_cfg(tmp_path, **over):
    cfg = compose_cfg("eval", ["run=unused"], tmp_path).eval
    with open_dict(cfg):
        cfg.update({"n_samples": 200, "sample_metrics": False, "floor": False, **over})
    return cfg


def rows_by_name(rows):
    return {m.name: m for m in rows}


def test_sample_labels_are_balanced_and_batch_independent():
    whole = sample_labels(0, 25, 4)
    assert torch.equal(torch.cat([sample_labels(0, 10, 4), sample_labels(10, 15, 4)]), whole)
    assert torch.bincount(whole).tolist() == [7, 6, 6, 6]


def test_wilson_interval_contains_the_proportion_and_shrinks_with_n():
    lo, hi = wilson(30, 40)
    assert lo < 0.75 < hi
    lo2, hi2 = wilson(300, 400)
    assert hi2 - lo2 < hi - lo


def test_generative_classifier_with_the_true_tables_is_the_bayes_classifier(tmp_path):
    data, q, prior = two_class_data()
    model = ClassHistogram(num_classes=2)
    with torch.no_grad():
        model.logits[:2] = q.log().reshape(2, 2, 1, 1, K).float()
    rows = rows_by_name(evaluate(model, data, eval_cfg(tmp_path), {}, CPU, tmp_path))
    bayes = (bayes_predictions(data.test, q, prior) == data.test_labels).double().mean()
    acc = rows["gen_class_accuracy"]
    assert acc.value == pytest.approx(float(bayes), abs=1e-12)
    assert acc.kind == "exact" and acc.lo < acc.value < acc.hi
    assert acc.protocol["scores"] == "exact" and acc.protocol["examples"] == 400
    # the conditional NLL is -log p(x | y) with the test labels, and says so
    assert rows["nll"].protocol["conditional"] == 2
    x, y = data.test.reshape(-1, 2), data.test_labels
    true = -(q[y, 0, x[:, 0]].log() + q[y, 1, x[:, 1]].log()).mean()
    assert rows["nll"].value == pytest.approx(float(true), rel=1e-5)


def test_a_label_blind_model_classifies_by_the_prior_alone(tmp_path):
    data, _, _ = two_class_data()
    model = ClassHistogram(num_classes=2)  # every class has the same (uniform) table
    rows = rows_by_name(evaluate(model, data, eval_cfg(tmp_path), {}, CPU, tmp_path))
    majority = float((data.test_labels == 1).double().mean())  # prior 0.7 on class 1
    assert rows["gen_class_accuracy"].value == pytest.approx(majority)


def toy_data():
    from genbench.data.toy2d import toy

    return toy("rings", levels=32, n_train=3000, n_val=200, n_test=400)


def fit_tables(model, data):
    """The maximum-likelihood tables of the class-conditional histogram, set directly."""
    x, y = data.train.reshape(-1, 2).long(), data.train_labels
    with torch.no_grad():
        for c in range(model.num_classes + 1):
            rows = x if c == model.num_classes else x[y == c]
            for d in range(2):
                counts = torch.bincount(rows[:, d], minlength=model.levels).float() + 0.1
                model.logits[c, d, 0, 0] = counts.log() - counts.sum().log()


def test_sample_accuracy_on_a_toy_uses_the_exact_classifier_and_guidance_sweeps(tmp_path):
    data = toy_data()
    model = ClassHistogram((2, 1, 1), data.levels, num_classes=data.num_classes)
    fit_tables(model, data)
    cfg = eval_cfg(tmp_path, guidance_sweep=[0, 2])
    rows = evaluate(model, data, cfg, {}, CPU, tmp_path)
    acc = [m for m in rows if m.name == "sample_accuracy@bayes"]
    assert [m.protocol["sampler"]["guidance"] for m in acc] == [0.0, 2.0]  # w=0 measured once
    plain, strong = acc
    # a ring's product of per-coordinate marginals spreads over its neighbours: imperfect
    # samples (0.79), which guidance pushes toward their class (0.90 at w = 2)
    assert 0.6 < plain.value < 0.95 and strong.value > plain.value + 0.05
    assert plain.n == 200 and plain.lo <= plain.value <= plain.hi
    nfe = [m for m in rows if m.name == "nfe" and m.protocol["sampler"].get("guidance") == 2.0]
    assert len(nfe) == 1
    base = rows_by_name(rows)["classifier_accuracy@bayes"]
    assert base.value > 0.99  # the toy's classes barely overlap


def test_unconditional_models_get_no_conditional_rows(tmp_path):
    data, _, _ = two_class_data()
    rows = evaluate(ClassHistogram(), data, eval_cfg(tmp_path), {}, CPU, tmp_path)
    names = {m.name for m in rows}
    assert not {"gen_class_accuracy", "sample_accuracy@bayes"} & names
    assert "conditional" not in rows_by_name(rows)["nll"].protocol


@pytest.mark.parametrize("w", [0.0, 1.5])
def test_guided_combines_conditional_and_unconditional(w):
    c, u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    assert torch.allclose(guided(c, u, w), (1 + w) * c - w * u)
    assert math.isclose(float(guided(c, u, 0.0)[0]), 1.0)
