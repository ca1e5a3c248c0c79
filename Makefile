# The two commands a new user runs:  `make run`  (install + start the web app)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run install install-dev system-deps faceapi test lint bench

run: install
	$(BIN)/moodlens serve --host $(HOST) --port $(PORT)

install: $(VENV)/.serve-installed
$(VENV)/.serve-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# ensurepip's setuptools: pip builds moodlens in an isolated environment, and serving never imports it
	$(BIN)/pip uninstall -q -y setuptools
	$(BIN)/pip install -q -e .
	touch $@

install-dev: $(VENV)/.dev-installed
$(VENV)/.dev-installed: pyproject.toml $(VENV)/.serve-installed
	$(BIN)/pip install -q -e '.[dev,train,batch]'
	touch $@

# Debian packages the test suite drives for real: Chromium, Ceph (S3 server), Java (Spark), wrk.
system-deps:
	bash scripts/install-system-deps.sh

# face-api.js (weights + tfjs) into .cache/faceapi for the FaceExpressionNet port's parity test; a no-op once there.
faceapi:
	bash scripts/fetch-faceapi.sh

test: install-dev system-deps faceapi
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check src tests benchmarks scripts
