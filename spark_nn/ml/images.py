"""8-bit images as Spark holds them: (height, width, channels) uint8 with colour in BGR order,
as Spark's image source writes its struct's data. Resizing and channel conversion (shared by
ImageFeature.loadImages and the fits on encoded files), and the decoding of encoded files
(PNG, JPEG, ... with Pillow, imported only where a file is decoded: on the executors).
No Spark here: numpy, and Pillow when asked to decode."""
import io

import numpy as np


def resize_bilinear(img, h, w):
    """uint8 (H, W, C) -> (h, w, C), bilinear with half-pixel centres."""
    H, W, _ = img.shape
    if (H, W) == (h, w):
        return img
    ys = np.clip((np.arange(h) + 0.5) * H / h - 0.5, 0, H - 1)
    xs = np.clip((np.arange(w) + 0.5) * W / w - 0.5, 0, W - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    f = img.astype(np.float32)
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    bot = f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bot * fy), 0, 255).astype(np.uint8)


def convert_channels(img, channels):
    """uint8 (H, W, C) BGR(A) or gray -> channels (None: as it is)."""
    c = img.shape[2]
    if channels is None or channels == c:
        return img
    if channels == 1:  # Spark stores colour as BGR(A)
        b, g, r = img[..., 0].astype(np.float32), img[..., 1].astype(np.float32), img[..., 2].astype(np.float32)
        return np.clip(np.rint(0.114 * b + 0.587 * g + 0.299 * r), 0, 255).astype(np.uint8)[..., None]
    if channels == 3 and c == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 3 and c == 4:
        return np.ascontiguousarray(img[..., :3])
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def decode(data, channels, size=None):
    """An encoded image file's bytes -> uint8 (h, w, channels) in Spark's channel order (BGR),
    as Spark's image source and then convert_channels / resize_bilinear would give it.
    channels: 1 or 3; size: (h, w) to resize to, or None. Raises ValueError when the bytes
    are not an image Pillow can read."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError('decoding image files needs Pillow on the executors: pip install "spark_nn[images]" '
                          "(or pillow)") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            gray = im.mode in ("1", "L", "I", "I;16", "F")
            arr = np.asarray(im.convert("L" if gray else "RGB"))
    except Exception as e:  # Pillow's errors for bad files vary (UnidentifiedImageError, OSError, ...)
        raise ValueError(f"cannot decode the image ({type(e).__name__}: {e})") from None
    img = arr[..., None] if gray else np.ascontiguousarray(arr[..., ::-1])  # RGB -> Spark's BGR
    img = convert_channels(img, channels)
    if size is not None:
        img = resize_bilinear(img, *size)
    return img
