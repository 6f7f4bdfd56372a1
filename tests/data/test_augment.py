"""Augmentation as configuration (dataset.augment): per-example seeded draws on integer levels."""

from __future__ import annotations

import pytest
import torch

from genbench.build import build
from genbench.data.augment import TRANSFORMS, Augment, check_augment
from genbench.data.base import Batches, DatasetError
from genbench.train.device import setup_device


def _images(n: int = 1000, h: int = 6, w: int = 5) -> torch.Tensor:
    """uint8 ``[n, 2, h, w]``, every image different and asymmetric left-right."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 2, h, w), generator=g, dtype=torch.uint8)


def test_hflip_flips_about_half_the_images_deterministically():
    x = _images()
    idx = torch.arange(len(x))
    out = Augment(["hflip"], seed=0)(x, 0, idx)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # every image is either mirrored or untouched
    assert 450 <= int(flipped.sum()) <= 550  # Binomial(1000, 1/2): mean 500, sd 16
    assert int(flipped.sum()) == 488  # the draws themselves are fixed by (seed, epoch, row)
    assert torch.equal(Augment(["hflip"], seed=0)(x, 0, idx), out)
    assert not torch.equal(Augment(["hflip"], seed=0)(x, 1, idx), out)  # new draws each epoch
    assert not torch.equal(Augment(["hflip"], seed=1)(x, 0, idx), out)


def test_draws_depend_only_on_seed_epoch_and_row():
    x = _images(64)
    aug = Augment(["hflip", "translate"], seed=3)
    whole = aug(x, 2, torch.arange(64))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(aug(x[perm], 2, perm), whole[perm])  # any batch composition
    one = torch.cat([aug(x[i : i + 1], 2, torch.tensor([i])) for i in range(64)])
    assert torch.equal(one, whole)


def test_batches_augment_alike_at_any_batch_size_and_rank_count():
    x = _images(48)
    single = Batches(x, 8, seed=5, augment=["hflip"])
    ranks = [Batches(x, 8, seed=5, rank=r, world=2, augment=["hflip"]) for r in range(2)]
    for _ in range(12):  # two epochs
        assert torch.equal(single.next()[0], torch.cat([b.next()[0] for b in ranks]))
    plain, flipped = Batches(x, 8, seed=5), Batches(x, 8, seed=5, augment=["hflip"])
    a, b = plain.next()[0], flipped.next()[0]
    assert a.dtype == b.dtype == torch.int64 and not torch.equal(a, b)
    assert bool(((b == a) | (b == a.flip(-1))).flatten(1).all(1).all())


def test_translate_shifts_whole_pixels_with_edges_repeated():
    x = torch.arange(100, dtype=torch.uint8).reshape(1, 1, 10, 10)
    # r = round(0.1 * 10) = 1; u = (0, 0.999): content moves down by 1 and left by 1
    moved = TRANSFORMS["translate"][1](x, torch.tensor([[0.0, 0.999]], dtype=torch.float64))
    grid = x[0, 0]
    assert torch.equal(moved[0, 0, 0], torch.cat([grid[0, 1:], grid[0, 9:]]))  # edge row
    assert torch.equal(moved[0, 0, 1:, :9], grid[:9, 1:])
    assert torch.equal(moved[0, 0, 1:, 9], grid[:9, 9])  # the right edge repeated
    out = Augment(["translate"], seed=0)(_images(500, 10, 10), 0, torch.arange(500))
    assert out.dtype == torch.uint8 and out.shape == (500, 2, 10, 10)


def test_bad_names_are_refused_with_the_key():
    assert check_augment("hflip") == ("hflip",) and check_augment(None) == ()
    with pytest.raises(DatasetError, match=r"dataset.augment=\['vflip'\] is invalid"):
        check_augment(["vflip"])


def test_config_key_reaches_the_data_and_is_off_by_default(train_cfg):
    cfg = train_cfg("dataset.augment=[hflip]")
    data, _ = build(cfg, setup_device(cfg.device))
    assert data.augment == ("hflip",)
    cfg = train_cfg()
    assert build(cfg, setup_device(cfg.device))[0].augment == ()
