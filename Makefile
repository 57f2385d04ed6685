# The two set-up commands of the README. Both create .venv when it is missing.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
SPEC    ?= configs/quickstart.yaml
OUT     ?= tbench-out/quickstart
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv browser clean

$(BIN)/tbench: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(BIN)/tbench

venv: $(BIN)/tbench

# Quickstart end to end on the embedded world: world -> views -> pre-training -> evaluation
# -> results store -> table -> report. A second run finds every job finished.
demo: venv
	$(BIN)/tbench run $(SPEC)
	$(BIN)/tbench report --store $(OUT)/store --out $(OUT)/report --spec $(SPEC)

# The report's browser test drives Chromium from the system packages (Debian: chromium).
# Installed here when missing (as root, or through sudo); playwright comes with .[test].
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Chromium (system package) for the report's browser test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# The whole suite, slow end-to-end tests included (CI runs this), in two processes (pytest-xdist):
# each test file runs whole in one of them (its module fixtures, such as one local Ray, start once).
# WORKERS=0: one process.
WORKERS ?= 2
test: venv browser
	$(BIN)/python -m pytest -q --durations=15 -n $(WORKERS) --dist loadfile $(PYTEST_ARGS)

# Everything but the tests marked slow.
test-fast: venv browser
	$(BIN)/python -m pytest -q --durations=15 -n $(WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf tbench-out .pytest_cache
