"""What a round's task returns, and what the round sums over the partitions: named sums and
named arrays, added field by field (``+``).

Each field says how two results combine: sums add, the tasks' compute seconds combine by max
(as parallel tasks do), arrays add (None: absent), int32 row sets unite. The Connect
backend's Arrow schema, encoding and decoding are derived from these fields
(connect_rounds.py), so a new field is one line here.
"""
import dataclasses
import operator
from dataclasses import dataclass, field

import numpy as np


def _add_arrays(a, b):
    return b if a is None else (a if b is None else a + b)


def _union(a, b):
    return b if a is None else (a if b is None else np.union1d(a, b).astype(np.int32))


def _scalar(kind, combine=operator.add):
    """A number (float or int) that starts at 0."""
    return field(default=kind(0), metadata={"kind": kind, "combine": combine})


def _array(dtype, combine):
    """A numpy array of dtype, or None (absent)."""
    return field(default=None, metadata={"kind": np.ndarray, "dtype": np.dtype(dtype), "combine": combine})


@dataclass(frozen=True, eq=False)
class RoundResult:
    """A task's (or a round's summed) result. ``RoundResult()`` is the sum's zero."""

    loss: float = _scalar(float)  # training loss sum of the round's minibatches
    vec: np.ndarray = _array(np.float32, _add_arrays)  # gradient sum (k = 1), rows x [weights, state] (k > 1)
    n: int = _scalar(int)  # training rows
    metrics: np.ndarray = _array(np.float64, _add_arrays)  # the loss's metric sums over them (correct, errors)
    seconds: float = _scalar(float, max)  # the tasks' compute time
    vloss: float = _scalar(float)  # validation loss sum (a validating round)
    vn: int = _scalar(int)  # validation rows
    vmetrics: np.ndarray = _array(np.float64, _add_arrays)  # the loss's metric sums over them
    rows: np.ndarray = _array(np.int32, _union)  # sorted Embedding table rows the round's steps touched
    next_rows: np.ndarray = _array(np.int32, _union)  # those the round after it will touch (when told which)
    buffers: np.ndarray = _array(np.float32, _add_arrays)  # rows x the buffers after the round (BatchNorm)

    def __add__(self, other):
        return RoundResult(**{f.name: f.metadata["combine"](getattr(self, f.name), getattr(other, f.name))
                              for f in FIELDS})

    def __eq__(self, other):
        """Field by field; arrays bitwise, dtype included."""
        if not isinstance(other, RoundResult):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in FIELDS)


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    return a == b


FIELDS = dataclasses.fields(RoundResult)
ZERO = RoundResult()
_SUMMED_ARRAYS = [f.name for f in FIELDS if f.metadata["combine"] is _add_arrays]


def add_into(total, other):
    """total + other, bitwise, adding other's arrays into total's in place where total's are
    writable: the classic backend's sum across tasks (treeAggregate's combOp), which owns the
    results it gets (unpickled). A new array the size of a result per task would be pages
    mapped anew each round (ResNet-18 with Adam: 134 MB; the results' way back took 599-709 ms
    with add_into against 621-1502 with +, benchmarks/RESULTS.md). Both operands are consumed: the sum
    writes into total's arrays, and takes other's where total has none (ZERO has none, and is
    never written). Connect's rows decode read-only, so its fold adds with +."""
    inplace = {}
    for name in _SUMMED_ARRAYS:
        a, b = getattr(total, name), getattr(other, name)
        if a is not None and b is not None and a.flags.writeable and a.shape == b.shape and a.dtype == b.dtype:
            inplace[name] = np.add(a, b, out=a)
    if not inplace:
        return total + other
    return dataclasses.replace(total + dataclasses.replace(other, **{k: None for k in inplace}), **inplace)
