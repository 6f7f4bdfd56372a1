"""Reading one image file that nobody vouches for (a ``folder`` dataset, ``genbench score`` input).

:func:`open_image` refuses, with :class:`SkippedImage` and a reason, anything that is not a
decodable picture of bounded size:

- not a regular file (a FIFO, a socket, a device, a directory): refused before anything is read,
  so a FIFO never blocks (the file is opened non-blocking and checked with ``fstat``);
- an empty or unreadable file (permissions, a dangling link);
- a file Pillow cannot decode in one of :data:`FORMATS` (whatever its name says);
- a decompression bomb: more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's
  ``DecompressionBombWarning`` is treated as its ``DecompressionBombError``), or a PNG text chunk
  beyond Pillow's limits.

:func:`image_to_levels` maps a decoded image to ``levels`` levels at its real depth: 8-bit modes
as ``(v (K-1) + 127) // 255``; 16-bit greyscale (Pillow modes ``I;16*``, or ``I`` with values in
``[0, 65535]``) as ``(v (K-1) + 32767) // 65535``, so a 16-bit image never collapses onto the
brightest level. Pillow decodes 16-bit *colour* PNGs to their top 8 bits; their levels come from
those (at most one level from rounding the 16-bit values). Floating-point and other deeper modes
are refused.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: Pillow decoders tried on a file (by content, whatever its extension)
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
#: Pillow modes read as 16-bit greyscale
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: Pillow modes of 8 bits per channel, converted by Pillow to grey or RGB
EIGHT_BIT = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


class SkippedImage(Exception):
    """A file that is not used as an image; ``str(err)`` says why."""


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path`` if it is a non-empty regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        raise SkippedImage(f"cannot be opened ({err.strerror or err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise SkippedImage(f"{kind}, not an image file")
        if st.st_size == 0:
            raise SkippedImage("empty file (0 bytes)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_image(path: str | os.PathLike) -> PILImage.Image:
    """The fully decoded image at ``path``, or :class:`SkippedImage` saying why not."""
    from PIL import Image

    fd = _open_regular(Path(path))
    with os.fdopen(fd, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(f, formats=FORMATS)
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise SkippedImage(
                f"a possible decompression bomb (more than {Image.MAX_IMAGE_PIXELS:,} pixels)"
            ) from None
        except Exception as err:  # noqa: BLE001  (any decoder failure on untrusted bytes)
            raise SkippedImage(
                f"not a readable image ({'/'.join(FORMATS)}; {type(err).__name__}: {err})"
            ) from None
    return img


def image_to_levels(
    img: PILImage.Image, size: int | None, channels: int, levels: int
) -> np.ndarray:
    """uint8 ``[channels, H, W]`` levels in ``[0, levels)`` of a decoded image (``levels`` at most
    256): converted to grey (luma) or RGB (grey replicated; alpha dropped, not composited), and
    resized bilinearly to ``size x size`` (aspect ratio not kept) unless ``size`` is None."""
    from PIL import Image

    shape = None if size is None else (size, size)
    if img.mode in SIXTEEN_BIT:
        v = np.asarray(img)
        if v.size and (int(v.min()) < 0 or int(v.max()) > 65535):
            raise SkippedImage(f"{img.mode} values outside [0, 65535]")
        f = Image.fromarray(v.astype(np.float32), mode="F")
        v16 = np.asarray(f if shape is None else f.resize(shape, Image.BILINEAR))
        v16 = np.clip(np.rint(v16), 0, 65535).astype(np.int64)
        grey = ((v16 * (levels - 1) + 32767) // 65535).astype(np.uint8)[None]
        return grey if channels == 1 else np.repeat(grey, 3, axis=0)
    if img.mode not in EIGHT_BIT:
        raise SkippedImage(f"unsupported image mode {img.mode!r}")
    img = img.convert("L" if channels == 1 else "RGB")
    if shape is not None:
        img = img.resize(shape, Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8).astype(np.uint16)  # v (K-1) + 127 < 2^16
    arr = ((arr * (levels - 1) + 127) // 255).astype(np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)
