# Two commands do everything on a fresh machine: `make run` (dashboard) and `make test` (test suite).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test browser bench demo

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps 'quantus==0.6.0'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/streamlit run dashboard/Home.py --server.address 127.0.0.1

test: setup
	$(PY) -m pytest -q

# Debian's Chromium and its driver, for the real-browser tests (they skip without them).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

demo: setup
	$(PY) -m engine sweep --preset demo

bench: setup
	$(PY) bench/bench_sweep.py
