"""The :class:`Data` record every dataset returns, and seeded, resumable batching over it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from genbench.data.augment import Augment, check_augment
from genbench.errors import ConfigError


class DatasetError(ValueError):
    """A user-facing dataset problem (missing files, bad option); printed without a traceback."""


@dataclass
class Data:
    """A dataset of discrete images held in memory.

    Attributes:
        name: dataset name (as in ``conf/dataset``).
        levels: K, the number of levels of every sub-pixel; values are in ``{0, ..., K-1}``.
        train, val, test: ``[N, C, H, W]`` integer tensors (uint8 when K <= 256). ``val`` is a
            held-out part of the training split used for checkpoint selection.
        train_labels, val_labels, test_labels: ``[N]`` int64 class labels of each split, or
            ``None`` (unlabelled data).
        num_classes: number of label classes (0 when unlabelled).
        classes: class names, one per label (``("0", ..., "9")`` for digits; a ``folder``
            dataset's sub-folder names); empty when unlabelled.
        density: for 2-D toys, the exact discrete distribution (see :mod:`genbench.data.toy2d`).
        augment: names of the transforms applied to training batches (``dataset.augment``, see
            :mod:`genbench.data.augment`); empty: none.
    """

    name: str
    levels: int
    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    num_classes: int = 0
    val_labels: Tensor | None = None
    classes: tuple[str, ...] = ()
    #: the dataset before ``dataset.train_fraction`` cut its training split (None: uncut);
    #: the evaluation protocol (domain extractor, floors) is always that of the whole dataset
    whole_data: Data | None = field(default=None, repr=False)
    density: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    augment: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.augment = check_augment(self.augment)
        for split in ("train", "val", "test"):
            t = getattr(self, split)
            if t.ndim != 4:
                raise DatasetError(
                    f"{self.name}: {split} must be [N, C, H, W], got {tuple(t.shape)}"
                )
            if t.shape[1:] != self.train.shape[1:]:
                raise DatasetError(f"{self.name}: {split} shape differs from train")
        lo, hi = int(self.train.min()), int(self.train.max())
        if lo < 0 or hi >= self.levels:
            raise DatasetError(f"{self.name}: values in [{lo}, {hi}] outside [0, {self.levels})")
        self._check_labels()

    def _check_labels(self) -> None:
        given = [s for s in ("train", "val", "test") if self.split_labels(s) is not None]
        if not given:
            if self.num_classes:
                raise DatasetError(f"{self.name}: num_classes={self.num_classes} but no labels")
            return
        if self.num_classes < 1:
            raise DatasetError(f"{self.name}: labels given but num_classes={self.num_classes}")
        if not self.classes:
            self.classes = tuple(str(c) for c in range(self.num_classes))
        if len(self.classes) != self.num_classes:
            raise DatasetError(
                f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes"
            )
        for split in given:  # a split may be unlabelled (the runner and evaluator say so)
            y = self.split_labels(split)
            if tuple(y.shape) != (len(self.split(split)),) or y.dtype.is_floating_point:
                raise DatasetError(f"{self.name}: {split} labels must be [N] integers")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DatasetError(
                    f"{self.name}: {split} labels in [{int(y.min())}, {int(y.max())}] "
                    f"outside [0, {self.num_classes})"
                )

    def whole(self) -> Data:
        """The dataset with its whole training split (``self`` unless ``train_fraction`` cut
        it): what the evaluation protocol (domain CNN, data floor) is built from, so runs on
        any fraction are scored alike."""
        return self.whole_data if self.whole_data is not None else self

    @property
    def labelled(self) -> bool:
        """Whether the dataset has class labels (``num_classes > 0``; training a conditional
        model needs those of the training and validation splits)."""
        return self.num_classes > 0

    def split_labels(self, name: str) -> Tensor | None:
        """The ``[N]`` labels of split ``train``, ``val`` or ``test``, or ``None``."""
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r}; valid: train, val, test")
        return getattr(self, f"{name}_labels")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def is_toy(self) -> bool:
        """Whether these are toy points rather than images (see :func:`is_toy`)."""
        return is_toy(self.shape)

    @property
    def dims(self) -> int:
        """D = C * H * W."""
        c, h, w = self.shape
        return c * h * w

    def split(self, name: str) -> Tensor:
        """The ``train``, ``val`` or ``test`` levels ``[N, C, H, W]`` (uint8 or int32)."""
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r}; valid: train, val, test")
        return getattr(self, name)

    def to(self, device: torch.device | str) -> Data:
        """Move the image and label tensors to ``device`` (small datasets live on the training
        device)."""
        for split in ("train", "val", "test"):
            setattr(self, split, getattr(self, split).to(device))
            if (y := self.split_labels(split)) is not None:
                setattr(self, f"{split}_labels", y.to(device))
        return self


def is_toy(shape: Sequence[int]) -> bool:
    """Whether data of shape ``(C, H, W)`` are toy points, not images: no spatial extent
    (``H = W = 1``; the 2-D toys of :mod:`genbench.data.toy2d` are ``(2, 1, 1)``). Toy data get
    exact density metrics and a scatter plot instead of image metrics (FID ...) and image grids.

    >>> is_toy((2, 1, 1)), is_toy((1, 8, 8))
    (True, False)
    """
    return tuple(int(s) for s in shape[-2:]) == (1, 1)


def to_levels(images: Tensor, levels: int) -> Tensor:
    """``images`` ``[N, C, H, W]`` integer levels in ``[0, K)`` stored compactly: uint8 when
    K <= 256, else int32."""
    dtype = torch.uint8 if levels <= 256 else torch.int32
    return images.to(dtype)


def check_fraction(key: str, value: Any) -> float:
    """``value`` as a float in [0, 1), or a :class:`DatasetError` naming ``dataset.<key>``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not 0 <= out < 1:
        raise DatasetError(f"dataset.{key}={value!r} is invalid: expected a number in [0, 1)")
    return out


def split_train_val_test(
    images: Tensor, labels: Tensor | None, *, test_fraction: float, val_fraction: float, seed: int
) -> dict[str, Tensor | None]:
    """A fixed, seeded permutation of ``images`` ``[N, C, H, W]`` (and ``labels`` ``[N]``) split
    into train / val / test (val is held out of train); values are ``[N_split, ...]``."""
    test_fraction = check_fraction("test_fraction", test_fraction)
    val_fraction = check_fraction("val_fraction", val_fraction)
    n = images.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    n_val = int(round((n - n_test) * val_fraction))
    idx_test, idx_val, idx_train = (
        perm[:n_test],
        perm[n_test : n_test + n_val],
        perm[n_test + n_val :],
    )
    out: dict[str, Tensor | None] = {
        "train": images[idx_train],
        "val": images[idx_val],
        "test": images[idx_test],
    }
    for name, idx in (("train", idx_train), ("val", idx_val), ("test", idx_test)):
        out[f"{name}_labels"] = labels[idx] if labels is not None else None
    return out


def hold_out_val(
    train: Tensor, labels: Tensor | None, val_fraction: float, seed: int
) -> dict[str, Tensor | None]:
    """Split a fixed training split ``[N, C, H, W]`` (labels ``[N]``) into ``train``,
    ``train_labels``, ``val`` and ``val_labels`` with a seeded permutation."""
    val_fraction = check_fraction("val_fraction", val_fraction)
    n = train.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    keep, val = perm[n_val:], perm[:n_val]
    return {
        "train": train[keep],
        "train_labels": labels[keep] if labels is not None else None,
        "val": train[val],
        "val_labels": labels[val] if labels is not None else None,
    }


class Batches:
    """Endless seeded minibatches over an in-memory tensor, resumable at any position.

    Epoch ``e`` uses the permutation drawn from ``seed + e``; the state is ``(epoch, index)``, so a
    resumed run sees exactly the batches an uninterrupted one would. The last partial batch of an
    epoch is dropped.

    With ``world`` processes (data-parallel training), ``batch_size`` is the global batch: every
    rank draws the same permutation and :meth:`next` returns rank ``rank``'s contiguous
    ``batch_size / world`` slice of the global batch, so the ranks together see exactly the
    batches of one process.

    ``augment`` names the transforms of :mod:`genbench.data.augment` applied to every batch; each
    example's draw is seeded from (seed, epoch, row), so augmented batches resume exactly too.
    ``labels`` (``[N]``, optional) travel with their examples: :meth:`next` returns both.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        augment: Sequence[str] = (),
        labels: Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise DatasetError(f"trainer.batch_size must be >= 1, got {batch_size}")
        if batch_size % world or not 0 <= rank < world:
            raise DatasetError(
                f"the global batch ({batch_size}) must split evenly across "
                f"{world} processes (rank {rank})"
            )
        if batch_size > data.shape[0]:
            raise ConfigError(
                f"trainer.batch_size={batch_size} is invalid: expected an integer "
                f"<= {data.shape[0]:,}, the size of the training split"
            )
        if labels is not None and tuple(labels.shape) != (data.shape[0],):
            raise DatasetError(f"labels must be [N] = [{data.shape[0]}], got {tuple(labels.shape)}")
        self.data, self.labels, self.seed = data, labels, seed
        self.batch_size = batch_size  # global
        self.rank, self.local_batch_size = rank, self.batch_size // world
        self.epoch, self.index = 0, 0
        self._perm: Tensor | None = None
        self.augment = Augment(augment, seed)

    def _permutation(self) -> Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            self._perm = torch.randperm(self.data.shape[0], generator=g).to(self.data.device)
        return self._perm

    def next(self) -> tuple[Tensor, Tensor | None]:
        """The next ``[N / world, C, H, W]`` int64 batch of levels (this rank's slice of a global
        batch of N) and its ``[N / world]`` int64 labels (``None`` without labels)."""
        if self.index + self.batch_size > self.data.shape[0]:
            self.epoch, self.index, self._perm = self.epoch + 1, 0, None
        lo = self.index + self.rank * self.local_batch_size
        idx = self._permutation()[lo : lo + self.local_batch_size]
        self.index += self.batch_size
        y = self.labels[idx].long() if self.labels is not None else None
        if self.augment:
            return self.augment(self.data[idx], self.epoch, idx).long(), y
        return self.data[idx].long(), y

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index, self._perm = int(state["epoch"]), int(state["index"]), None
