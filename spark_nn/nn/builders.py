"""Models from the seed's arguments or from explicit layer specs.

Seed rule (as MLlib's MultilayerPerceptronClassifier): ``layers`` lists hidden widths; a last
entry equal to ``num_classes`` is the output layer, otherwise one is appended. A regressor passes
its loss and its number of targets as num_classes (one or more outputs).
- CNN: each hidden width is a block conv(kxk, same padding) + activation + 2x2 max-pool;
  then flatten and a dense output layer.
- RNN: each hidden width is a recurrent layer (stacked; all but the last return sequences),
  optionally after an embedding of token ids (id 0 is padding, skipped by the recurrent
  layers); then a dense output layer.
- Autoencoder: dense encoder through the widths down to the code, mirrored decoder.
"""
from spark_nn.nn import layers as L
from spark_nn.nn.losses import MeanSquaredError, SoftmaxCrossEntropy
from spark_nn.nn.model import Sequential

CELLS = {"rnn": L.SimpleRNN, "lstm": L.LSTM, "gru": L.GRU}


def split_layers(layers, num_classes, what="layers", least=2):
    """(hidden widths, num_classes) after checking the seed-style list; least: the fewest
    outputs (2 classes; 1 target for a regressor)."""
    layers = list(layers) if layers is not None else []
    if not layers:
        raise ValueError(f"{what} must be a non-empty list of positive ints, got {layers!r}")
    bad = [v for v in layers if int(v) != v or int(v) < 1]
    if bad:
        raise ValueError(f"{what} must be positive ints, got {layers!r}")
    if num_classes is not None and int(num_classes) < least:
        raise ValueError(f"numClasses must be >= {least}, got {num_classes}")
    layers = [int(v) for v in layers]
    if num_classes is not None and layers[-1] == num_classes:
        return layers[:-1], num_classes
    return layers, num_classes


def _init_for(activation):
    return "he" if activation == "relu" else "glorot"


def cnn(layers, num_classes, input_shape, activation="relu", kernel_size=3, pool_size=2, dropout=0.0,
        dense=(), seed=0, class_weight=None, loss=None, standardize=None):
    """loss: the network's loss (default: softmax cross-entropy over num_classes logits; a loss
    without accuracy, a regression's, allows one output); standardize: a Standardize layer's
    arguments (mean, std, axis) to put first."""
    hidden, k = split_layers(layers, num_classes, least=2 if loss is None or loss.has_accuracy else 1)
    if activation not in ("relu", "tanh", "sigmoid"):
        raise ValueError(f"activation must be 'relu', 'tanh' or 'sigmoid', got {activation!r}")
    stack = [L.Standardize(**standardize)] if standardize else []
    for filters in hidden:
        stack += [L.Conv2D(filters, kernel_size, padding="same", kernel_init=_init_for(activation)),
                  L.Activation(activation), L.MaxPool2D(pool_size)]
    stack.append(L.Flatten())
    for units in dense:
        stack += [L.Dense(units, kernel_init=_init_for(activation)), L.Activation(activation)]
        if dropout:
            stack.append(L.Dropout(dropout))
    if dropout and not dense:
        stack.append(L.Dropout(dropout))
    stack.append(L.Dense(k))
    return _build(stack, input_shape, loss if loss is not None else SoftmaxCrossEntropy(class_weight), seed,
                  hint="the images are too small for this many conv/pool blocks; use fewer layers or larger images")


def rnn(layers, num_classes, input_shape, cell="rnn", activation="tanh", vocab_size=None, embedding_dim=32,
        dropout=0.0, seed=0, class_weight=None, loss=None, standardize=None):
    """input_shape: (steps,) of token ids when vocab_size is given, else (steps, features);
    loss: the network's loss (default: softmax cross-entropy over num_classes logits);
    standardize: a Standardize layer's arguments (mean, std, axis) to put first."""
    hidden, k = split_layers(layers, num_classes, least=2 if loss is None or loss.has_accuracy else 1)
    if not hidden:
        raise ValueError(f"layers must give at least one recurrent layer before the output, got {layers!r}")
    if cell not in CELLS:
        raise ValueError(f"cellType must be one of {sorted(CELLS)}, got {cell!r}")
    stack = [L.Embedding(vocab_size, embedding_dim, mask_zero=True)] if vocab_size else []
    if standardize:
        stack.append(L.Standardize(**standardize))
    for i, units in enumerate(hidden):
        seq = i < len(hidden) - 1
        stack.append(L.SimpleRNN(units, activation, seq) if cell == "rnn" else CELLS[cell](units, seq))
    if dropout:
        stack.append(L.Dropout(dropout))
    stack.append(L.Dense(k))
    return _build(stack, input_shape, loss if loss is not None else SoftmaxCrossEntropy(class_weight), seed)


def autoencoder(input_dim, layers, activation="relu", output_activation="identity", seed=0):
    """Dense autoencoder input_dim -> layers[0] -> ... -> layers[-1] (the code) -> ... -> input_dim.

    Returns (model, index of the layer whose output is the code)."""
    widths, _ = split_layers(layers, None)
    stack = []
    for units in widths:
        stack += [L.Dense(units, kernel_init=_init_for(activation)), L.Activation(activation)]
    code_index = len(stack) - 1
    for units in list(reversed(widths[:-1])):
        stack += [L.Dense(units, kernel_init=_init_for(activation)), L.Activation(activation)]
    stack.append(L.Dense(input_dim))
    if output_activation != "identity":
        stack.append(L.Activation(output_activation))
    return _build(stack, (input_dim,), MeanSquaredError(), seed), code_index


def from_specs(specs, input_shape, loss=None, seed=0):
    """Full control: a list of layer configs, e.g. {"type": "Conv2D", "filters": 16,
    "kernel_size": [5, 3], "activation": "relu"}. An "activation" key on a Conv2D or Dense
    spec adds an Activation layer after it."""
    stack = []
    for spec in specs:
        spec = dict(spec)
        act = spec.pop("activation", None) if spec.get("type") in ("Conv2D", "Dense") else None
        stack.append(L.layer_from_config(spec))
        if act:
            stack.append(L.Activation(act))
    return _build(stack, input_shape, loss, seed)


def _build(stack, input_shape, loss, seed, hint=None):
    try:
        return Sequential(stack, input_shape, loss=loss, seed=seed)
    except ValueError as e:
        raise ValueError(f"{e}{'; ' + hint if hint and 'smaller than' in str(e) else ''}") from None
