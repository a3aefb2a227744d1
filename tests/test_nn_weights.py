"""Per-row weights in the losses (a fit's weightCol): values and gradients against torch's
per-row losses times the weights, in float64; weight 1 is bitwise the unweighted loss."""
import numpy as np
import pytest
import torch

from spark_nn.nn.losses import BinaryCrossEntropy, Huber, MeanAbsoluteError, MeanSquaredError, SoftmaxCrossEntropy


def _torch_weighted(fn, out, y, w):
    o = torch.tensor(out.astype(np.float64), requires_grad=True)
    per = fn(o, y)
    per = per.reshape(len(out), -1).mean(dim=1) if per.dim() > 1 else per
    total = (per * torch.tensor(w.astype(np.float64))).sum()
    total.backward()
    return total.item(), o.grad.numpy()


@pytest.mark.parametrize("n", [1, 6])
def test_weighted_losses_match_torch(rng, n):
    w = rng.choice([0.0, 0.5, 1.0, 3.0], size=n).astype(np.float32)
    out = rng.standard_normal((n, 4)).astype(np.float32)
    labels = rng.integers(0, 4, n)
    cases = [
        (SoftmaxCrossEntropy(), labels,
         lambda o, y: torch.nn.functional.cross_entropy(o, torch.tensor(y), reduction="none")),
        (BinaryCrossEntropy(), rng.integers(0, 2, (n, 4)).astype(np.float32),
         lambda o, y: torch.nn.functional.binary_cross_entropy_with_logits(o, torch.tensor(y, dtype=o.dtype),
                                                                           reduction="none").sum(dim=1)),
        (MeanSquaredError(target="labels"), rng.standard_normal((n, 4)).astype(np.float32),
         lambda o, y: torch.nn.functional.mse_loss(o, torch.tensor(y, dtype=o.dtype), reduction="none")),
        (MeanAbsoluteError(), rng.standard_normal((n, 4)).astype(np.float32),
         lambda o, y: torch.nn.functional.l1_loss(o, torch.tensor(y, dtype=o.dtype), reduction="none")),
        (Huber(delta=0.6), rng.standard_normal((n, 4)).astype(np.float32),
         lambda o, y: torch.nn.functional.huber_loss(o, torch.tensor(y, dtype=o.dtype), reduction="none", delta=0.6)),
    ]
    for loss, y, fn in cases:
        total, grad = loss(out, y, w)
        ref, ref_grad = _torch_weighted(fn, out, y, w)
        assert total == pytest.approx(ref, rel=1e-6, abs=1e-6), type(loss).__name__
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6, err_msg=type(loss).__name__)
        plain_total, plain_grad = loss(out, y)
        ones_total, ones_grad = loss(out, y, np.ones(n, np.float32))
        assert ones_total == plain_total and ones_grad.tobytes() == plain_grad.tobytes(), type(loss).__name__


def test_weighted_metric_sums():
    out = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], np.float32)
    sce = SoftmaxCrossEntropy()
    # rows 0 and 1 right, row 2 wrong: weights 0.5 + 2 of 0.5 + 2 + 4
    assert sce.metric_sums(out, np.array([0, 1, 1]), np.array([0.5, 2.0, 4.0], np.float32)).tolist() == [2.5]
    mse = MeanSquaredError(target="labels")
    sums = mse.metric_sums(np.array([[1.0], [3.0]], np.float32), np.array([[0.0], [0.0]], np.float32),
                           np.array([2.0, 0.5], np.float32))
    assert sums.tolist() == [2.0 * 1 + 0.5 * 9, 2.0 * 1 + 0.5 * 3]
