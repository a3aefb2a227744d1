"""Training checkpoints: everything a fit needs to go on exactly where it stopped.

A checkpoint is a directory ``<checkpointDir>/epoch-00003`` holding ``state.json`` (epoch
reached, the run's fingerprint, the training summary so far, early-stopping state) and
``arrays.npz`` (weights, optimizer state, best weights). The sampling needs no saved RNG
state: it is a function of (seed, epoch, partition, step) alone. Each checkpoint is written to
a temporary directory and renamed into place, then ``latest`` (a one-line file) is replaced
atomically; the two newest checkpoints are kept. Nothing is pickled.
"""
import hashlib
import json
import os
import shutil

import numpy as np

from spark_nn.nn.persist import atomic_directory, read_arrays, write_arrays

KEEP = 2


def fingerprint(config_json, seed, batch_size, sizes, local_steps):
    """What must match for a checkpoint to continue this fit: the network, the seed, the
    batch size, the rows per partition and localSteps (not the learning rate, so a run that
    diverged can be resumed with a lower stepSize)."""
    text = json.dumps([config_json, int(seed), int(batch_size), list(map(int, sizes)), str(local_steps)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def latest(directory):
    """Path of the newest complete checkpoint in directory, or None."""
    try:
        with open(os.path.join(directory, "latest")) as f:
            name = f.read().strip()
    except OSError:
        return None
    path = os.path.join(directory, name)
    return path if name and os.path.isfile(os.path.join(path, "state.json")) else None


def write(directory, epoch, state, arrays):
    """Writes checkpoint 'epoch-NNNNN' atomically and points 'latest' at it."""
    os.makedirs(directory, exist_ok=True)
    name = f"epoch-{epoch:05d}"

    def fill(tmp):
        write_arrays(os.path.join(tmp, "arrays.npz"), arrays)
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(dict(state, epoch=epoch), f)

    atomic_directory(os.path.join(directory, name), True, fill)
    pointer = os.path.join(directory, ".latest.tmp")
    with open(pointer, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, os.path.join(directory, "latest"))
    done = sorted(d for d in os.listdir(directory) if d.startswith("epoch-") and d != name)
    for old in done[:max(0, len(done) - (KEEP - 1))]:
        shutil.rmtree(os.path.join(directory, old), ignore_errors=True)
    return os.path.join(directory, name)


def read(path, expected_fingerprint):
    """(state dict, arrays dict) of a checkpoint; a clear error when it belongs to another run."""
    try:
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path} is unreadable ({e})") from None
    if state.get("fingerprint") != expected_fingerprint:
        raise ValueError(f"checkpoint {path} was written by a different fit (other network, seed, batchSize, "
                         "data partitioning or localSteps); use an empty checkpointDir for this one")
    arrays = read_arrays(os.path.join(path, "arrays.npz"))
    return state, arrays


def optimizer_arrays(optimizer):
    return {f"opt.{k}": np.asarray(v) for k, v in optimizer.state_dict().items()}


def optimizer_state(arrays):
    return {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}
