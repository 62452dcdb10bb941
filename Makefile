# The two commands of the README:
#   make quickstart   set up, then run the quickstart on the embedded local provider
#   make test         set up, then lint, type-check and run every test
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
QUICKSTART := examples/quickstart

.PHONY: setup quickstart test lint bench clean studio-vendor

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

# The studio's browser libraries, vendored into the package from npm with their
# licences (the studio serves them itself and works offline). Run to update them.
STUDIO_VENDOR := mlinfra/studio/static/vendor
UPLOT_VERSION := 1.6.32
HTMX_VERSION := 2.0.11
DAGRE_VERSION := 3.1.4
studio-vendor:
	rm -rf .vendor-tmp && mkdir -p .vendor-tmp $(STUDIO_VENDOR)/uplot $(STUDIO_VENDOR)/htmx $(STUDIO_VENDOR)/dagre
	cd .vendor-tmp && npm pack --silent uplot@$(UPLOT_VERSION) htmx.org@$(HTMX_VERSION) @dagrejs/dagre@$(DAGRE_VERSION) >/dev/null
	cd .vendor-tmp && for f in *.tgz; do mkdir -p "$${f%.tgz}" && tar xzf "$$f" -C "$${f%.tgz}"; done
	cp .vendor-tmp/uplot-$(UPLOT_VERSION)/package/dist/uPlot.iife.min.js .vendor-tmp/uplot-$(UPLOT_VERSION)/package/dist/uPlot.min.css .vendor-tmp/uplot-$(UPLOT_VERSION)/package/LICENSE $(STUDIO_VENDOR)/uplot/
	cp .vendor-tmp/htmx.org-$(HTMX_VERSION)/package/dist/htmx.min.js .vendor-tmp/htmx.org-$(HTMX_VERSION)/package/LICENSE $(STUDIO_VENDOR)/htmx/
	cp .vendor-tmp/dagrejs-dagre-$(DAGRE_VERSION)/package/dist/dagre.min.js .vendor-tmp/dagrejs-dagre-$(DAGRE_VERSION)/package/dist/dagre.min.js.LEGAL.txt .vendor-tmp/dagrejs-dagre-$(DAGRE_VERSION)/package/LICENSE $(STUDIO_VENDOR)/dagre/
	rm -rf .vendor-tmp
