"""The README's and docs' code blocks run as written, and every one of them is either run here or
marked as a fragment.

Convention: a fenced block's info string names its language; a block that is not a complete
program (it needs names from elsewhere, a cluster, a wheel) adds the word ``fragment``
(```` ```python fragment ````, ```` ```bash fragment ````), which renders the same. A ``text``
block is not code (diagrams, output). Every other block is run: a ``python`` block by a test in
this directory that calls ``_run_section(path, title, count)`` or ``_section_snippets(path,
title)`` with literal arguments for the section holding it; a ``bash`` block by ``.ci/run``,
which holds each of its commands verbatim (or parses the README's Quick start command)."""
import ast
import csv
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import clean_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
FENCE = re.compile(r"^(\s*)```(.*)$")


def _parse(path):
    """The document's headings and fenced blocks, in order: ('heading', level, title, line) and
    ('block', language, words, code, line); a '#' line inside a block is not a heading."""
    items, block = [], None
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if block is None:
            if fence:
                words = fence.group(2).split()
                block = (fence.group(1), words[0] if words else "", words[1:], [], number)
            elif re.match(r"^#{1,6} ", line):
                hashes, title = line.split(" ", 1)
                items.append(("heading", len(hashes), title.strip(), number))
        elif fence and fence.group(2).strip() == "":
            indent, language, words, code, start = block
            code = [c[len(indent):] if c.startswith(indent) else c for c in code]
            items.append(("block", language, words, "\n".join(code) + "\n", start))
            block = None
        else:
            block[3].append(line)
    assert block is None, f"{path}: the block that starts at line {block[4]} is not closed"
    return items


def _sections(path):
    """[(title, blocks)] for every heading, a section ending at the next heading of its level or
    above (so it holds its subsections' blocks); a block is (language, words, code, line)."""
    items, out = _parse(path), []
    for i, item in enumerate(items):
        if item[0] != "heading":
            continue
        level, blocks = item[1], []
        for later in items[i + 1:]:
            if later[0] == "heading" and later[1] <= level:
                break
            if later[0] == "block":
                blocks.append(later[1:])
        out.append((item[2], blocks))
    return out


def _section(path, title):
    """The blocks of the one section of path titled title."""
    found = [blocks for t, blocks in _sections(path) if t == title]
    assert len(found) == 1, f"{path} has {len(found)} sections titled {title!r}"
    return found[0]


def _is_fragment(words):
    return "fragment" in words


def _section_snippets(path, title):
    """The python blocks of a section of path (relative to the repository root) that are not
    fragments, in order."""
    return [code for language, words, code, _ in _section(path, title)
            if language == "python" and not _is_fragment(words)]


def _run_section(path, title, count, files_in=None):
    """Runs a section's python blocks in order in one namespace (in the current directory) and
    returns the namespace. files_in: a folder that the blocks' relative file names (string
    literals naming files or folders there, and the models they save) are made absolute in:
    the test session's JVM keeps the directory it started in, so Spark would read and write
    relative paths there, where a user's own script (one directory for Python and the JVM)
    reads them from the directory it runs in."""
    snippets = _section_snippets(path, title)
    assert len(snippets) == count, (path, title, len(snippets))
    scope = {}
    for code in snippets:
        if files_in is not None:
            code = _absolute_paths(code, files_in)
        exec(compile(code, os.path.join(ROOT, path), "exec"), scope)
    return scope


def _absolute_paths(code, folder):
    """code with each string literal that names an entry of folder, or a model saved next to
    them ('*_model'), replaced by its absolute path."""
    def absolute(match):
        name = match.group(1)
        if os.path.exists(os.path.join(folder, name)) or name.endswith("_model"):
            return repr(os.path.join(str(folder), name))
        return match.group(0)

    return re.sub(r"\"([\w.-]+)\"", absolute, code)


# ------------------------------------------------------------------ the README's programs

def test_image_folder_program_runs(spark, tmp_path, monkeypatch):
    """"Train on your image folder" on a folder per class of 8x8 digit PNGs (the digits_split
    test half: 360 images), then new images from the other half, in a folder of their own."""
    from spark_nn.datasets import write_digits_folders

    monkeypatch.chdir(tmp_path)
    write_digits_folders("my_images", "test")
    write_digits_folders(str(tmp_path / "digits_train"), "train")
    os.makedirs("new_images")
    for source in sorted(glob.glob(str(tmp_path / "digits_train" / "*" / "*.png")))[::150]:
        digit = os.path.basename(os.path.dirname(source))
        shutil.copy(source, os.path.join("new_images", f"digit{digit}-{os.path.basename(source)}"))
    scope = _run_section("README.md", "Train on your image folder", 1, files_in=tmp_path)
    assert os.path.isdir(tmp_path / "my_images_model" / "metadata")
    # measured with the program's randomSplit seed and the fit's seed both 0 (the test's), 1, 2:
    # 0.9265, 0.9726, 0.9589 (68, 73, 73 test rows; mean 0.9527, standard error of the mean 0.0137,
    # mean - 3 SE 0.9116), and of the 10 new images 10, 9, 10 named right (mean 9.67, SE 0.33, mean
    # - 3 SE 8.67): the bars, 0.8 and 7 of 10, keep their margins
    assert scope["metrics"]["accuracy"] > 0.8, scope["metrics"]
    assert scope["model"].classNames == [str(d) for d in range(10)]
    rows = scope["predictions"].collect()
    assert len(rows) == len(os.listdir("new_images"))
    right = sum(row["class"] == re.search(r"digit(\d)-", row["origin"]).group(1) for row in rows)
    assert not os.path.exists(os.path.join(ROOT, "my_images_model"))
    assert right >= 0.7 * len(rows), [(r["origin"], r["class"]) for r in rows]


def test_text_program_runs(spark, tmp_path, monkeypatch):
    """"Train on your texts" on 2000 made-up reviews (spark_nn.datasets.labelled_sentences)."""
    from spark_nn.datasets import labelled_sentences

    monkeypatch.chdir(tmp_path)
    sentences, labels = labelled_sentences(2000)
    with open("reviews.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["sentiment", "text"])
        out.writerows(("positive" if y else "negative", s) for s, y in zip(sentences, labels))
    scope = _run_section("README.md", "Train on your texts", 1, files_in=tmp_path)
    assert os.path.isdir(tmp_path / "reviews_model" / "stages")
    # measured with the program's randomSplit seed and the fit's seed both 0 (the test's), 1, 2:
    # 1.0, 1.0, 1.0 (423, 388, 399 test rows). The values are equal and the binomial standard error
    # at p = 1 is 0, so p is taken at the rule of three's bound for no error in 388 rows (0.9923;
    # SE 0.0044): p - 3 SE = 0.979; the bar, 0.9, keeps its margin
    assert scope["accuracy"] > 0.9, scope["accuracy"]
    predicted = [r["predicted"] for r in scope["named"].transform(scope["model"].transform(scope["new"])).collect()]
    assert predicted == ["negative", "positive"]


def test_regression_and_forecasting_snippet_runs(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = _run_section("README.md", "Regression and forecasting", 1)
    from pyspark.sql import functions as F

    test = scope["test"]
    metrics = scope["model"].evaluate(test)
    last = F.col("window")[11][0]
    persistence = test.select(F.sqrt(F.avg((last - F.col("target")) ** 2))).first()[0]
    # the snippet's data are not seeded; measured with numpy's global seed and the fit's seed both 0,
    # 1, 2: rmse 0.374, 0.346, 0.348 against persistence 0.692, 0.695, 0.695 (rmse mean 0.356,
    # standard error of the mean 0.009, mean + 3 SE 0.383); r2 0.9966, 0.9970, 0.9970 (mean 0.9969,
    # SE 0.0001, mean - 3 SE 0.9964): the bar, 0.9, keeps its margin
    assert metrics["rmse"] < persistence, (metrics, persistence)
    assert metrics["r2"] > 0.9


# ------------------------------------------------------------------ the docs' snippets

def test_models_in_and_out_snippets_run(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = _run_section("docs/interop.md", "Models in and out (PyTorch, ONNX)", 3)
    assert scope["logits"].shape == (4, 10)
    assert scope["probability"].shape == (4, 10)
    assert set(scope["state"]) == set(scope["torch_net"].state_dict())
    assert os.path.exists(tmp_path / "digits_cnn.onnx")


def test_on_spark_connect_snippet_runs(tmp_path):
    """The snippet starts a local Spark Connect server, so it runs in a process of its own."""
    pytest.importorskip("grpc")
    (code,) = _section_snippets("docs/guide.md", "On Spark Connect")
    code += "\nprint('ACCURACY', accuracy)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = float(proc.stdout.split("ACCURACY ")[1].split()[0])
    # digits_split's fixed split (360 test images), measured with the snippet's fit seed 0 (the
    # test's), 1, 2: 0.9778, 0.9833, 0.9750 (mean 0.9787, standard error of the mean 0.0024, mean -
    # 3 SE 0.9714): the bar, 0.9, keeps its margin
    assert accuracy > 0.9, proc.stdout


def test_your_own_network_snippets_run(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = _run_section("docs/networks.md", "Your own network, and transfer learning", 3)
    model, net = scope["model"], scope["pretrained"]
    # the frozen body came over frozen: only the new head (64*8*8*10 + 10) trains
    assert model.network.num_params == 64 * 8 * 8 * 10 + 10
    # chance is 0.1; measured with torch.manual_seed (the frozen body's initial weights) and the
    # fit's seed both 0, 1, 2: 0.9472, 0.9444, 0.9361 on the 360 test images (mean 0.9426, standard
    # error of the mean 0.0033, mean - 3 SE 0.9326): the bar, 0.5, keeps its margin (the test does
    # not seed torch, so its body differs from run to run)
    assert scope["accuracy"] > 0.5, scope["accuracy"]
    assert scope["features"].schema["embedding"] is not None
    assert scope["features"].first().embedding.size == 64 * 8 * 8
    assert scope["scratch"].network.buffers.size == 2 * (16 + 16 + 16)


def test_spark_settings_snippet_runs(spark):
    """The snippet's builder gives the running session (its start-up settings are the test
    session's own, conftest's _SPARK_CONF)."""
    from pyspark.sql import SparkSession

    scope = _run_section("docs/guide.md", "Spark settings for training", 1)
    assert isinstance(scope["spark"], SparkSession)


# ------------------------------------------------------------------ every block run or a fragment

def _run_by_tests():
    """{(path, title)} of the sections some test runs: literal arguments of _run_section and
    _section_snippets calls in tests/*.py."""
    found = set()
    for test_file in glob.glob(os.path.join(ROOT, "tests", "*.py")):
        for node in ast.walk(ast.parse(open(test_file, encoding="utf-8").read(), test_file)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("_run_section", "_section_snippets") and len(node.args) >= 2
                    and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                found.add((node.args[0].value, node.args[1].value))
    return found


def _ci_commands():
    """The commands .ci/run runs: its lines, and the README Quick start command it parses."""
    text = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    commands = {line.strip() for line in text.split("\n") if line.strip() and not line.strip().startswith("#")}
    assert "## Quick start" in text, ".ci/run no longer parses the README's Quick start command"
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1)  # .ci/run's own parse
    commands.add(block.splitlines()[0].split("  #")[0].strip())
    return commands


def test_every_code_block_is_run_or_a_fragment():
    run, ci = _run_by_tests(), _ci_commands()
    problems = []
    for path in DOCUMENTS:
        # the lines of the python blocks that a test runs (a section runs its subsections' too)
        covered = {line for (p, title) in run if p == path
                   for language, words, _, line in _section(path, title) if language == "python"}
        blocks = [item[1:] for item in _parse(path) if item[0] == "block"]
        for language, words, code, line in blocks:
            where = f"{path}:{line}"
            if _is_fragment(words) or language == "text":
                continue
            if language == "python":
                if line not in covered:
                    problems.append(f"{where}: a python block that no test runs (run its section with "
                                    "_run_section in tests/test_readme.py, or mark it ```python fragment)")
            elif language in ("bash", "sh", "shell", "console"):
                for command in code.split("\n"):
                    command = command.split("  #")[0].strip()
                    if command and command not in ci:
                        problems.append(f"{where}: {command!r} is not a command .ci/run runs (mark the block "
                                        "```bash fragment)")
            else:
                problems.append(f"{where}: a block of language {language!r}: name python, bash or text, or mark "
                                "it fragment")
    assert not problems, "\n".join(problems)


def test_run_sections_exist():
    """Each section a test runs exists and holds a python block to run."""
    for path, title in _run_by_tests():
        assert _section_snippets(path, title), (path, title)


def test_fragment_convention_is_seen():
    """The parser sees fragments, languages and sections as the convention says (a check of
    the checker, on a document of its own)."""
    quick = _section("README.md", "Quick start")
    assert quick and quick[0][0] == "bash" and not _is_fragment(quick[0][1])
    assert any(_is_fragment(words) for _, words, _, _ in _section("README.md", "Install, with extras"))


# ------------------------------------------------------------------ generated parts of the README

def test_readme_params_table_is_up_to_date():
    from spark_nn.ml import params_table

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = params_table.in_text(readme)
    assert table is not None, "README.md lost the params table's markers"
    assert table == params_table.markdown(), (
        "README.md's params table differs from the estimators' Params: run "
        "python -m spark_nn.ml.params_table --write README.md")


def test_readme_names_every_demo_flag():
    import spark_nn.demo

    flags = re.findall(r"add_argument\(\"(--[a-z-]+)\"", open(spark_nn.demo.__file__, encoding="utf-8").read())
    assert len(flags) >= 7, flags
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    missing = [f for f in flags if f"`{f}" not in readme]
    assert not missing, f"the README's demo flags table lacks {missing}"


def test_readme_stays_short():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert len(f.read().split("\n")) <= 260, "the README is a newcomer's page: move details to docs/"


def _slug(title):
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_links_between_documents_resolve():
    """Every relative link of the README and docs names a file that exists, and its #anchor a
    heading of that file."""
    problems = []
    for path in DOCUMENTS:
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(os.path.join(ROOT, resolved)):
                problems.append(f"{path}: {target} (no {resolved})")
            elif anchor and resolved.endswith(".md"):
                slugs = {_slug(item[2]) for item in _parse(resolved) if item[0] == "heading"}
                if anchor not in slugs:
                    problems.append(f"{path}: {target} (no such heading in {resolved})")
    assert not problems, "\n".join(problems)
