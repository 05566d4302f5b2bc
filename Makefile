# Everything runs inside .venv, created and filled on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# albumentations phones home on import and timm may try the hub: both off, always.
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

# A second venv at the oldest versions pyproject.toml declares (ci/compat-constraints.txt pins them).
COMPAT  := .venv-compat
CPY     := $(COMPAT)/bin/python
CSTAMP  := $(COMPAT)/.installed

.PHONY: install test test-compat demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# pip refuses a pin below a declared bound, so the install also checks that the two files agree
$(CSTAMP): pyproject.toml ci/compat-constraints.txt
	test -x $(CPY) || $(PYTHON) -m venv $(COMPAT)
	$(CPY) -m pip install --quiet --upgrade pip
	$(CPY) -m pip install --quiet -c ci/compat-constraints.txt -e ".[dev]"
	$(CPY) -m pip check
	touch $(CSTAMP)

# the subset in ci/compat-tests.txt (one test id a line), then the bundled wheel offline over those packages
test-compat: $(CSTAMP)
	grep -v -e '^#' -e '^$$' ci/compat-tests.txt > $(COMPAT)/tests.args
	$(CPY) -m pytest -q -p no:cacheprovider --durations=5 @$(COMPAT)/tests.args
	$(CPY) ci/compat_wheel.py

demo: $(STAMP)
	$(VENV)/bin/kaggle-tli demo

bench: $(STAMP)
	$(VENV)/bin/kaggle-tli bench quick

lint: $(STAMP)
	$(VENV)/bin/ruff check kaggle_tli tests

clean:
	rm -rf $(VENV) $(COMPAT) build dist *.egg-info demo_out bench_out
