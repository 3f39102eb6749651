VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/lst-embeddings
DEMO   := runs/demo

.PHONY: demo test lint bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,spark]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m embeddings.demo --out $(DEMO)

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# ONLY="sasrec_quality video": those scripts only (names as in bench.run_all's SCRIPTS), then the tables
bench: $(VENV)/.installed
	$(PY) -m bench.run_all $(if $(ONLY),--only $(ONLY))

bench-quick: $(VENV)/.installed
	$(PY) -m bench.run_all --quick

clean:
	rm -rf runs feature_repo/data
