"""Feature extractors for sample-quality metrics, plugged into torch-fidelity.

Two kinds:

- ``inception-v3``: torch-fidelity's standard Inception-v3 (``inception-v3-compat``, the TF-FID
  port; images are replicated to RGB and resized bilinearly to 299x299 inside the extractor).
  Usable only when its weights file is given (``inception_weights``) or already sits in
  torch-fidelity's download cache; nothing is ever downloaded. The file is read by genbench with
  ``torch.load(weights_only=True)`` and refused unless it holds plain tensors; torch-fidelity only
  ever unpickles genbench's in-memory copy of those tensors, never the file.
- a **domain extractor** ``<dataset>-cnn``: a small CNN classifier trained (seeded) on the labelled
  training split of the dataset and cached under ``<cache_dir>/extractors/``. FID, KID and
  precision/recall use its penultimate features (``features``, 128-d after ReLU), the Inception
  Score its ``logits`` (torch-fidelity applies the softmax). Images enter at native size.

Both receive uint8 images ``[N, C, H, W]`` in ``{0..255}`` (torch-fidelity's convention). A
domain-CNN cache file that does not load as plain tensors is ignored (with a warning) and retrained.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch_fidelity
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.helpers import vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from genbench.data.base import Data
from genbench.errors import UserError
from genbench.eval.choices import EXTRACTOR_CHOICES
from genbench.files import FileError
from genbench.nn.chunks import row_slices

log = logging.getLogger(__name__)

INCEPTION = "inception-v3"
INCEPTION_REGISTERED = "inception-v3-compat"  # torch-fidelity's registry name


class ExtractorError(UserError, ValueError):
    """The requested feature extractor cannot be used (printed without a traceback)."""


@dataclass(frozen=True)
class Extractor:
    """A resolved feature extractor.

    Attributes:
        name: name in metric names (``fid@<name>``).
        registered: torch-fidelity registry name passed as ``feature_extractor``.
        weights: weights file passed as ``feature_extractor_weights_path``.
        weights_hash: sha256 of the weights file (hex).
        rgb: the extractor wants 3 channels (grey images are replicated); else native channels.
        input_size: what the network sees (``3x299x299``, ``1x8x8``).
        resize: how images reach ``input_size``.
        info: extra protocol entries (e.g. ``extractor_test_acc``).
        state_dict: the weights as loaded by genbench (``weights_only=True``) when torch-fidelity's
            own class would otherwise unpickle ``weights`` in full (Inception-v3); else None.
    """

    name: str
    registered: str
    weights: Path
    weights_hash: str
    rgb: bool
    input_size: str
    resize: str
    info: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, Tensor] | None = field(default=None, repr=False, compare=False)

    def protocol(self) -> dict[str, Any]:
        """The entries that make two scores comparable."""
        return {
            "extractor": self.name,
            "extractor_weights_sha256": self.weights_hash[:16],
            "extractor_input": self.input_size,
            "extractor_resize": self.resize,
            **self.info,
        }

    def build(self, features: list[str], cuda: bool) -> torch_fidelity.FeatureExtractorBase:
        """The torch-fidelity feature extractor returning ``features`` (layer names). Weights
        reach it as ``state_dict`` re-serialized in memory when set (torch-fidelity's Inception
        class unpickles its weights in full), else as the file (read by genbench's own class
        with ``weights_only=True``)."""
        weights: str | io.BytesIO = str(self.weights)
        if self.state_dict is not None:
            weights = io.BytesIO()
            torch.save(self.state_dict, weights)
            weights.seek(0)
        return create_feature_extractor(
            self.registered,
            features,
            cuda=cuda,
            verbose=False,
            feature_extractor_weights_path=weights,
        )


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file (read every time: ~0.3 s for Inception's 95 MB, so a file rewritten
    in place within one timestamp tick is never mistaken for the old one)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- Inception-v3
def find_inception_weights(path: str | os.PathLike | None) -> Path | None:
    """The configured weights file, else torch-fidelity's cached download, else ``None``."""
    if path not in (None, ""):
        p = Path(str(path)).expanduser()
        if not p.is_file():
            raise ExtractorError(f"inception_weights={str(p)!r} is not a file")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
    return cached if cached.is_file() else None


def load_plain_weights(path: Path) -> tuple[dict[str, Tensor], str]:
    """(state dict ``{name: tensor [...]}``, sha256 hex) of a weights file read once and loaded with
    ``weights_only=True``; an :class:`ExtractorError` unless it is a dict of named tensors."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ExtractorError(
            f"cannot read the Inception-v3 weights {str(path)!r} ({err.strerror or err})"
        ) from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any failure: refuse the file, never fall back)
        text = str(err).partition("WeightsUnpickler error:")[2] or str(err)
        reason = text.strip().split("\n")[0].split(". ")[0]
        raise ExtractorError(
            f"refusing the Inception-v3 weights {str(path)!r}: they do not load as plain tensors "
            f"with torch.load(weights_only=True) ({reason or type(err).__name__}); use "
            f"torch-fidelity's {URL_INCEPTION_V3.rsplit('/', 1)[-1]}"
        ) from None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())
    ):
        raise ExtractorError(
            f"refusing the Inception-v3 weights {str(path)!r}: the file is not "
            "a state dict of named tensors"
        )
    return state, hashlib.sha256(raw).hexdigest()


def inception_extractor(weights: Path) -> Extractor:
    state, digest = load_plain_weights(weights)
    return Extractor(
        INCEPTION,
        INCEPTION_REGISTERED,
        weights,
        digest,
        rgb=True,
        input_size="3x299x299",
        resize="grey replicated to RGB; bilinear (TF1-compatible) to 299x299",
        state_dict=state,
    )


# ---------------------------------------------------------------- domain CNN
@dataclass(frozen=True)
class CNNRecipe:
    """Architecture and training recipe of the domain CNN (part of its cache key)."""

    width: int = 16  # channels of the first conv (then 2x, 4x)
    hidden: int = 128  # penultimate feature dimension
    steps: int = 600  # Adam steps
    batch_size: int = 64
    lr: float = 2e-3  # one-cycle peak learning rate
    seed: int = 0
    version: int = 2  # bump when the code below changes what is trained


class DomainCNN(nn.Module):
    """conv3x3(w) -> conv3x3/2(2w) -> conv3x3/2(4w) -> avgpool 2x2 -> fc(hidden) -> fc(classes).

    Input: float ``[N, C, H, W]`` in ``[-1, 1]`` (any H, W >= 1). Output: (features ``[N, hidden]``
    after ReLU times ``feature_scale``, logits ``[N, classes]``). ``feature_scale`` is set after
    training so the training set's mean squared feature is 1: KID's kernel ``(x.y / d + 1)^3``
    then works in its intended range instead of being dominated by the cubic term.
    """

    def __init__(self, channels: int, num_classes: int, width: int = 16, hidden: int = 128) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            ]
        )
        self.fc = nn.Linear(16 * width, hidden)
        self.head = nn.Linear(hidden, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for conv in self.convs:
            x = F.relu(conv(x))
        h = F.relu(self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1)))
        return h * self.feature_scale, self.head(h)


def uint8_to_unit(x: Tensor, channels: int) -> Tensor:
    """uint8 ``[N, C', H, W]`` -> float ``[N, channels, H, W]`` in ``[-1, 1]``.

    RGB into a grey network uses PIL's luma, ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``,
    so an RGB file and its grey conversion give the same features; grey into RGB is replicated.
    """
    if x.shape[1] == 3 and channels == 1:
        w = torch.tensor([19595, 38470, 7471], dtype=torch.int64, device=x.device)
        x = ((x.long() * w[:, None, None]).sum(1, keepdim=True) + 32768) >> 16
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    vassert(x.shape[1] == channels, f"expected {channels} channels, got {x.shape[1]}")
    return x.float() / 127.5 - 1.0


class DomainFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """torch-fidelity wrapper of a trained :class:`DomainCNN` (weights from a genbench cache file).

    Features: ``features`` (penultimate, for FID/KID/PRC) and ``logits`` (for IS).
    """

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, features_list)
        vassert(
            feature_extractor_weights_path is not None,
            f"{name} needs feature_extractor_weights_path (a genbench domain-CNN file)",
        )
        payload = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.channels = int(payload["arch"]["channels"])
        self.net = DomainCNN(**payload["arch"])
        self.net.load_state_dict(payload["state_dict"])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """uint8 images ``[N, C, H, W]`` -> the outputs torch-fidelity asked for (features
        ``[N, F]``, logits ``[N, classes]``), in ``features_list`` order."""
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "expecting uint8 images")
        features, logits = self.net(uint8_to_unit(x, self.channels))
        out = {"features": features, "logits": logits}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, str]:
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        """A uint8 ``[1, 1, 8, 8]`` image (torch-fidelity's compile probe)."""
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)


def register_domain(name: str) -> None:
    """Register ``name`` with torch-fidelity once (its registry rejects duplicates)."""
    known = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if known is None:
        torch_fidelity.register_feature_extractor(name, DomainFeatureExtractor)
    elif known is not DomainFeatureExtractor:
        raise ExtractorError(f"feature extractor name {name!r} is taken by {known.__name__}")


def levels_to_uint8(x: Tensor, levels: int) -> Tensor:
    """Levels ``[N, C, H, W]`` in ``[0, K)`` -> uint8 ``round(x * 255 / (K - 1))`` (converted in
    chunks of rows: the float64 intermediate never holds the whole set)."""
    if levels == 256:
        return x.to(torch.uint8)
    scale = 255.0 / (levels - 1)
    if x.ndim == 0:
        return torch.round(x.double() * scale).to(torch.uint8)
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    for i, j in row_slices(x.shape[0], x[:1].numel()):
        out[i:j] = torch.round(x[i:j].double() * scale).to(torch.uint8)
    return out


def data_digest(data: Data) -> str:
    """sha256 of what the domain CNN is trained and tested on (images, labels, levels)."""
    h = hashlib.sha256(f"{data.levels}|{tuple(data.train.shape)}|{data.num_classes}".encode())
    for t in (data.train, data.train_labels, data.test, data.test_labels):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def train_domain_cnn(
    data: Data, recipe: CNNRecipe, device: torch.device
) -> tuple[DomainCNN, float]:
    """Train on ``data.train`` (seeded Adam, one-cycle LR) and return (net, test accuracy)."""
    # uint8 images, scaled batch by batch: a float copy of the split would grow with it
    x = levels_to_uint8(data.train, data.levels).to(device)
    y = data.train_labels.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = DomainCNN(data.shape[0], data.num_classes, recipe.width, recipe.hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.steps)
    gen = torch.Generator().manual_seed(recipe.seed)
    net.train()
    for _ in range(recipe.steps):
        idx = torch.randint(0, x.shape[0], (recipe.batch_size,), generator=gen).to(device)
        loss = F.cross_entropy(net(uint8_to_unit(x[idx], data.shape[0]))[1], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    xt = levels_to_uint8(data.test, data.levels).to(device)
    c = data.shape[0]
    with torch.no_grad():
        f2 = torch.cat([net(uint8_to_unit(b, c))[0].square().mean(1) for b in x.split(1024)]).mean()
        net.feature_scale.fill_(float(f2.clamp_min(1e-12).rsqrt()))
        pred = torch.cat([net(uint8_to_unit(b, c))[1].argmax(1) for b in xt.split(1024)])
    acc = float((pred.cpu() == data.test_labels.cpu()).float().mean())
    return net, acc


@contextlib.contextmanager
def _one_thread() -> Any:
    """Run the body with ``torch.set_num_threads(1)``, restoring the count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def domain_extractor(
    data: Data, cache_dir: Path, device: torch.device, recipe: CNNRecipe | None = None
) -> Extractor:
    """The ``<dataset>-cnn`` extractor of a labelled dataset: loaded from
    ``<cache_dir>/extractors/<dataset>-cnn-<key>.pt`` or trained and stored there, where ``key``
    hashes the data, the recipe (architecture, steps, seed) and the code version. A training
    split cut by ``dataset.train_fraction`` does not change it: the CNN learns the whole split
    (:meth:`~genbench.data.base.Data.whole`), so runs on any fraction share one extractor. It
    trains on the CPU with one thread whatever ``device`` and the thread count are, so the same
    recipe gives the same weights in every run on a machine; ``device`` runs it afterwards."""
    data = data.whole()
    if data.train_labels is None or data.test_labels is None or data.num_classes < 2:
        raise ExtractorError(f"dataset {data.name!r} has no labels to train a domain extractor")
    recipe = recipe or CNNRecipe()
    name = f"{_safe(data.name)}-cnn"
    key = hashlib.sha256(
        (data_digest(data) + json.dumps(asdict(recipe), sort_keys=True)).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / "extractors" / f"{name}-{key}.pt"
    payload = _read_domain_cache(path)
    if payload is None:
        start = time.perf_counter()
        # on the CPU with one thread, whatever the run's device and threads: a float sum's order
        # follows the thread count, so otherwise the same recipe would give other weights (and a
        # protocol of its own) in a parallel sweep job, a lone run and a GPU run
        with _one_thread():
            net, acc = train_domain_cnn(data, recipe, torch.device("cpu"))
        seconds = time.perf_counter() - start
        arch = {
            "channels": data.shape[0],
            "num_classes": data.num_classes,
            "width": recipe.width,
            "hidden": recipe.hidden,
        }
        payload = {
            "arch": arch,
            "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
            "test_acc": acc,
            "recipe": asdict(recipe),
        }
        _save_domain_cnn(payload, path)
        log.info("trained %s in %.1f s: test accuracy %.4f -> %s", name, seconds, acc, path)
    register_domain(name)
    c, h, w = data.shape
    return Extractor(
        name,
        name,
        path,
        file_sha256(path),
        rgb=False,
        input_size=f"{c}x{h}x{w}",
        resize="none (native size)",
        info={"extractor_test_acc": round(float(payload["test_acc"]), 4)},
    )


def _save_domain_cnn(payload: dict[str, Any], path: Path) -> None:
    """Write atomically, by path: the archive inside is named after the file (as in every earlier
    version, so the weights hash in the metric protocol is unchanged); a failed write is a
    :class:`FileError` and leaves no file."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise FileError(
            f"cannot write the domain extractor {str(path)!r} "
            f"({err.strerror or err}); nothing was written"
        ) from None


def _read_domain_cache(path: Path) -> dict[str, Any] | None:
    """The cached domain-CNN payload, or None (missing, or not loadable as plain tensors: then a
    warning, and the caller retrains and replaces it)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        DomainCNN(**payload["arch"]).load_state_dict(payload["state_dict"])
        float(payload["test_acc"])
        return payload
    except Exception as err:  # noqa: BLE001  (a cache: anything unreadable is rebuilt)
        log.warning(
            "ignoring the domain-extractor cache file %s (%s: %s); retraining it",
            path,
            type(err).__name__,
            str(err).splitlines()[0][:200] if str(err) else "",
        )
        return None


def resolve_extractor(
    choice: str,
    data: Data | None,
    *,
    inception_weights: str | None,
    cache_dir: Path,
    device: torch.device,
) -> Extractor | None:
    """``auto``: Inception-v3 when its weights are present, else the domain CNN of ``data`` (None
    when ``data`` is unlabelled or absent). ``inception-v3`` / ``domain``: that one, or an error.
    It leaves the global random state as it found it, whether it trains the domain CNN or builds
    one to load cached weights into (the anytime probe resolves it before training starts)."""
    with torch.random.fork_rng(devices=[]):
        return _resolve(choice, data, inception_weights, cache_dir, device)


def _resolve(
    choice: str,
    data: Data | None,
    inception_weights: str | None,
    cache_dir: Path,
    device: torch.device,
) -> Extractor | None:
    if choice not in EXTRACTOR_CHOICES:
        raise ExtractorError(f"extractor={choice!r}; valid: {', '.join(EXTRACTOR_CHOICES)}")
    if choice in ("auto", INCEPTION):
        weights = find_inception_weights(inception_weights)
        if weights is not None:
            return inception_extractor(weights)
        if choice == INCEPTION:
            raise ExtractorError(
                "Inception-v3 weights not found: set inception_weights=PATH to torch-fidelity's "
                f"{URL_INCEPTION_V3.rsplit('/', 1)[-1]} (or place it in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}), or use extractor=domain."
            )
    labelled = (
        data is not None
        and data.train_labels is not None
        and data.test_labels is not None
        and data.num_classes >= 2
    )
    if not labelled:
        if choice == "domain":
            name = "no dataset" if data is None else f"dataset {data.name!r} has no labels"
            raise ExtractorError(f"extractor=domain needs a labelled dataset ({name})")
        return None
    return domain_extractor(data, cache_dir, device)
