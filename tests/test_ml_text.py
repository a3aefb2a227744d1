"""Text: Tokenizer -> SequenceAssembler -> RNN pipelines, the vocabulary assembler, and the
assemblers' padding and truncation."""
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator

from spark_nn.datasets import labelled_sentences
from spark_nn.ml.classification import RNN, RNNClassificationModel
from spark_nn.ml.feature import (SequenceAssembler, Tokenizer, VocabularySequenceAssembler,
                                 VocabularySequenceAssemblerModel)


@pytest.fixture(scope="module")
def reviews(spark):
    sentences, labels = labelled_sentences(1200, seed=4)
    df = spark.createDataFrame([(s, float(y)) for s, y in zip(sentences, labels)], ["text", "label"])
    train, test = df.randomSplit([0.8, 0.2], seed=1)
    return train.cache(), test.cache()


def _majority(df):
    counts = [r["count"] for r in df.groupBy("label").count().collect()]
    return max(counts) / sum(counts)


# the lstm case runs on every session kind (the Pipeline, its transforms, its save and load); the
# rnn case adds another cell's learning, which does not depend on it: once
@pytest.mark.parametrize("cell", ["lstm", pytest.param("rnn", marks=pytest.mark.once)])
def test_text_pipeline_beats_majority_and_round_trips(reviews, tmp_path, cell):
    train, test = reviews
    pipeline = Pipeline(stages=[
        Tokenizer(inputCol="text", outputCol="words"),
        SequenceAssembler(inputCol="words", outputCol="sequence", sequenceLength=10, vocabSize=500),
        RNN(layers=[32, 2], cellType=cell, inputCol="sequence", outputCol="label", numClasses=2, maxIter=8,
            batchSize=48, stepSize=5e-3, clipNorm=5.0, seed=0, learningRateSchedule="constant")])
    model = pipeline.fit(train)
    predictions = model.transform(test)
    acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predictions)
    # the label needs the negation ("is not good"), so word order matters. Measured at fit seeds 0,
    # 1, 2 with randomSplit seeds 1, 2, 3 (the test's own split and two others; 240, 272, 259 test
    # rows, majority 0.51-0.54): accuracy 1.0, 1.0, 1.0 for both cells, and AUC 1.0 for all six
    # fits. The values are equal, so the margin comes from the binomial standard error on the test
    # rows: at p = 1 it is 0, so p is taken at the rule of three's bound for no error in 240 rows
    # (1 - 3/240 = 0.9875; SE sqrt(p(1-p)/240) = 0.0072): p - 3 SE = 0.966, and the bar is 0.95.
    # Fit seeds 3, 4, 5 with split seeds 4, 5, 6, run as a check: 1.0 on all six fits too.
    # (Fewer epochs, for the record: at 6 the rnn cell reached 0.917, 0.879, 0.954 and the lstm
    # 1.0 on all three; at 3 the lstm 0.842, 0.688, 0.838: an rnn fit two epochs short of 8 fails
    # the bar two times in three.)
    assert acc >= 0.95 and acc >= _majority(test) + 0.25, acc
    assert BinaryClassificationEvaluator().evaluate(predictions) > 0.9  # 1.0 on all six fits (see above)
    rnn_model = model.stages[-1]
    assert isinstance(rnn_model, RNNClassificationModel)
    assert rnn_model.inputSpec == {"kind": "ids", "shape": [10], "vocabSize": 500}

    path = str(tmp_path / "pipeline")
    model.write().overwrite().save(path)
    again = PipelineModel.load(path).transform(test)
    def rows(df):
        return sorted((r.text, r.prediction, r.probability.toArray().tolist())
                      for r in df.select("text", "prediction", "probability").collect())

    assert rows(again) == rows(predictions)


def test_sequence_assembler_pads_and_truncates(spark):
    df = spark.createDataFrame([(["a", "b", "c", "d"],), (["a"],), ([],)], ["w"])

    def run(**kw):
        out = SequenceAssembler(inputCol="w", outputCol="s", sequenceLength=3, vocabSize=1000, **kw).transform(df)
        return [r.s for r in out.collect()]

    pre = run()
    assert [len(s) for s in pre] == [3, 3, 3]
    a = pre[1][2]
    assert pre[1] == [0, 0, a] and pre[2] == [0, 0, 0] and 1 <= a < 1000
    assert pre[0][0] != a  # 'pre' truncation keeps the last tokens: b c d
    post = run(padding="post", truncating="post")
    assert post[1] == [a, 0, 0] and post[0][0] == a
    assert run() == pre  # hashing needs no fit: same token, same id, in every row and run
    out = SequenceAssembler(inputCol="w", outputCol="s", sequenceLength=3).transform(df)
    assert out.schema["s"].metadata["spark_nn"] == {"vocabSize": 32768, "sequenceLength": 3}


@pytest.mark.parametrize("kw, match", [({"sequenceLength": 0}, "sequenceLength"), ({"vocabSize": 1}, "vocabSize"),
                                       ({"padding": "left"}, "padding")])
def test_sequence_assembler_rejects_bad_params(kw, match):
    with pytest.raises(ValueError, match=match):
        SequenceAssembler(inputCol="w", outputCol="s", **dict({"sequenceLength": 3}, **kw))


def test_sequence_assembler_names_bad_columns(spark):
    df = spark.createDataFrame([("a b",)], ["text"])
    with pytest.raises(ValueError, match="'text' has type string"):
        SequenceAssembler(inputCol="text", outputCol="s", sequenceLength=3).transform(df)
    with pytest.raises(ValueError, match="'nope' is not in the DataFrame"):
        SequenceAssembler(inputCol="nope", outputCol="s", sequenceLength=3).transform(df)


def test_vocabulary_assembler_fits_and_persists(spark, tmp_path):
    df = spark.createDataFrame([(["b", "a", "b"],), (["c", "b", "a"],), (["d"],)], ["w"])
    est = VocabularySequenceAssembler(inputCol="w", outputCol="s", sequenceLength=4, minCount=2)
    model = est.fit(df)
    assert model.getVocabulary() == ["b", "a"]  # by count, then token
    assert model.vocabSize == 4
    rows = [r.s for r in model.transform(df).collect()]
    assert rows == [[0, 2, 3, 2], [0, 1, 2, 3], [0, 0, 0, 1]]  # c, d are out of vocabulary (1)
    out = model.transform(df)
    assert out.schema["s"].metadata["spark_nn"]["vocabSize"] == 4
    path = str(tmp_path / "vocab")
    model.write().overwrite().save(path)
    loaded = VocabularySequenceAssemblerModel.load(path)
    assert [r.s for r in loaded.transform(df).collect()] == rows
    capped = VocabularySequenceAssembler(inputCol="w", outputCol="s", sequenceLength=2, maxVocabSize=1).fit(df)
    assert capped.getVocabulary() == ["b"]
    with pytest.raises(ValueError, match="minCount"):
        VocabularySequenceAssembler(inputCol="w", outputCol="s", sequenceLength=2, minCount=5).fit(df)


@pytest.fixture(scope="module")
def movie_snippets(spark):
    """The Rotten Tomatoes snippets through the seed's pipeline (Tokenizer ->
    SequenceAssembler(sequenceLength=30)), split 80/20, as in benchmarks/text_rnn.py."""
    from spark_nn.datasets import movie_reviews

    texts, labels = movie_reviews()
    df = spark.createDataFrame([(float(y), t) for t, y in zip(texts, labels)], ["label", "text"])
    words = Tokenizer(inputCol="text", outputCol="words").transform(df.repartition(2))
    seqs = SequenceAssembler(inputCol="words", outputCol="sequence", sequenceLength=30).transform(words)
    train, test = seqs.randomSplit([0.8, 0.2], seed=0)
    return train.cache(), test.cache()


@pytest.mark.once
def test_seed_rnn_program_on_real_text_keeps_up_with_lstm_and_bag_of_words(movie_snippets):
    """The seed's RNN(layers=[64, 32, 16], activation="relu") at defaults, but 8 epochs (the
    benchmark runs 30) and a fixed localSteps (so the result does not depend on timing),
    against cellType='lstm' and MLlib's hashed bag-of-words logistic regression. Before padding was masked and ReLU cells
    started at the identity with clipping, the seed program stayed near the majority class.
    A short run of the ReLU net moves by a point or more with the kernels' rounding alone
    (3 epochs with dense Adam: 0.7299, 0.7187 and, at SPARK_NN_ISA=avx2, 0.7067 against the
    LSTM's 0.7403-0.7407), so the LSTM gets a margin of 4 points here. Lazy Adam in the
    embedding table (a row moves only at the steps that touch it) learns rare tokens more
    slowly than dense Adam, whose momentum kept moving them: 3 epochs gave 0.6727 (LSTM 0.7094),
    6 give 0.7291 (LSTM 0.7187, bag of words 0.7094); over the benchmark's 30 epochs the seed
    program is ahead of the LSTM (benchmarks/RESULTS.md). How long the ReLU net stays near the
    majority class before it learns moves with the rows each partition holds: once the setup
    pass dealt the rows by position, 6 epochs at seeds 0, 1, 2 gave 0.6240 (4 epochs at the
    majority's training accuracy), 0.7187, 0.7287; 8 epochs give 0.7145, 0.7206, 0.7318."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import HashingTF

    train, test = movie_snippets
    evaluator = MulticlassClassificationEvaluator(metricName="accuracy")

    def rnn_accuracy(**kw):
        rnn = RNN(layers=[64, 32, 16], activation="relu", inputCol="sequence", outputCol="label", numClasses=2,
                  maxIter=8, localSteps=64, **kw)
        return evaluator.evaluate(rnn.fit(train).transform(test))

    seed, lstm = rnn_accuracy(), rnn_accuracy(cellType="lstm")
    bow = evaluator.evaluate(Pipeline(stages=[HashingTF(inputCol="words", outputCol="features"),
                                              LogisticRegression()]).fit(train).transform(test))
    print(f"seed RNN {seed:.4f}, LSTM {lstm:.4f}, bag of words {bow:.4f}, majority {_majority(test):.4f}")
    assert seed >= _majority(test) + 0.08, seed
    assert seed >= lstm - 0.04, (seed, lstm)
    assert seed >= bow - 0.02, (seed, bow)


def test_recurrent_nets_clip_gradients_by_default():
    from spark_nn.ml.classification import CNN

    assert RNN().getClipNorm() == 1.0 and CNN().getClipNorm() == 0.0
    assert RNN(clipNorm=0.0).getClipNorm() == 0.0  # 0 turns it off
    assert "default 1.0 for recurrent networks" in RNN().explainParam("clipNorm")
    assert SequenceAssembler().getVocabSize() == 2 ** 15
