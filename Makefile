# The two set-up commands of the README. Both create .venv when it is missing.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
SPEC    ?= configs/quickstart.yaml
OUT     ?= tbench-out/quickstart
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv clean

$(BIN)/tbench: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(BIN)/tbench

venv: $(BIN)/tbench

# Quickstart end to end on the embedded world: world -> views -> pre-training -> evaluation
# -> results store -> table -> report. A second run finds every job finished.
demo: venv
	$(BIN)/tbench run $(SPEC)
	$(BIN)/tbench report --store $(OUT)/store --out $(OUT)/report

# The whole suite, slow end-to-end tests included (CI runs this).
test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Everything but the tests marked slow.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf tbench-out .pytest_cache
