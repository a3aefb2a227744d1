"""What a fit did, kept on the fitted model as ``model.summary``: the loss of every round,
per-epoch metrics, timings and local steps, and a plot of them."""
import numpy as np


class TrainingSummary:
    """What a fit did: the mean loss of each round (objectiveHistory: one entry per synchronous
    step, or per local round of k steps, which ends at step objectiveSteps[i]), per-epoch
    metrics, timings and local steps."""

    def __init__(self):
        self.objectiveHistory = []
        self.objectiveSteps = []
        # dicts: epoch, loss, the loss's metrics (accuracy; rmse and mae), val_loss and val_ metrics,
        # seconds, steps
        self.epochs = []
        self.totalIterations = 0
        self.stoppedEarly = False
        self.bestEpoch = None
        # localSteps='auto': what it measured during the synchronous warm-up and the k it chose
        # (fixedMs, computeMs per step, sparkShare, warmupRounds, k); None for a fixed k
        self.localStepsAuto = None

    @property
    def trainingLoss(self):
        return [e["loss"] for e in self.epochs]

    @property
    def validationLoss(self):
        return [e["val_loss"] for e in self.epochs if e.get("val_loss") is not None]

    def asDict(self):
        return {"objectiveHistory": self.objectiveHistory, "objectiveSteps": self.objectiveSteps,
                "epochs": self.epochs,
                "totalIterations": self.totalIterations, "stoppedEarly": self.stoppedEarly,
                "bestEpoch": self.bestEpoch, "localStepsAuto": self.localStepsAuto}

    def plot(self, path=None):
        """Loss per step and per-epoch accuracy (classifiers) or RMSE (regressors) curves (matplotlib, the 'plot' extra); saved as a
        PNG when path is given. Returns the matplotlib Figure."""
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("TrainingSummary.plot needs matplotlib: pip install 'spark_nn[plot]'") from None
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        from matplotlib.ticker import MaxNLocator

        steps = self.objectiveSteps or range(1, len(self.objectiveHistory) + 1)
        ax1.plot(steps, self.objectiveHistory, lw=0.8, label="round loss")
        if self.epochs:
            ends = np.cumsum([e["steps"] for e in self.epochs])
            ax1.plot(ends, self.trainingLoss, "o-", label="epoch loss")
            if self.validationLoss:
                ax1.plot(ends[:len(self.validationLoss)], self.validationLoss, "s-", label="validation loss")
        ax1.set_xlabel("step")
        ax1.set_ylabel("loss")
        ax1.set_yscale("log")
        ax1.legend()
        epochs = [e["epoch"] for e in self.epochs]
        metric = "rmse" if any("rmse" in e for e in self.epochs) else "accuracy"  # a regressor's, a classifier's
        for key, label in ((metric, "train"), ("val_" + metric, "validation")):
            vals = [e.get(key) for e in self.epochs]
            if any(v is not None for v in vals):
                ax2.plot(epochs, vals, "o-", label=label)
        ax2.set_xlabel("epoch")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("RMSE (label units)" if metric == "rmse" else "accuracy")
        ax2.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
            plt.close(fig)
        return fig

    def __repr__(self):
        last = self.epochs[-1] if self.epochs else {}
        return f"TrainingSummary(epochs={len(self.epochs)}, iterations={self.totalIterations}, last={last})"
