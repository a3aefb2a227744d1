"""Optimizers over one flat float32 parameter vector, updated in place.

``step(params, grad)`` takes the mean gradient, clips it by global norm when ``clip_norm`` is
set (recurrent nets need it), applies the learning-rate schedule and updates ``params``. The
state is plain arrays (``state_dict`` / ``load_state_dict``), so checkpoints need no pickle.
"""
import math

import numpy as np

from spark_nn import kernels as K


class Schedule:
    """Learning rate at step t (0-based) from the base rate.

    kind: 'constant'; 'step' (times gamma every step_size steps); 'exponential' (times gamma
    each step); 'cosine' (to min_lr over total_steps). warmup_steps ramp up linearly first."""

    KINDS = ("constant", "step", "exponential", "cosine")

    def __init__(self, kind="constant", gamma=0.1, step_size=1000, total_steps=1000, min_lr=0.0, warmup_steps=0):
        if kind not in self.KINDS:
            raise ValueError(f"schedule must be one of {list(self.KINDS)}, got {kind!r}")
        self.kind, self.gamma, self.step_size = kind, float(gamma), int(step_size)
        self.total_steps, self.min_lr, self.warmup_steps = int(total_steps), float(min_lr), int(warmup_steps)

    def __call__(self, base_lr, t):
        if self.warmup_steps and t < self.warmup_steps:
            return base_lr * (t + 1) / self.warmup_steps
        if self.kind == "step":
            return base_lr * self.gamma ** (t // max(self.step_size, 1))
        if self.kind == "exponential":
            return base_lr * self.gamma ** t
        if self.kind == "cosine":
            frac = min(t / max(self.total_steps, 1), 1.0)
            return self.min_lr + 0.5 * (base_lr - self.min_lr) * (1 + math.cos(math.pi * frac))
        return base_lr

    def config(self):
        return {"kind": self.kind, "gamma": self.gamma, "step_size": self.step_size,
                "total_steps": self.total_steps, "min_lr": self.min_lr, "warmup_steps": self.warmup_steps}


def clip_by_global_norm(grad, clip_norm):
    """Scales grad in place so its L2 norm is at most clip_norm; returns the norm before.

    Our own reduction (csrc/optim.c), not np.dot: numpy's BLAS would wake its own thread pool,
    which then competes with our OpenMP threads for the cores (measured 5x slower training
    steps); in double, in a fixed order."""
    if grad.dtype == np.float32 and grad.flags.c_contiguous and grad.size:
        norm = math.sqrt(K.sum_of_squares(grad))
    else:
        norm = math.sqrt(float(np.sum(np.square(grad, dtype=np.float64))))
    if clip_norm is not None and norm > clip_norm > 0:
        grad *= np.float32(clip_norm / norm)
    return norm


class Optimizer:
    name = "optimizer"
    READS_GRAD_ONLY = False  # whether _update(params, grad, lr) leaves a float32 grad as it is

    def __init__(self, lr=0.01, clip_norm=None, schedule=None, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"learning rate (stepSize) must be > 0, got {lr}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        self.lr, self.clip_norm, self.weight_decay = float(lr), clip_norm, float(weight_decay)
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(**(schedule or {}))
        self.t = 0
        self.last_grad_norm = None  # the gradient's L2 norm before clipping, at the last step (with clip_norm)

    def step(self, params, grad, active=None):
        """One step in place on params from the mean gradient grad. active: sorted flat indices
        of the only entries whose gradient may be non-zero, grad then holding those entries'
        gradient only; the step is lazy: the other entries and their state do not change (no
        momentum decay, no weight decay), as in torch's SparseAdam. With every index active it
        is bitwise the dense step."""
        grad = np.asarray(grad)
        # without clipping neither the gradient's norm is needed nor (where the update only
        # reads the gradient) a copy: no pass over a model-sized array before the update's own
        # (ResNet-18: two of 45 MB a step)
        self.last_grad_norm = None
        if not (active is None and self.clip_norm is None and self.READS_GRAD_ONLY and grad.dtype == np.float32):
            grad = self._own_copy(grad) if active is None else np.array(grad, dtype=np.float32, copy=True)
            if self.clip_norm is not None:
                self.last_grad_norm = clip_by_global_norm(grad, self.clip_norm)
        lr = np.float32(self.schedule(self.lr, self.t))
        if active is None:
            self._update(params, grad, lr)
        else:
            self._update_active(params, grad, lr, active)
        self.t += 1
        return float(lr)

    def _own_copy(self, grad):
        """grad as float32 in a buffer the optimizer keeps from step to step (clipping, and SGD's
        weight decay and Nesterov term, write into it): a new array each step is one the size of
        the model, which the allocator maps from the kernel and the kernel zeroes page by page
        (ResNet-18: 45 MB; 7.5-9.3 ms of system time in a 305-317 ms step at batch 16 on one
        thread, benchmarks/RESULTS.md)."""
        work = self._kept("_work", grad.shape)
        np.copyto(work, grad, casting="unsafe")
        return work

    def _kept(self, name, shape):
        """A float32 scratch array of this shape that the optimizer keeps under name (never part
        of its state or config)."""
        buf = getattr(self, name, None)
        if buf is None or buf.shape != tuple(shape):
            buf = np.empty(shape, dtype=np.float32)
            setattr(self, name, buf)
        return buf

    def _update(self, params, grad, lr):
        raise NotImplementedError

    def state_keys(self):
        """The per-parameter state arrays (each shaped as the parameters), in a fixed order."""
        return []

    def init_state(self, params):
        """Allocates zero state arrays for params if there are none yet."""
        for key in self.state_keys():
            if getattr(self, key) is None:
                setattr(self, key, np.zeros_like(params))

    def _update_active(self, params, grad, lr, active):
        """_update on the gathered active entries of params and the state, scattered back."""
        self.init_state(params)
        full = {key: getattr(self, key) for key in self.state_keys()}
        sub = params[active]
        for key, arr in full.items():
            setattr(self, key, arr[active])
        try:
            self._update(sub, grad, lr)
            for key, arr in full.items():
                arr[active] = getattr(self, key)
        finally:
            for key, arr in full.items():
                setattr(self, key, arr)
        params[active] = sub

    def state_dict(self):
        return {"t": np.array(self.t, dtype=np.int64)}

    def load_state_dict(self, state):
        self.t = int(state["t"])

    def config(self):
        return {"type": self.name, "lr": self.lr, "clip_norm": self.clip_norm,
                "weight_decay": self.weight_decay, "schedule": self.schedule.config()}


class SGD(Optimizer):
    """SGD with momentum (PyTorch's form: v = mu v + g; p -= lr v) or Nesterov; weight_decay
    adds an L2 term to the gradient."""

    name = "sgd"

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, **kw):
        super().__init__(lr, **kw)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.velocity = None

    def state_keys(self):
        return ["velocity"] if self.momentum else []

    def _update(self, params, grad, lr):
        tmp = self._kept("_tmp", params.shape)  # the products, in place of new arrays (_own_copy)
        if self.weight_decay:
            grad += np.multiply(params, np.float32(self.weight_decay), out=tmp)
        if self.momentum:
            if self.velocity is None:
                self.velocity = np.zeros_like(params)
            v = self.velocity
            v *= np.float32(self.momentum)
            v += grad
            if self.nesterov:
                grad += np.multiply(v, np.float32(self.momentum), out=tmp)
            else:
                grad = v
        params -= np.multiply(grad, lr, out=tmp)

    def state_dict(self):
        d = super().state_dict()
        if self.velocity is not None:
            d["velocity"] = self.velocity.copy()
        return d

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.velocity = np.array(state["velocity"], dtype=np.float32) if "velocity" in state else None

    def config(self):
        return dict(super().config(), momentum=self.momentum, nesterov=self.nesterov)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is L2 added to the gradient."""

    name = "adam"
    READS_GRAD_ONLY = True  # csrc/optim.c's g is const; _update_reference makes a new array
    decoupled = False

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, **kw):
        super().__init__(lr, **kw)
        for n, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{n} must be in [0, 1), got {b}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = self.v = None

    def state_keys(self):
        return ["m", "v"]

    def _coefficients(self, lr):
        """(bias-corrected step, coupled L2, decoupled decay factor) of this step, as float32."""
        t = self.t + 1
        step = lr * np.float32(math.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t))
        l2 = np.float32(self.weight_decay) if self.weight_decay and not self.decoupled else np.float32(0)
        decay = np.float32(1 - lr * self.weight_decay) if self.weight_decay and self.decoupled else np.float32(1)
        return step, l2, decay

    @staticmethod
    def _fused(params, grad):
        return params.dtype == grad.dtype == np.float32 and params.flags.c_contiguous and grad.flags.c_contiguous

    def _update(self, params, grad, lr):
        """One fused pass in C (csrc/optim.c); _update_reference is the same in numpy."""
        if self.m is None:
            self.m, self.v = np.zeros_like(params), np.zeros_like(params)
        if not (self._fused(params, grad) and params.shape == grad.shape):
            return self._update_reference(params, grad, lr)
        step, l2, decay = self._coefficients(lr)
        K.adam_update(params, grad, self.m, self.v, step, self.beta1, self.beta2, self.eps, l2, decay)

    def _update_active(self, params, grad, lr, active):
        """The lazy step in one pass in C over the active entries (no gathered copies)."""
        if not (self._fused(params, grad) and params.ndim == 1 and isinstance(active, np.ndarray)
                and active.dtype == np.int64):
            return super()._update_active(params, grad, lr, active)
        self.init_state(params)
        step, l2, decay = self._coefficients(lr)
        K.adam_update_at(params, grad, self.m, self.v, active, step, self.beta1, self.beta2, self.eps, l2, decay)

    def _update_reference(self, params, grad, lr):
        if self.weight_decay and not self.decoupled:
            grad = grad + np.float32(self.weight_decay) * params  # a new array: the caller's may be grad
        if self.m is None:
            self.m, self.v = np.zeros_like(params), np.zeros_like(params)
        b1, b2 = np.float32(self.beta1), np.float32(self.beta2)
        self.m *= b1
        self.m += (1 - b1) * grad
        self.v *= b2
        self.v += (1 - b2) * grad * grad
        t = self.t + 1
        step = lr * np.float32(math.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t))
        if self.weight_decay and self.decoupled:
            params *= np.float32(1 - lr * self.weight_decay)
        params -= step * self.m / (np.sqrt(self.v) + np.float32(self.eps))

    def state_dict(self):
        d = super().state_dict()
        if self.m is not None:
            d["m"], d["v"] = self.m.copy(), self.v.copy()
        return d

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "m" in state:
            self.m = np.array(state["m"], dtype=np.float32)
            self.v = np.array(state["v"], dtype=np.float32)

    def config(self):
        return dict(super().config(), beta1=self.beta1, beta2=self.beta2, eps=self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr=0.001, weight_decay=0.01, **kw):
        super().__init__(lr, weight_decay=weight_decay, **kw)


OPTIMIZERS = {c.name: c for c in (SGD, Adam, AdamW)}


def make_optimizer(name, **kw):
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[key](**kw)


def optimizer_from_config(cfg):
    cfg = dict(cfg)
    kind = cfg.pop("type")
    sched = cfg.pop("schedule", None)
    return make_optimizer(kind, schedule=Schedule(**sched) if sched else None, **cfg)
