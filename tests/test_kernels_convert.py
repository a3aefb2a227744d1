"""Minibatches from uint8 blocks (csrc/convert.c): the float32 rows numpy's
x[rows].astype(float32) / 255 gives, bit for bit, at every shape; bad input is refused."""
import numpy as np
import pytest

from spark_nn import kernels


def reference(src, rows):
    picked = src if rows is None else src[rows]
    return picked.astype(np.float32) / np.float32(255.0)


@pytest.mark.parametrize("shape", [(1, 1), (5, 1, 3, 3), (64, 3, 17, 13), (2, 784), (700, 1, 28, 28)])
def test_gather_matches_numpy_bitwise(rng, shape):
    src = rng.integers(0, 256, shape, dtype=np.uint8)
    src.flat[0], src.flat[-1] = 0, 255
    for rows in (None, np.array([0]), rng.integers(0, shape[0], 37), np.arange(shape[0])[::-1]):
        got = kernels.gather_scaled(src, rows)
        want = reference(src, rows)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_gather_takes_memory_maps_non_contiguous_arrays_and_row_lists(rng, tmp_path):
    src = rng.integers(0, 256, (40, 2, 5, 5), dtype=np.uint8)
    path = tmp_path / "block"
    src.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=src.shape)
    rows = [3, 3, 39, 0]
    np.testing.assert_array_equal(kernels.gather_scaled(mapped, rows), reference(src, np.array(rows)))
    strided = src[:, :, ::2]  # not contiguous
    np.testing.assert_array_equal(kernels.gather_scaled(strided, np.array([1, 2])),
                                  reference(np.ascontiguousarray(strided), np.array([1, 2])))
    assert kernels.gather_scaled(src, np.array([], dtype=np.int64)).shape == (0, 2, 5, 5)
    np.testing.assert_array_equal(kernels.gather_scaled(src, [2], scale=1.0), src[[2]].astype(np.float32))


def test_gather_refuses_bad_input(rng):
    src = rng.integers(0, 256, (10, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 10\), got -1\.\.3"):
        kernels.gather_scaled(src, np.array([3, -1]))
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 10\)"):
        kernels.gather_scaled(src, np.array([10]))
    with pytest.raises(ValueError, match="src must be a uint8 numpy array"):
        kernels.gather_scaled(src.astype(np.float32), None)
    with pytest.raises(ValueError, match="rows must be 1-D"):
        kernels.gather_scaled(src, np.zeros((2, 2), dtype=np.int64))
