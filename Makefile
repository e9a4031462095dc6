# Two commands do everything on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint serve clean example-open-bandit example-interactions promtool stack docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24,<27"

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipelines.demo

test: $(STAMP) promtool lint
	$(BIN)/python -m pytest -q

# ruff (rules and line length in pyproject.toml), ruff's formatter as a check, and mypy over ranker/ and api/.
# `$(BIN)/ruff format .` formats the tree.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# promtool (alert rule unit tests) ships in Debian's prometheus package; installed when missing and
# possible (root + apt-get), otherwise those tests skip and say why. Only the promtool binary is used.
promtool:
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1)) && \
	  echo "installed promtool (Debian package prometheus)"; } || echo "promtool unavailable: alert rule tests will skip"

example-open-bandit: $(STAMP)  # real ZOZOTOWN logs: import -> features -> train -> evaluate (IPS); own home
	$(BIN)/python -m pipelines.example_open_bandit --home artifacts/open_bandit

example-interactions: $(STAMP)  # simulated log exported as interactions.csv + items.csv -> import -> sampled groups -> train -> full-catalogue evaluation; own home
	$(BIN)/python -m pipelines.example_interactions --home artifacts/interactions

stack: $(STAMP)  # redis-server + S3 server (moto) + gunicorn scorer on loopback: infra/docker-compose.yml without containers
	$(BIN)/python -m infra.stack up --workers $${WORKERS:-2} $${PORT:+--port $$PORT}

docs: $(STAMP)  # the documentation site, rebuilt on every save; `make test` builds it with --strict
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict -a 127.0.0.1:$${DOCS_PORT:-8001}

serve: $(STAMP)
	$(BIN)/ranker serve --port $${PORT:-8000} --workers $${WORKERS:-2}

clean:
	rm -rf data artifacts
