# Canary's two commands: `make run` brings the whole system up, `make test` runs the whole suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install migrate lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) requirements.txt requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap

## Set up and start web (127.0.0.1:8000), a Celery worker and Celery beat; Ctrl-C stops all.
run: migrate
	@echo "Canary: http://127.0.0.1:8000/  (Ctrl-C stops web, worker and beat)"
	$(VENV)/bin/honcho start -f Procfile

## The whole suite: lint, then every test (unit, API, real worker/beat processes, browser).
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Benchmarks: each prints its figure beside a baseline measured in the same run.
bench: install
	@for script in bench/[!_]*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf var/cache var/broker var/test.sqlite3
