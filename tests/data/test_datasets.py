"""Dataset loaders on files written by the tests (no network), and resumable batching."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from genbench.data.base import Batches, Data, DatasetError, is_toy
from genbench.data.folder import image_folder
from genbench.data.toy2d import toy
from genbench.data.vision import cifar10, mnist


def _idx(path, array: np.ndarray) -> None:
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 10)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    data = mnist(root=str(tmp_path), val_fraction=0.25)
    assert data.shape == (1, 28, 28) and data.levels == 256
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)
    assert data.num_classes == 10 and data.train_labels.shape == (30,)


def test_missing_torchvision_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py.*dataset.download=true"):
        cifar10(root=str(tmp_path))


def test_folder_skips_unreadable_files(tmp_path, caplog):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    data = image_folder(
        str(tmp_path), size=8, channels=3, levels=16, test_fraction=0.34, val_fraction=0.0
    )
    assert data.shape == (3, 8, 8) and int(data.train.max()) < 16
    assert len(data.train) + len(data.val) + len(data.test) == 6
    assert "broken.png" in caplog.text
    with pytest.raises(DatasetError, match="dataset.root"):
        image_folder(str(tmp_path / "missing"))


def test_batches_resume_at_the_same_position():
    data = torch.arange(50).reshape(50, 1, 1, 1)
    a = Batches(data, 8, seed=3)
    first = [a.next()[0] for _ in range(9)]  # crosses an epoch boundary
    b = Batches(data, 8, seed=3)
    for _ in range(4):
        b.next()
    c = Batches(data, 8, seed=3)
    c.load_state_dict(b.state_dict())
    for i in range(4, 9):
        assert torch.equal(c.next()[0], first[i])
    epoch0 = torch.cat(first[:6]).flatten()
    assert len(set(epoch0.tolist())) == 48  # no repeats within an epoch


def test_toy_data_are_told_from_images_by_one_rule():
    points = toy("moons", levels=16, n_train=40, n_val=8, n_test=8)
    assert points.is_toy and points.density is not None and is_toy(points.test.shape[1:])
    images = Data("img", 4, *(torch.zeros(4, 1, 8, 8, dtype=torch.uint8) for _ in range(3)))
    assert not images.is_toy and not is_toy((3, 32, 32)) and not is_toy((1, 1, 8))


def test_batches_carry_their_labels_and_resume_with_them():
    data = torch.arange(50).reshape(50, 1, 1, 1)
    labels = torch.arange(50) * 3
    a = Batches(data, 8, seed=3, labels=labels)
    for _ in range(9):  # crosses an epoch boundary
        x, y = a.next()
        assert torch.equal(y, x.flatten() * 3)
    b = Batches(data, 8, seed=3, labels=labels)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next()[1], b.next()[1])
    assert Batches(data, 8, seed=3).next()[1] is None
