"""The README's table of the most used params, made from the estimators themselves: each param's
own doc, and its default in each estimator (what ``explainParams()`` says), so the table cannot
drift from the code (tests/test_readme.py fails when the README's copy differs).

    python -m spark_nn.ml.params_table                   # print the table (markdown)
    python -m spark_nn.ml.params_table --write README.md # replace the table between its markers
"""
import argparse
import sys

# the README's table lies between these two lines
BEGIN = "<!-- params table: made by `python -m spark_nn.ml.params_table --write README.md`; do not edit -->"
END = "<!-- end of params table -->"

# the params a newcomer sets first, in the order the table lists them
PARAMS = [
    "featuresCol", "labelCol", "layers", "activation", "numClasses",
    "kernelSize", "poolSize", "imageShape", "imageSize", "grayscale",
    "cellType", "embeddingDim", "vocabSize", "dropout",
    "maxIter", "batchSize", "stepSize", "optimizer", "learningRateSchedule", "weightDecay", "clipNorm",
    "validationSplit", "earlyStoppingPatience", "seed", "loss", "standardization", "handleInvalid",
    "verbose", "checkpointDir", "precision",
]

NOT_SET = "not set"
ABSENT = "–"


def estimators():
    """The estimators the table has a column for, as (name, instance)."""
    from spark_nn.ml.classification import CNNClassifier, RNNClassifier
    from spark_nn.ml.regression import CNNRegressor, RNNRegressor

    return [(cls.__name__, cls()) for cls in (CNNClassifier, RNNClassifier, CNNRegressor, RNNRegressor)]


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(est, name):
    if not est.hasParam(name):
        return ABSENT
    param = est.getParam(name)
    if not est.hasDefault(param):
        return NOT_SET
    value = est.getOrDefault(param)
    return f"`{value!r}`"


def _doc(ests, name):
    """The param's doc; where the estimators' docs differ, each with the estimators it is theirs."""
    docs = {}
    for est_name, est in ests:
        if est.hasParam(name):
            docs.setdefault(est.getParam(name).doc, []).append(est_name)
    if len(docs) == 1:
        return next(iter(docs))
    return "; ".join(f"{', '.join(names)}: {doc}" for doc, names in docs.items())


def markdown(params=PARAMS):
    """The table, as markdown lines joined by newlines (no trailing newline)."""
    ests = estimators()
    lines = ["| param | " + " | ".join(name for name, _ in ests) + " | meaning |",
             "|---|" + "---|" * len(ests) + "---|"]
    for name in params:
        if not any(est.hasParam(name) for _, est in ests):
            raise ValueError(f"no estimator of the table has a param {name!r}")
        cells = [f"`{name}`"] + [_default(est, name) for _, est in ests] + [_doc(ests, name)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def in_text(text):
    """The table a document holds between the markers (None when it has no markers)."""
    if BEGIN not in text:
        return None
    start = text.index(BEGIN) + len(BEGIN)
    return text[start:text.index(END, start)].strip("\n")


def write(path):
    """Replaces the table between the markers in path with a fresh one; returns True if it changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no params table markers ({BEGIN!r} ... {END!r})")
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END, start)
    new = text[:start] + "\n" + markdown() + "\n" + text[end:]
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m spark_nn.ml.params_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--write", metavar="PATH", help="replace the table between the markers in this file")
    args = p.parse_args(argv)
    if args.write:
        print(f"{args.write}: " + ("table updated" if write(args.write) else "table already up to date"))
    else:
        print(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
