# The two commands of the README:
#   make quickstart   set up, then run the quickstart on the embedded local provider
#   make test         set up, then lint, type-check and run every test
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
QUICKSTART := examples/quickstart

.PHONY: setup quickstart test lint bench clean

$(BIN)/mlinfra: pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(BIN)/python || uv venv --quiet --python $(PYTHON) $(VENV)
	uv pip install --quiet --compile-bytecode --python $(BIN)/python \
		--config-settings editable_mode=compat -e '.[dev]'
	@touch $@

setup: $(BIN)/mlinfra

# Trains, evaluates, registers and promotes the quickstart's model, serves it, and
# scores a request.
quickstart: setup
	$(BIN)/mlinfra validate -C $(QUICKSTART)
	$(BIN)/mlinfra apply -C $(QUICKSTART) --auto-approve
	$(BIN)/mlinfra models list -C $(QUICKSTART)
	$(BIN)/mlinfra endpoints invoke fraud-api -C $(QUICKSTART) \
		--data $(QUICKSTART)/sample-request.json

lint: setup
	$(BIN)/ruff check mlinfra tests benchmarks
	$(BIN)/mypy

# pytest exits 5 when it collected no test: make fails on any non-zero exit.
test: lint
	$(BIN)/pytest -q

# Destroys what the quickstart started (its endpoint server) before its state goes.
clean:
	-test -x $(BIN)/mlinfra && $(BIN)/mlinfra destroy -C $(QUICKSTART) --auto-approve
	rm -rf $(VENV) $(QUICKSTART)/.mlinfra
