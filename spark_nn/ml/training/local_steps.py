"""How many steps each round takes (the localSteps param): a fixed k, or 'auto', which
measures the rounds' fixed cost during warm-up rounds of 1, 2, 4, ... steps and then picks k
once."""
import logging
import math

import numpy as np

log = logging.getLogger("spark_nn")


class FixedLocalSteps:
    """localSteps = k: every round takes k steps (1: synchronous, one treeAggregate per step)."""

    def __init__(self, k):
        self.k = int(k)

    def next_round(self, done_steps):
        return self.k

    def peek(self, done_steps):
        """The k of the round starting after done_steps steps, if already known (never timing)."""
        return self.k

    def observe(self, k, seconds, task_seconds):
        pass

    def state(self):
        return None

    def load_state(self, state):
        pass


class AutoLocalSteps:
    """localSteps = 'auto' (post-local SGD): warm-up rounds of 1, 2, 4, ... steps (the largest
    power of two not above the steps done so far, plus one), which also measure what a round
    costs beyond its tasks' compute (Spark's fixed cost F: scheduling, shipping the payload,
    result transfer, the driver's update) and the compute C of one step; then local rounds of
    k steps with F at most a twentieth of a round: F / (F + k C) <= 1/20, i.e. k >= 19 F / C; the
    epoch is cut into as many equal rounds as that allows (at most one round an epoch). The
    first REVISE_ROUNDS rounds at that k measure F and C again on the rounds the fit actually
    runs (their payload: e.g. an Embedding round ships the rows of k steps, more than a warm-up
    round's), and k is chosen again from them, once, for the rest of the fit; so the rest of the
    fit does not depend on timing noise, and a checkpoint keeps k. The warm-up's k depends only
    on the steps done, never on timing.

    Why: a quarter (used first) left a 60k-row epoch 1.3x longer for the same accuracy
    (k = 32 instead of 128), and a tenth (used next: k = 82-105 there, 20-28 rounds an epoch)
    still left Spark 7-12 % of the epoch; on that set rounds of 200 and 400 steps ended two
    epochs at the same test accuracy as rounds of 82-105 (0.9821, 0.9821 vs 0.9825; 16 and 32
    steps: 0.981), in 9.6-10.1 s instead of 11.0-12.2 s for the second epoch (benchmarks/
    RESULTS.md). A synchronous warm-up of 1 % of a 30-epoch fit on 60k rows was 562 rounds
    (about a minute of Spark's fixed cost); the doubling one takes 10.

    The warm-up ends early, at the first round that would take its rounds' fixed cost past
    FIXED_SHARE of the fit's compute (total steps x C, as measured so far): a round that costs
    several steps' compute cannot be afforded a few steps at a time in a short fit. ResNet-18
    ships 134 MB both ways (weights and Adam's moments): about 1.5 s beside 0.3 s a step, so its
    four warm-up rounds of 1, 2, 4 and 3 steps added 6-9 s to a 2-epoch fit of 128 steps (40 s of
    compute). Where rounds are cheap (the seed CNN on 60k rows: 80 ms beside 8 ms a step)
    nothing changes."""

    FIXED_SHARE = 0.05
    REVISE_ROUNDS = 2

    def __init__(self, steps_per_epoch, total_steps=None):
        self.steps_per_epoch = int(steps_per_epoch)
        self.total = total = int(total_steps or steps_per_epoch)
        # warm-up: at least 10 steps, 1% of the fit for convergence, at most an epoch (on
        # digits, 10 synchronous steps end as accurate as a whole synchronous first epoch)
        self.warmup = min(self.steps_per_epoch, max(10, total // 100))
        self.samples = []  # (fixed seconds, compute seconds per step) of the warm-up's rounds
        self.real = []  # the same of the first rounds at the chosen k
        self.pending = 0  # rounds at the chosen k still to measure before k is final
        self.k = None
        self.choice = None  # what was measured and picked, for the summary

    def next_round(self, done_steps):
        if self.k is None and self.samples and (done_steps >= self.warmup or self._warmup_spent()):
            self.k = self.choose()
        if self.k is not None:
            return self.k
        return self._ramp(done_steps)

    def _warmup_spent(self):
        """True when one more warm-up round (at the median fixed cost so far) would take the
        warm-up's fixed cost past FIXED_SHARE of the fit's compute."""
        fixed = [f for f, _ in self.samples]
        compute = float(np.median([c for _, c in self.samples]))
        return sum(fixed) + float(np.median(fixed)) > self.FIXED_SHARE * self.total * compute

    def _ramp(self, done_steps):
        """Warm-up rounds: the largest power of two <= done_steps + 1 (1, 2, 4, ... at 0, 1, 3, 7,
        ... steps done), ending at the warm-up's last step."""
        return max(1, min(1 << (int(done_steps + 1).bit_length() - 1), self.warmup - done_steps))

    def peek(self, done_steps):
        """The k of the round starting after done_steps steps, or None while it depends on what
        is still to be measured (in the warm-up after its first round, which may end it)."""
        if self.k is not None:
            return None if self.pending else self.k
        return self._ramp(done_steps) if done_steps == 0 else None

    def _k_for(self, samples):
        """(k, fixed s, compute s per step) from the medians of (fixed, compute) samples (medians:
        the first rounds include worker start-up and one-off costs)."""
        fixed = float(np.median([f for f, _ in samples]))
        compute = max(float(np.median([c for _, c in samples])), 1e-6)
        need = (1 - self.FIXED_SHARE) / self.FIXED_SHARE * fixed / compute
        # as many equal rounds an epoch as keep each at k >= need: no short tail round paying a
        # whole round's fixed cost for a few steps
        rounds = max(1, int(self.steps_per_epoch // max(need, 1.0)))
        return math.ceil(self.steps_per_epoch / rounds), fixed, compute

    def choose(self):
        k, fixed, compute = self._k_for(self.samples)
        log.info("spark_nn: localSteps auto: fixed cost %.1f ms, compute %.1f ms per step -> k = %d",
                 fixed * 1e3, compute * 1e3, k)
        self.choice = {"fixedMs": fixed * 1e3, "computeMs": compute * 1e3, "sparkShare": fixed / (fixed + k * compute),
                       "warmupRounds": len(self.samples), "k": k, "warmupK": k}
        self.pending = self.REVISE_ROUNDS
        return k

    def _revise(self):
        k, fixed, compute = self._k_for(self.real)
        log.info("spark_nn: localSteps auto: rounds of %d steps: fixed cost %.1f ms, compute %.1f ms per step "
                 "-> k = %d", self.k, fixed * 1e3, compute * 1e3, k)
        self.choice.update(fixedMs=fixed * 1e3, computeMs=compute * 1e3, sparkShare=fixed / (fixed + k * compute),
                           k=k, measuredRounds=len(self.real))
        self.k = k

    def observe(self, k, seconds, task_seconds):
        if k < 1:
            return
        sample = (max(seconds - task_seconds, 0.0), task_seconds / k)
        if self.k is None:
            self.samples.append(sample)
        elif self.pending and k == self.k:
            self.real.append(sample)
            self.pending -= 1
            if not self.pending:
                self._revise()

    def state(self):
        return {"k": self.k, "choice": self.choice, "pending": self.pending}

    def load_state(self, state):
        if state and state.get("k"):
            self.k = int(state["k"])
            self.choice = state.get("choice")
            self.pending = int(state.get("pending", 0))
