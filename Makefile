# Everything runs inside .venv, created and filled on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# albumentations phones home on import and timm may try the hub: both off, always.
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/kaggle-tli demo

bench: $(STAMP)
	$(VENV)/bin/kaggle-tli bench quick

lint: $(STAMP)
	$(VENV)/bin/ruff check kaggle_tli tests

clean:
	rm -rf $(VENV) build dist *.egg-info demo_out bench_out
