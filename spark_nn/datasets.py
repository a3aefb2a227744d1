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
