"""Bad arguments raise ValueError naming the argument and the expected shape; odd memory
layouts are copied and give the same answer."""
import numpy as np
import pytest

import spark_nn
from spark_nn import kernels as K


def _conv_args(rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    return x, w


def test_wrong_dtype_names_argument_and_shape(rng):
    x, w = _conv_args(rng)
    with pytest.raises(ValueError, match=r"x must have dtype float32, got float64 \(expected shape \(N, 3, H, W\)\)"):
        K.conv2d_forward(x.astype(np.float64), w)


def test_wrong_rank_and_channels(rng):
    x, w = _conv_args(rng)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\), got \(3, 8, 8\)"):
        K.conv2d_forward(x[0], w)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\), got \(2, 2, 8, 8\)"):
        K.conv2d_forward(x[:, :2], w)
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 4, 8, 8\)"):
        K.conv2d_backward(x, w, np.zeros((2, 4, 6, 6), np.float32), padding=1)


def test_not_an_array(rng):
    _, w = _conv_args(rng)
    with pytest.raises(ValueError, match="x must be a numpy.ndarray"):
        K.conv2d_forward([[1.0]], w)


def test_empty_input(rng):
    _, w = _conv_args(rng)
    with pytest.raises(ValueError, match="x must not be empty"):
        K.conv2d_forward(np.zeros((0, 3, 8, 8), np.float32), w)


def test_input_smaller_than_kernel(rng):
    x, w = _conv_args(rng)
    with pytest.raises(ValueError, match=r"smaller than the kernel \(3, 3\)"):
        K.conv2d_forward(x[:, :, :2, :2], w)
    with pytest.raises(ValueError, match="smaller than the pooling window"):
        K.maxpool2d_forward(x[:, :, :1, :1], 2)


def test_bad_stride_padding(rng):
    x, w = _conv_args(rng)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        K.conv2d_forward(x, w, stride=0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        K.conv2d_forward(x, w, padding=-1)
    with pytest.raises(ValueError, match=r"padding must be in \[0, kernel/2\]"):
        K.maxpool2d_forward(x, 2, padding=2)
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        K.conv2d_forward(x, w, stride=(1, 1, 1))


@pytest.mark.parametrize("layout", ["strided", "fortran", "transposed"])
def test_odd_layouts_are_copied(rng, layout):
    x, w = _conv_args(rng)
    big = rng.standard_normal((2, 3, 8, 16)).astype(np.float32)
    odd = {"strided": big[:, :, :, ::2], "fortran": np.asfortranarray(x),
           "transposed": np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)}[layout]
    assert not odd.flags.c_contiguous
    np.testing.assert_array_equal(K.conv2d_forward(odd, w), K.conv2d_forward(np.ascontiguousarray(odd), w))
    wf = np.asfortranarray(w)
    np.testing.assert_array_equal(K.conv2d_forward(x, wf), K.conv2d_forward(x, w))
    seq = rng.standard_normal((5, 4, 6)).astype(np.float32).transpose(1, 0, 2)  # (4, 5, 6) view
    wi = rng.standard_normal((12, 6)).astype(np.float32)
    wh = rng.standard_normal((12, 4)).astype(np.float32)
    b = np.zeros(12, np.float32)
    np.testing.assert_array_equal(K.gru_forward(seq, wi, wh, b, b)[0],
                                  K.gru_forward(np.ascontiguousarray(seq), wi, wh, b, b)[0])


def test_gradient_buffers_must_be_exact(rng):
    x, w = _conv_args(rng)
    dy = np.ones((2, 4, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"dw must be a writable C-contiguous float32 array of shape \(4, 3, 3, 3\)"):
        K.conv2d_backward(x, w, dy, dw=np.zeros((3, 3, 3, 4), np.float32).transpose(3, 0, 1, 2))
    with pytest.raises(ValueError, match="db must be"):
        K.conv2d_backward(x, w, dy, db=np.zeros(4, np.float64))


def test_recurrent_weight_shapes(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"w_ih must have shape \(4\*H, D\), got \(6, 4\)"):
        K.lstm_forward(x, np.zeros((6, 4), np.float32), np.zeros((6, 1), np.float32),
                       np.zeros(6, np.float32), np.zeros(6, np.float32))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(12, 4\), got \(12, 3\)"):
        K.gru_forward(x, np.zeros((12, 4), np.float32), np.zeros((12, 3), np.float32),
                      np.zeros(12, np.float32), np.zeros(12, np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \(N, T, 5\), got \(2, 3, 4\)"):
        K.rnn_forward(x, np.zeros((7, 5), np.float32), np.zeros((7, 7), np.float32),
                      np.zeros(7, np.float32), np.zeros(7, np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 7\)"):
        K.rnn_forward(x, np.zeros((7, 4), np.float32), np.zeros((7, 7), np.float32),
                      np.zeros(7, np.float32), np.zeros(7, np.float32), h0=np.zeros((7,), np.float32))


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"activation must be one of .*'relu'.*got 'swish'"):
        K.activation_forward(np.zeros(3, np.float32), "swish")


def test_thread_count_must_be_positive():
    with pytest.raises(ValueError, match="n must be >= 1"):
        spark_nn.set_num_threads(0)
