# Two commands set everything up on a fresh machine with python3 and pip:
#   make train   build .venv, the default corpus, and run the default training job
#   make test    build .venv, the default corpus, fetch test references, run the test suite (make test-slow: the rest)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
CORPUS := $(DATA_DIR)/synth_speech/1.0.0
REFERENCE := .cache/reference
PYTEST_ARGS ?=
# pytest-xdist workers; each test file runs in one worker (its module fixtures are built once)
PYTEST_WORKERS ?= 2

.PHONY: venv corpus train test test-slow bench constraints clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt requirements-reference.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,tpu]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-reference.txt
	touch $@

corpus: $(CORPUS)/dataset_info.json

$(CORPUS)/dataset_info.json: | venv
	$(BIN)/jaxspeech data synth --data-dir $(DATA_DIR)

WORKDIR ?= workdirs/ast_tiny

# AST speaker classification on the default corpus; rerunning resumes (or reports) the same workdir.
train: venv corpus
	$(BIN)/jaxspeech train --config=configs/ast.py:tiny --workdir=$(WORKDIR) --config.data.path=$(CORPUS)

$(REFERENCE)/torchaudio/compliance/kaldi.py: | venv
	$(BIN)/python tests/fetch_reference.py $(REFERENCE)

# `make test` skips the tests marked slow (each over ~30 s on 2 cores: CLI training runs, the TPU compiles);
# `make test-slow` runs just those. CI (.ci/run) runs both.
PYTEST := JAXSPEECH_CORPUS=$(CORPUS) JAXSPEECH_REFERENCE=$(REFERENCE) $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test: venv corpus $(REFERENCE)/torchaudio/compliance/kaldi.py
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-slow: venv corpus $(REFERENCE)/torchaudio/compliance/kaldi.py
	$(PYTEST) -m slow $(PYTEST_ARGS)

bench: venv corpus
	$(BIN)/python benchmarks/data_pipeline.py --dataset $(CORPUS)

# Pin the exact versions this venv passed with; commit the result.
constraints:
	$(BIN)/pip freeze --exclude-editable --disable-pip-version-check | grep -v '^jaxspeech' > constraints.txt

clean:
	rm -rf $(VENV) $(REFERENCE)
