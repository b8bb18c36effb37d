# Development tasks. `make run` serves the app on http://127.0.0.1:8000 with a Celery worker beside it.
SHELL := /bin/bash

PY ?= python3
VENV = .venv
BIN = $(VENV)/bin
PYTHON = $(BIN)/python
STAMP = $(VENV)/.installed
PYTEST_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000

# One worker with embedded beat (fine for development); beat's schedule file lives under var/.
CELERY_WORKER = $(BIN)/celery -A dashboard worker -B --loglevel=INFO --concurrency=2 \
	--schedule var/celerybeat-schedule

.PHONY: venv migrate demo run worker test test-slow lint fmt

venv: $(STAMP)

# Re-installs whenever a requirements file changes; the stamp is written only on success.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -r requirements-dev.txt
	touch $@

var:
	mkdir -p var

migrate: venv | var
	$(PYTHON) manage.py migrate --noinput

demo: migrate
	$(PYTHON) manage.py load_demo

# The worker runs in the background and is stopped (warm shutdown) when the server exits.
run: venv migrate demo | var
	@worker=; \
	trap 'if [ -n "$$worker" ]; then kill -TERM $$worker 2>/dev/null; wait $$worker 2>/dev/null; fi' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	echo "+ $(CELERY_WORKER) &"; \
	$(CELERY_WORKER) & worker=$$!; \
	echo "+ $(BIN)/uvicorn dashboard.asgi:application --host $(HOST) --port $(PORT)"; \
	$(BIN)/uvicorn dashboard.asgi:application --host $(HOST) --port $(PORT)

worker: venv | var
	$(CELERY_WORKER)

test: venv | var
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The long fault runs of the reliability goals (G5: 20 repetitions per streaming fault, 50
# disconnects, 500 concurrent streams); `make test` leaves them out.
test-slow: venv | var
	$(PYTHON) -m pytest -m slow $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
