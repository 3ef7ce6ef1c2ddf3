"""Reading photos safely: every way a file can be bad becomes one `PhotoError` with a reason.

Pillow decodes (it honours EXIF orientation, reads 16-bit, alpha, palette and webp files and
tells the pixel count from the header, before decoding the whole image).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class PhotoError(ValueError):
    """A photo that cannot be used, with a reason fit to show an admin."""


def load_rgb(path: Path, max_pixels: int) -> np.ndarray:
    """Decode `path` into an upright 8-bit RGB array (H, W, 3)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise PhotoError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise PhotoError(
                        f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                        "(photo.max_pixels)"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb8(img)
    except PhotoError:
        raise
    except FileNotFoundError:
        raise PhotoError("file not found") from None
    except PermissionError:
        raise PhotoError("file is not readable (permission denied)") from None
    except IsADirectoryError:
        raise PhotoError("is a directory, not a photo") from None
    except UnidentifiedImageError:
        raise PhotoError("not an image in a known format") from None
    except Image.DecompressionBombError as exc:
        raise PhotoError(f"image is over the limit of {max_pixels} pixels (photo.max_pixels): {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PhotoError(f"corrupt or truncated image ({exc})") from None


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = a.max() if a.size else 0
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
        gray = np.clip(a * scale, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def is_photo(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_SUFFIXES and not path.name.startswith(".")
