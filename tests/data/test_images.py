"""The ``folder`` dataset on hostile and unusual files, all real files written in ``tmp_path``:
16-bit PNGs keep their depth, special, empty, unreadable and oversized files are skipped with a
warning naming them, and mixed sizes and modes load as documented."""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genbench.data.base import DatasetError
from genbench.data.folder import image_folder
from genbench.data.images import SkippedImage, image_to_levels, open_image


def write_rgb(folder: Path, n: int = 3, size: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``n`` random 8-bit RGB PNGs ``0.png ..``; returns their pixels ``[H, W, 3]``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i}.png")
    return pixels


def write_png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit PNG written chunk by chunk (Pillow cannot write 16-bit colour): ``values`` uint16
    ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB)."""
    h, w = values.shape[:2]
    colour = 2 if values.ndim == 3 else 0
    raw = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def all_images(data) -> torch.Tensor:
    """Every split's images, sorted by content (splits are a seeded permutation)."""
    x = torch.cat([data.train, data.val, data.test])
    order = sorted(range(len(x)), key=lambda i: x[i].flatten().tolist())
    return x[order]


def skipped(caplog) -> dict[str, str]:
    """file name -> reason of every 'skipping' warning."""
    out = {}
    for record in caplog.records:
        if record.levelno == logging.WARNING and record.getMessage().startswith("skipping "):
            path, _, why = record.getMessage()[len("skipping ") :].partition(": ")
            out[Path(path).name] = why
    return out


# ---------------------------------------------------------------- 16-bit depth
@pytest.mark.parametrize("levels", [256, 17])
def test_16bit_grey_png_keeps_its_depth(tmp_path, levels):
    ramp = (np.arange(64, dtype=np.int64).reshape(8, 8) * 1040).astype(np.uint16)  # 0..65520
    for i in range(3):
        Image.fromarray(np.roll(ramp, i, axis=1)).save(tmp_path / f"{i}.png")  # mode I;16
    data = image_folder(
        str(tmp_path), size=8, channels=1, levels=levels, test_fraction=0.0, val_fraction=0.0
    )
    expected = [
        (np.roll(ramp, i, axis=1).astype(np.int64) * (levels - 1) + 32767) // 65535
        for i in range(3)
    ]
    expected = torch.from_numpy(np.stack(expected)[:, None]).to(torch.uint8)
    assert torch.equal(
        all_images(data), expected[sorted(range(3), key=lambda i: expected[i].flatten().tolist())]
    )
    assert len(torch.unique(data.train)) == min(levels, 64)  # not collapsed onto one level


def test_16bit_grey_equals_its_8bit_twin(tmp_path):
    """A 16-bit image whose values are v * 257 reads exactly like the 8-bit image of v, as grey
    and as RGB, resized or not."""
    rng = np.random.default_rng(0)
    v = [rng.integers(0, 256, (12, 10), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(v):
        Image.fromarray(a).save(tmp_path / f"a{i}.png")
        Image.fromarray(a.astype(np.uint16) * 257).save(tmp_path / f"b{i}.png")
    for channels, size, levels in ((1, 12, 256), (3, 12, 17), (1, 6, 5)):
        for i in range(3):
            eight = image_to_levels(
                open_image(tmp_path / f"a{i}.png"), None if size == 12 else size, channels, levels
            )
            sixteen = image_to_levels(
                open_image(tmp_path / f"b{i}.png"), None if size == 12 else size, channels, levels
            )
            assert sixteen.shape == (channels, *(eight.shape[1:]))
            if size == 12:  # unresized: exactly equal
                assert np.array_equal(eight, sixteen)
            else:  # resized: the 8-bit path rounds to 8 bits first, then to the levels
                assert np.abs(eight.astype(int) - sixteen.astype(int)).max() <= 1


def test_16bit_colour_png_reads_its_top_byte(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    for i in range(3):
        write_png16(tmp_path / f"{i}.png", values)
    data = image_folder(
        str(tmp_path), size=8, channels=3, levels=256, test_fraction=0.0, val_fraction=0.0
    )
    expected = torch.from_numpy((values >> 8).astype(np.uint8).transpose(2, 0, 1))
    assert all(torch.equal(x, expected) for x in data.train)
    exact = torch.from_numpy(((values.astype(np.int64) * 255 + 32767) // 65535).transpose(2, 0, 1))
    assert int((data.train[0].long() - exact).abs().max()) <= 1  # within one level of exact


# ---------------------------------------------------------------- files that are skipped
def run_with_deadline(fn, seconds: float, unblock) -> object:
    """``fn()`` in a thread; if it is still running after ``seconds``, call ``unblock()`` (so the
    thread can finish) and fail."""
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001  (re-raised below)
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join(10)
        pytest.fail(f"still blocked after {seconds} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_fifo_is_skipped_without_blocking(tmp_path, caplog):
    write_rgb(tmp_path)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)

    def unblock() -> None:  # a writer lets a blocked open() return
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"junk")
        os.close(fd)

    with caplog.at_level(logging.WARNING):
        data = run_with_deadline(lambda: image_folder(str(tmp_path), size=8), 20, unblock)
    assert len(all_images(data)) == 3
    assert "FIFO" in skipped(caplog)["pipe.png"]


def test_device_directory_empty_and_unreadable_files_are_skipped(tmp_path, caplog):
    write_rgb(tmp_path)
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        data = image_folder(str(tmp_path), size=8)
    assert len(all_images(data)) == 3
    why = skipped(caplog)
    assert set(why) == {"zero.png", "folder.png", "empty.png", "dangling.png", "text.png"}
    assert "character device" in why["zero.png"]
    assert "directory" in why["folder.png"]
    assert "empty" in why["empty.png"]
    assert "cannot be opened" in why["dangling.png"]
    assert "not a readable" in why["text.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_file_without_read_permission_is_skipped(tmp_path, caplog):
    write_rgb(tmp_path)
    locked = tmp_path / "locked.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(locked)
    locked.chmod(0)
    with caplog.at_level(logging.WARNING):
        data = image_folder(str(tmp_path), size=8)
    assert len(all_images(data)) == 3
    assert "cannot be opened" in skipped(caplog)["locked.png"]


def test_decompression_bombs_are_skipped(tmp_path, caplog, monkeypatch):
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; both files are skipped
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    write_rgb(tmp_path, size=16)  # 256 pixels: fine
    Image.new("L", (40, 40)).save(tmp_path / "warns.png")  # 1,600 pixels
    Image.new("1", (50, 50)).save(tmp_path / "refused.png")  # 2,500 pixels
    with caplog.at_level(logging.WARNING):
        data = image_folder(str(tmp_path), size=8)
    assert len(all_images(data)) == 3
    why = skipped(caplog)
    assert set(why) == {"warns.png", "refused.png"}
    assert all("decompression bomb" in w for w in why.values())


def test_other_formats_behind_an_image_name_are_skipped(tmp_path, caplog):
    write_rgb(tmp_path)
    Image.new("F", (8, 8), 0.5).save(tmp_path / "float.png", format="TIFF")
    with caplog.at_level(logging.WARNING):
        data = image_folder(str(tmp_path), size=8)
    assert len(all_images(data)) == 3
    assert "not a readable image (PNG/JPEG/BMP/WEBP" in skipped(caplog)["float.png"]


def test_open_image_says_why(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SkippedImage, match="empty file"):
        open_image(tmp_path / "empty.png")
    with pytest.raises(SkippedImage, match="directory"):
        open_image(tmp_path)


def test_too_few_usable_images_is_an_error(tmp_path, caplog):
    write_rgb(tmp_path, n=2)
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="holds 2 readable images"):
        run_with_deadline(lambda: image_folder(str(tmp_path), size=8), 20, lambda: None)


# ---------------------------------------------------------------- mixed sizes and modes
def test_mixed_sizes_and_modes_load_as_documented(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    alpha = np.zeros((10, 14, 1), np.uint8)  # fully transparent: alpha is dropped, not composited
    Image.fromarray(np.concatenate([rgb, alpha], -1), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("L").resize((30, 7)).save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("1").save(tmp_path / "bilevel.bmp")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65536, (9, 9))).astype(np.uint16)).save(tmp_path / "g16.png")
    for channels in (1, 3):
        data = image_folder(
            str(tmp_path), size=8, channels=channels, levels=32, test_fraction=0.0, val_fraction=0.0
        )
        assert data.train.shape == (6, channels, 8, 8) and data.train.dtype == torch.uint8
        assert int(data.train.max()) < 32
    rgba = image_to_levels(open_image(tmp_path / "rgba.png"), None, 3, 256)
    assert np.array_equal(rgba, rgb.transpose(2, 0, 1))  # colour kept, transparency ignored
    grey = image_to_levels(open_image(tmp_path / "grey.png"), None, 3, 256)
    assert grey.shape == (3, 7, 30) and np.array_equal(grey[0], grey[2])  # grey replicated
