# The two commands of the README, each in its own virtual environment:
#   make demo   – install FedKeeper (a real `pip install .`) and run the sample experiment on the embedded defaults
#   make test   – install FedKeeper with its test extra and run the test suite
PYTHON ?= python3
DEMO_VENV ?= .venv
TEST_VENV ?= .venv-test
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench clean

$(DEMO_VENV)/.installed: pyproject.toml $(shell find fedkeeper -name '*.py' -o -name '*.npz' | sort)
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install --quiet ".[plot]"
	touch $@

$(TEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TEST_VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/fedkeeper start -c config-sample.yaml
	$(DEMO_VENV)/bin/fedkeeper report latest --plot Logs/latest-report.png

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(TEST_VENV)/.installed
	for b in bench/bench_*.py; do echo "== $$b"; $(TEST_VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) build dist *.egg-info .fedkeeper Logs
