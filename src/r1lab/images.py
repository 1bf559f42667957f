"""The images a problem carries: read from wherever a dataset keeps them, checked, and kept as PNG
data URLs inside the record.

A `Problem.images` entry is a string. r1lab writes `data:image/png;base64,...`: the pixels travel
with the record, so a run directory's data files keep exactly what a sample saw, and no later step
has to find a file again. Reading a dataset also accepts a path (relative to the data directory,
and never outside it), raw bytes, a Hugging Face image column (`{"bytes", "path"}`, or a decoded
PIL image) and any other data URL; each is checked and re-encoded:

- the declared size is read from the header before a pixel is decoded, and more than MAX_PIXELS
  is refused (a decompression bomb declares 40,000 x 40,000 in a few hundred bytes);
- the mode must be one of ACCEPTED_MODES (CMYK, 16-bit, float and palette-less oddities are refused:
  their meaning as RGB is a guess);
- the whole file is decoded, so a truncated file is found here and not in the middle of a run;
- the result is an RGB PNG (alpha composited onto white) written without metadata, so the same
  pixels always give the same bytes and `pixel_hash` can identify them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

from r1lab.errors import DataError

# 4096 x 4096: far above what a VLM's processor keeps (Qwen2-VL resizes to <= 1280 patches of 28 px),
# far below Pillow's own bomb limit (MAX_IMAGE_PIXELS, ~89M, an error only at twice that)
MAX_PIXELS = 4096 * 4096
ACCEPTED_MODES = ("RGB", "RGBA", "L", "LA", "P", "1")
PNG_DATA_URL = "data:image/png;base64,"


def _pil():
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey
    return Image


def checked_image(data: bytes, where: str):
    """The image in `data`, decoded and checked (size from the header first, mode, full decode), as
    RGB. DataError naming `where` and the fault otherwise."""
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise DataError(f"{where}: image declares {width} x {height} pixels, more than the "
                                f"{MAX_PIXELS:,} allowed (a decompression bomb or far too large)")
            if width < 1 or height < 1:
                raise DataError(f"{where}: image has no pixels ({width} x {height})")
            if img.mode not in ACCEPTED_MODES:
                raise DataError(f"{where}: image mode {img.mode} is not supported (use one of {', '.join(ACCEPTED_MODES)})")
            img.load()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{where}: image refused as a decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{where}: not an image file Pillow can read ({len(data)} bytes)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # Pillow's decoders raise these on damaged files
        raise DataError(f"{where}: damaged image ({' '.join(str(e).split()) or type(e).__name__})") from None
    return as_rgb(img)


def as_rgb(img):
    """RGB pixels of an accepted mode; transparency is composited onto white."""
    Image = _pil()
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def png_bytes(img) -> bytes:
    """An RGB image as PNG bytes without metadata: the same pixels, the same bytes."""
    buf = io.BytesIO()
    as_rgb(img).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def to_data_url(png: bytes) -> str:
    return PNG_DATA_URL + base64.b64encode(png).decode("ascii")


def data_url_bytes(url: str, where: str) -> bytes:
    """The bytes of a base64 `data:image/...` URL."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise DataError(f"{where}: not a base64 image data URL (expected data:image/TYPE;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{where}: the image data URL is not valid base64") from None


def _inside(path: Path, root: Path, where: str) -> Path:
    """`path` (relative to `root`, or absolute) resolved, symlinks followed; it must lie inside `root`."""
    root = root.resolve()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise DataError(f"{where}: image path {str(path)!r} lies outside the data directory {root}")
    if not resolved.is_file():
        raise DataError(f"{where}: image file not found: {resolved}")
    return resolved


def image_bytes(ref: Any, data_dir: str | Path | None, where: str) -> bytes:
    """The raw bytes an image reference names: a data URL, bytes, a path inside `data_dir`, a
    Hugging Face image value ({"bytes", "path"}) or a PIL image."""
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if isinstance(ref, dict):  # a Hugging Face Image column as Parquet stores it
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        if ref.get("path"):
            return image_bytes(str(ref["path"]), data_dir, where)
        raise DataError(f"{where}: image value has neither 'bytes' nor 'path'")
    if hasattr(ref, "mode") and hasattr(ref, "size") and hasattr(ref, "save"):  # a decoded PIL image
        width, height = ref.size
        if width * height > MAX_PIXELS:
            raise DataError(f"{where}: image of {width} x {height} pixels, more than the {MAX_PIXELS:,} allowed")
        if ref.mode not in ACCEPTED_MODES:
            raise DataError(f"{where}: image mode {ref.mode} is not supported (use one of {', '.join(ACCEPTED_MODES)})")
        return png_bytes(ref)
    if isinstance(ref, str):
        if ref.startswith("data:"):
            return data_url_bytes(ref, where)
        if not ref.strip():
            raise DataError(f"{where}: empty image path")
        if data_dir is None:
            raise DataError(f"{where}: image path {ref!r} given where no data directory is known")
        return _inside(Path(ref), Path(data_dir), where).read_bytes()
    raise DataError(f"{where}: an image must be a path, a data URL or bytes, got {type(ref).__name__}")


def canonical_image(ref: Any, data_dir: str | Path | None, where: str) -> str:
    """An image reference read, checked and re-encoded: the PNG data URL a Problem keeps."""
    return to_data_url(png_bytes(checked_image(image_bytes(ref, data_dir, where), where)))


def canonical_images(value: Any, data_dir: str | Path | None, where: str) -> list[str]:
    """A row's image field (one reference or a list of them; None or [] for none) as data URLs."""
    if value is None:
        return []
    refs = list(value) if isinstance(value, (list, tuple)) else [value]
    return [canonical_image(r, data_dir, f"{where} image {i}" if len(refs) > 1 else where) for i, r in enumerate(refs)]


def decode_image(url: str, where: str = "image"):
    """A Problem's image (a data URL r1lab wrote, or any image data URL) as a checked RGB PIL image."""
    return checked_image(data_url_bytes(url, where), where)


def pixel_hash(url: str) -> str:
    """sha256 of an image's size and RGB pixels (not of its file bytes: a PNG re-saved with other
    settings is the same image). Exact on purpose: see data/dedup.py for why not a perceptual hash."""
    img = decode_image(url)
    h = hashlib.sha256(f"{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()
