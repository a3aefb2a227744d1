"""The MLflow pyfunc model of a fitted spark_nn model, as code (MLflow's "models from code"):
MLflow runs this file when it loads the model, so nothing is pickled. Not imported by spark_nn
itself (it needs mlflow); spark_nn.ml.tracking.save_pyfunc names it."""
import json
import os

import mlflow
from mlflow.pyfunc import PythonModel


class SparkNNPyfunc(PythonModel):
    """Loads the network saved beside the model (artifact 'network': spark_nn.nn.persist's
    format and pyfunc.json) and scores pandas DataFrames without Spark."""

    def load_context(self, context):
        from spark_nn.nn.persist import load_model

        path = context.artifacts["network"]
        self.net = load_model(path)
        with open(os.path.join(path, "pyfunc.json")) as f:
            self.spec = json.load(f)

    def predict(self, context, model_input, params=None):
        from spark_nn.ml.pyfunc_io import predict_frame

        return predict_frame(self.net, self.spec, model_input)


mlflow.models.set_model(SparkNNPyfunc())
