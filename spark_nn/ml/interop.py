"""Weights from elsewhere into the Spark estimators and models: a saved spark_nn model, a
fitted model, a spark_nn.nn.Sequential or a torch module (see spark_nn.nn.torch_interop)."""
import os

from spark_nn.ml.persistence import local_path
from spark_nn.nn.model import Sequential
from spark_nn.nn.persist import load_model


def _is_fitted_model(value):
    """A fitted spark_nn model (NeuralModel): whatever holds its trained network as ._net."""
    return isinstance(getattr(value, "_net", None), Sequential)


def is_torch_module(value):
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "named_children", None))


def check_initial_weights(value):
    """Type converter of the initialWeights param: the value as given, once its kind is known."""
    if isinstance(value, (str, Sequential)) or _is_fitted_model(value) or is_torch_module(value):
        return value
    raise TypeError("initialWeights must be the path of a saved spark_nn model, a fitted spark_nn model, a "
                    f"spark_nn.nn.Sequential or a torch module, got {type(value).__name__}")


def check_network(value):
    """Type converter of the network param: initialWeights' kinds (the value as given)."""
    try:
        return check_initial_weights(value)
    except TypeError:
        raise TypeError("network must be a spark_nn.nn.Sequential, a torch module, a fitted spark_nn model or the "
                        f"path of a saved one, got {type(value).__name__}") from None


def network_copy(value, input_shape):
    """A Sequential of its own (config and every array copied) for what the network param holds."""
    src = _network_of(value, input_shape)
    net = Sequential.from_config(src.config())
    net.load_weights_dict(src.weights_dict())
    return net


def _network_of(value, input_shape):
    """The Sequential that value holds or describes."""
    if isinstance(value, Sequential):
        return value
    if _is_fitted_model(value):
        return value._net
    if isinstance(value, str):
        local = local_path(value)
        # a Spark model keeps the network under data/; spark_nn.nn.save_model at the top
        return load_model(os.path.join(local, "data") if os.path.isdir(os.path.join(local, "data")) else local)
    return Sequential.from_torch(value, input_shape)


def _described_slots(net):
    """(layer type, array name, shape) of each of a network's arrays, in layout order."""
    layers = dict(net.named_layers())
    return [(type(layers[s.path]).__name__, s.name, s.shape) for s in net.slots]


def initial_weights(value, net):
    """Every array of ``net`` (weights_dict: trainable, frozen, buffers) from ``value`` (any
    initialWeights kind); a clear error when its layers or weight shapes differ from the
    network the estimator builds."""
    what = value if isinstance(value, str) else \
        f"{'torch ' if is_torch_module(value) else ''}{type(value).__name__}"
    try:
        src = _network_of(value, net.input_shape)
    except ValueError as e:
        raise ValueError(f"initialWeights ({what}): {e}") from None
    ours, theirs = _described_slots(net), _described_slots(src)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            raise ValueError(f"initialWeights ({what}) do not fit this estimator's network: weight {k} is "
                             f"{b[0]}.{b[1]} {b[2]} there, {a[0]}.{a[1]} {a[2]} here")
    if len(ours) != len(theirs):
        raise ValueError(f"initialWeights ({what}) do not fit this estimator's network: {len(theirs)} weight "
                         f"arrays there, {len(ours)} here")
    # by position: networks that differ only in layers without arrays (Dropout, Flatten) fit
    return {a.key: src._view(b).copy() for a, b in zip(net.slots, src.slots)}
