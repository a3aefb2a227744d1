"""A model on disk: ``model.json`` (architecture, format version) + ``weights.npz`` (named
arrays), optionally ``optimizer.npz``. Loading never unpickles; saving writes a temporary
directory and renames it into place, so a failed save leaves no half-written model."""
import json
import os
import shutil
import tempfile

import numpy as np

from spark_nn.nn.model import Sequential

FORMAT = "spark_nn.Sequential"
FORMAT_VERSION = 1


def model_to_json(model):
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **model.config()}


def model_from_json(doc):
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ValueError(f"not a spark_nn model description (format {found!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"model format version {doc.get('format_version')!r} is not supported "
                         f"(this spark_nn reads version {FORMAT_VERSION})")
    return Sequential.from_config(doc)


def write_arrays(path, arrays):
    """np.savez to path without pickling object arrays."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise ValueError(f"array {k} has dtype object; only numeric arrays are saved")
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def read_arrays(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read weights file {path}: {e}") from None
    except Exception as e:  # zipfile.BadZipFile and friends for truncated/corrupt files
        raise ValueError(f"cannot read weights file {path}: corrupted or truncated ({e})") from None


def atomic_directory(path, overwrite, fill):
    """Calls fill(tmp_dir), then moves tmp_dir to path (replacing it when overwrite)."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; use overwrite")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        fill(tmp)
        if os.path.exists(path):
            old = tmp + ".old"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(model, path, overwrite=False, optimizer=None):
    def fill(d):
        with open(os.path.join(d, "model.json"), "w") as f:
            json.dump(model_to_json(model), f, indent=1)
        write_arrays(os.path.join(d, "weights.npz"), model.weights_dict())
        if optimizer is not None:
            write_arrays(os.path.join(d, "optimizer.npz"), optimizer.state_dict())
            with open(os.path.join(d, "optimizer.json"), "w") as f:
                json.dump(optimizer.config(), f)

    atomic_directory(path, overwrite, fill)


def load_model(path):
    spec = os.path.join(path, "model.json")
    if not os.path.isfile(spec):
        raise ValueError(f"{path} is not a saved spark_nn model (no model.json)")
    try:
        with open(spec) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{spec} is corrupted: {e}") from None
    model = model_from_json(doc)
    model.load_weights_dict(read_arrays(os.path.join(path, "weights.npz")))
    return model
