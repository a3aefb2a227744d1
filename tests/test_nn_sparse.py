"""Lazy steps in an Embedding table: the optimizer updates only the rows a minibatch touches
(as torch's SparseAdam), the table's gradient is written row-sparse, and with every row touched
a lazy step is bitwise the dense one."""
import numpy as np
import pytest
import torch

from spark_nn.nn import builders
from spark_nn.nn.optimizers import SGD, Adam, AdamW

OPTIMIZERS = [lambda: SGD(lr=0.1), lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
              lambda: Adam(lr=0.01, clip_norm=0.5), lambda: Adam(lr=0.01, weight_decay=0.1),
              lambda: AdamW(lr=0.01, weight_decay=0.1)]


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_lazy_step_with_every_entry_active_is_bitwise_the_dense_step(rng, make):
    p0 = rng.standard_normal(40).astype(np.float32)
    dense, lazy, pd, pl = make(), make(), p0.copy(), p0.copy()
    every = np.arange(40)
    for _ in range(5):
        g = rng.standard_normal(40).astype(np.float32)
        dense.step(pd, g)
        lazy.step(pl, g[every], active=every)
    assert pd.tobytes() == pl.tobytes()
    for key in dense.state_keys():
        assert getattr(dense, key).tobytes() == getattr(lazy, key).tobytes()


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_lazy_step_leaves_inactive_entries_and_their_state_alone(rng, make):
    p, opt = rng.standard_normal(30).astype(np.float32), make()
    opt.step(p, rng.standard_normal(30).astype(np.float32))  # every entry gets state
    before, state = p.copy(), {k: getattr(opt, k).copy() for k in opt.state_keys()}
    active = np.array([2, 3, 17, 29])
    opt.step(p, rng.standard_normal(4).astype(np.float32), active=active)
    rest = np.setdiff1d(np.arange(30), active)
    assert p[rest].tobytes() == before[rest].tobytes()
    assert not np.any(p[active] == before[active])
    for key, old in state.items():
        assert getattr(opt, key)[rest].tobytes() == old[rest].tobytes()


def test_lazy_adam_matches_torch_sparse_adam(rng):
    vocab, dim = 12, 3
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    ours, flat = Adam(lr=0.05), table.ravel().copy()
    emb = torch.nn.Embedding(vocab, dim, sparse=True)
    emb.weight.data = torch.from_numpy(table.astype(np.float64))
    theirs = torch.optim.SparseAdam(emb.parameters(), lr=0.05)
    for _ in range(6):
        ids = rng.integers(0, vocab, size=5)  # repeats and untouched rows
        upstream = rng.standard_normal((5, dim))
        theirs.zero_grad()
        (emb(torch.from_numpy(ids)) * torch.from_numpy(upstream)).sum().backward()
        theirs.step()
        rows = np.unique(ids)
        grad = np.zeros((vocab, dim), np.float32)
        np.add.at(grad, ids, upstream.astype(np.float32))
        active = (rows[:, None] * dim + np.arange(dim)).ravel()
        ours.step(flat, grad.ravel()[active], active=active)
    np.testing.assert_allclose(flat.reshape(vocab, dim), emb.weight.detach().numpy(), rtol=1e-5, atol=1e-6)


def token_net(vocab, seed=0):
    return builders.rnn([5], 3, (4,), vocab_size=vocab, embedding_dim=3, seed=seed)


def test_embedding_gradient_rows_are_those_of_the_batch_only(rng):
    net = token_net(20)
    for _ in range(3):  # each backward clears the rows the previous one wrote
        x = rng.integers(0, 20, size=(6, 4)).astype(np.float32)
        y = rng.integers(0, 3, size=6)
        _, grad, _ = net.loss_and_grad(None, x, y)
        off, vocab, dim = net.table
        table = grad[off:off + vocab * dim].reshape(vocab, dim)
        rows = np.unique(x.astype(int))
        assert np.array_equal(net.layers[0].touched, rows)
        assert not np.any(np.delete(table, rows, axis=0))
        assert np.any(table[rows])
    active = net.active_index(np.array([1, 4]))
    assert active.tolist() == [3, 4, 5, 12, 13, 14] + list(range(60, net.num_params))


def test_train_step_touching_every_row_is_bitwise_the_dense_step(rng):
    vocab = 6
    lazy, dense = token_net(vocab), token_net(vocab)
    ol, od = Adam(lr=0.01, clip_norm=1.0), Adam(lr=0.01, clip_norm=1.0)
    for _ in range(4):
        x = np.tile(np.arange(vocab), 4)[:24].reshape(6, 4).astype(np.float32)  # every id, every step
        x = rng.permuted(x, axis=1)
        y = rng.integers(0, 3, size=6)
        lazy.train_step(ol, x, y)
        _, grad, n = dense.loss_and_grad(None, x, y)
        od.step(dense.params, grad / np.float32(n))
    assert lazy.params.tobytes() == dense.params.tobytes()


def test_train_step_in_a_large_table_changes_the_touched_rows_only(rng):
    net, opt = token_net(500), Adam(lr=0.01)
    before = net.params.copy()
    x = rng.integers(1, 40, size=(8, 4)).astype(np.float32)
    for _ in range(3):
        net.train_step(opt, x, rng.integers(0, 3, size=8))
    off, vocab, dim = net.table
    changed = np.flatnonzero(np.any((net.params != before)[off:off + vocab * dim].reshape(vocab, dim), axis=1))
    assert set(changed) <= set(np.unique(x.astype(int))) and len(changed) > 0
