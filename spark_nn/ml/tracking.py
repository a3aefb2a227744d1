"""MLflow tracking of a fit (param ``mlflowLogging``: 'auto' logs when an MLflow run is active
on the driver, 'off' never). Nothing here imports mlflow: a fit looks for the module the user's
own ``import mlflow`` loaded, so a fit without MLflow costs nothing.

A fit logs, to the active run (or, when that run already holds a spark_nn fit, to a run nested
under it): the estimator's params, each epoch's metrics with ``step=epoch`` (loss, accuracy or
rmse/mae, their validation values, seconds, local steps) as the epoch ends, the summary as
``summary.json`` and its curves as ``curves.png`` (with matplotlib), and the fitted model as an
MLflow pyfunc model (``model/``: our saved network and the input it reads, loaded by
spark_nn/ml/mlflow_model.py from code: nothing pickled), so that
``mlflow.pyfunc.load_model(uri).predict(pandas_df)`` scores without Spark. Fits made by
``fitMultiple`` (CrossValidator, TrainValidationSplit: possibly in worker threads, where
MLflow's fluent API sees no active run) each log to a nested run of the run that was active
where fitMultiple was called. Only MlflowClient calls with explicit run ids are used, so the
thread a fit runs in does not matter.
"""
import json
import os
import sys
import tempfile
import threading
import time
import warnings

_local = threading.local()  # .parent: (run id, experiment id) of a fitMultiple's caller
_PLOT_LOCK = threading.Lock()
LOGGED_KEYS = ("loss", "accuracy", "rmse", "mae", "val_loss", "val_accuracy", "val_rmse", "val_mae", "seconds",
               "local_steps")


def _mlflow():
    return sys.modules.get("mlflow")


def active_run_ids():
    """(run id, experiment id) of the run active on this thread, or None (or no mlflow)."""
    mlflow = _mlflow()
    run = mlflow.active_run() if mlflow is not None else None
    return (run.info.run_id, run.info.experiment_id) if run is not None else None


class NestedFits:
    """fitMultiple's iterator, each fit it makes logging to a run nested under parent."""

    def __init__(self, inner, parent):
        self.inner, self.parent = inner, parent

    def __iter__(self):
        return self

    def __next__(self):
        before = getattr(_local, "parent", None)
        _local.parent = self.parent
        try:
            return next(self.inner)
        finally:
            _local.parent = before


class FitLog:
    """One fit's MLflow logging; every method does nothing when the fit is not logged."""

    def __init__(self, estimator):
        self.client = self.run_id = None
        mlflow = _mlflow()
        mode = estimator.getOrDefault("mlflowLogging") if estimator.hasParam("mlflowLogging") else "off"
        if mode == "off" or mlflow is None:
            return
        from mlflow.tracking import MlflowClient

        nested = getattr(_local, "parent", None)
        target = nested or active_run_ids()
        if target is None:
            return
        self.client = MlflowClient()
        run_id, experiment = target
        name = type(estimator).__name__
        if nested is None and self.client.get_run(run_id).data.tags.get("spark_nn.estimator") is None:
            self.run_id = run_id  # the user's run: its first spark_nn fit logs there
        else:  # a candidate of a fitMultiple, or a second fit in the same run
            self.run_id = self.client.create_run(experiment, tags={"mlflow.parentRunId": run_id,
                                                                   "mlflow.runName": f"{name} fit"}).info.run_id
            self.own = True
        self.client.set_tag(self.run_id, "spark_nn.estimator", name)
        from mlflow.entities import Param

        params = [Param(p.name, _text(v)) for p, v in sorted(estimator.extractParamMap().items(),
                                                               key=lambda kv: kv[0].name)]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    @property
    def active(self):
        return self.run_id is not None

    def epoch(self, record):
        """Logs a finished epoch's metrics (a DistributedTrainer on_epoch callback)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(record[k]), now, int(record["epoch"])) for k in LOGGED_KEYS
                   if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)]
        if metrics:
            try:
                self.client.log_batch(self.run_id, metrics=metrics)
            except Exception as e:  # noqa: BLE001 - the tracking server's trouble must not end a fit
                warnings.warn(f"MLflow: could not log epoch {record['epoch']}'s metrics: {e}")

    def finish(self, model, fcol):
        """Logs the summary, its curves and the model as a pyfunc model; ends a nested run. A
        failure to log is a warning: the fitted model is returned all the same."""
        if not self.active:
            return
        try:
            self._log_results(model, fcol)
        except Exception as e:  # noqa: BLE001 - the tracking server's trouble must not lose a fit
            warnings.warn(f"MLflow: could not log the fit's summary or model: {e}")

    def _log_results(self, model, fcol):
        try:
            with tempfile.TemporaryDirectory(prefix="spark_nn_mlflow_") as tmp:
                with open(os.path.join(tmp, "summary.json"), "w") as f:
                    json.dump(model.summary.asDict(), f, indent=1, default=float)
                self.client.log_artifact(self.run_id, os.path.join(tmp, "summary.json"))
                try:
                    with _PLOT_LOCK:  # matplotlib's pyplot is not thread-safe (CrossValidator's parallel fits)
                        model.summary.plot(os.path.join(tmp, "curves.png"))
                    self.client.log_artifact(self.run_id, os.path.join(tmp, "curves.png"))
                except ImportError:
                    pass
                local = os.path.join(tmp, "model")
                save_pyfunc(model, fcol, local)
                self.client.log_artifacts(self.run_id, local, artifact_path="model")
        finally:
            if getattr(self, "own", False):
                self.client.set_terminated(self.run_id)

    def fail(self):
        if self.active and getattr(self, "own", False):
            self.client.set_terminated(self.run_id, status="FAILED")


def _text(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return str(value)[:6000]
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))[:6000]
    return f"<{type(value).__name__}>"


def pyfunc_spec(model, fcol):
    """What the pyfunc model needs besides the network: the input column, its kind and shape,
    and what the outputs mean."""
    regression = hasattr(model, "numOutputs")
    return {"inputCol": fcol, "inputSpec": model.inputSpec, "task": "regression" if regression else "classification",
            "labelSize": getattr(model, "_labelSize", None), "classNames": model.classNames}


def save_pyfunc(model, fcol, path):
    """Writes model as an MLflow pyfunc model directory at path (MLflow's save_model with our
    network as an artifact and spark_nn/ml/mlflow_model.py as its code), with a signature
    from the input column."""
    import mlflow.pyfunc

    from spark_nn.nn.persist import save_model

    with tempfile.TemporaryDirectory(prefix="spark_nn_pyfunc_") as tmp:
        net_dir = os.path.join(tmp, "network")
        with model._scoring_precision():  # the MLflow model scores as transform does
            save_model(model.network, net_dir)
        with open(os.path.join(net_dir, "pyfunc.json"), "w") as f:
            json.dump(pyfunc_spec(model, fcol), f, indent=1)
        code = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlflow_model.py")
        example = _input_example(model.inputSpec, fcol)
        signature = None
        if example is not None:
            from mlflow.models import infer_signature

            from spark_nn.ml.pyfunc_io import predict_frame

            signature = infer_signature(example, predict_frame(model.network, pyfunc_spec(model, fcol), example))
        with warnings.catch_warnings():  # MLflow's advice to type-hint predict: the signature says it
            warnings.filterwarnings("ignore", message=".*type hints.*")
            mlflow.pyfunc.save_model(path, python_model=code, artifacts={"network": net_dir}, signature=signature,
                                     input_example=example)


def _input_example(spec, fcol):
    """Two rows of zeros shaped like the input column (numeric kinds), or None."""
    import numpy as np
    import pandas as pd

    shape = spec["shape"]
    if spec["kind"] in ("vector", "array"):
        row = [0.0] * int(np.prod(shape))
    elif spec["kind"] == "seq":
        row = [[0.0] * shape[1] for _ in range(shape[0])]
    elif spec["kind"] == "ids":
        row = [0] * shape[0]
    else:
        return None
    return pd.DataFrame({fcol: [row, row]})
