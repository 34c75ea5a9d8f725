# faasbox: two commands do all set-up on a fresh machine.
#   make run   - create .venv, install, start the server with examples/ deployed
#   make test  - create .venv, install, run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	./scripts/host-setup
	./scripts/pg-setup
	./scripts/browser-setup
	touch $(STAMP)

run: $(STAMP)
	@echo "faasbox on http://$(HOST):$(PORT) with examples/ deployed. In another terminal, try:"
	@echo "  source .venv/bin/activate"
	@echo "  faasbox ls"
	@echo "  faasbox invoke hello --data '{\"name\": \"ada\"}' -v"
	@echo "  faasbox invoke primes --data '{\"n\": 5000000}'"
	@echo "  faasbox invoke slugs --async --wait --data '{\"text\": \"Hello, faasbox!\"}'  # needs the package index at start"
	@echo "  curl -s -H \"Authorization: Bearer \$$(cat .faasbox/admin.key)\" $(HOST):$(PORT)/v1/functions/hello/invoke -d '{\"name\": \"bob\"}'"
	@echo "  open http://$(HOST):$(PORT)/docs for the API"
	$(BIN)/faasbox server --host $(HOST) --port $(PORT) --deploy examples/faasbox.yaml

test: $(STAMP)
	FAASBOX_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -n 2 --dist loadgroup

bench: $(STAMP)
	@$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .faasbox .pytest_cache
