# Gatehouse. `make run` for the quickstart, `make test` for the whole suite.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
HOST ?= 127.0.0.1

.PHONY: run install migrate seed test lint bench clean demo-traffic

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

# The quickstart: SQLite and a filesystem broker unless DATABASE_URL / CELERY_BROKER_URL
# are set; DEBUG on so it serves its own static files on plain http.
run: export DJANGO_DEBUG ?= 1
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo --token-file var/demo-agent-token.txt
	$(BIN)/python manage.py demo_traffic
	$(BIN)/python scripts/run_all.py --host $(HOST) --port $(PORT)

migrate: install
	$(BIN)/python manage.py migrate --noinput

seed: install
	DJANGO_DEBUG=1 $(BIN)/python manage.py seed_demo

demo-traffic: install
	DJANGO_DEBUG=1 $(BIN)/python manage.py demo_traffic

test: install
	$(BIN)/ruff check .
	$(BIN)/python scripts/check_services.py
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) var .pytest_cache
