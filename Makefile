# Every target creates .venv from requirements.lock when it is missing, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest lock fidelity-venv clean assets

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m connector.demo
	@echo 'Playground against the emulator: run `$(BIN)/d365 emulator serve --sample-data --connection-out emu.json` in one terminal,'
	@echo 'then `$(BIN)/d365 serve --connection emu=emu.json` in another, and open http://127.0.0.1:8365/login with the token it prints.'

# The playground page (connector/playground/, committed and shipped in the wheel) from playground/'s lock file.
assets:
	cd playground && npm ci --no-audit --no-fund && node build.mjs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) fidelity-venv
	$(BIN)/pytest -n 2 -p no:cacheprovider

test: lint typecheck pytest

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e '.[dev]'
	echo '# Pinned dependency set used by make (pip install -c requirements.lock). Regenerate with `make lock`.' > requirements.lock
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' >> requirements.lock
	rm -rf .lock-venv

# Microsoft's official SDK in its own venv (pandas and pins that would fight ours), for tests/fidelity/.
FIDELITY_VENV := .venv-fidelity
FIDELITY_STAMP := $(FIDELITY_VENV)/.installed

fidelity-venv: $(FIDELITY_STAMP)

$(FIDELITY_STAMP): tests/fidelity/requirements.lock
	@test -x $(FIDELITY_VENV)/bin/python || $(PYTHON) -m venv $(FIDELITY_VENV) || python3 -m venv $(FIDELITY_VENV)
	$(FIDELITY_VENV)/bin/python -m pip install -q -r tests/fidelity/requirements.lock
	@touch $(FIDELITY_STAMP)

clean:
	rm -rf $(VENV) .venv-fidelity build dist *.egg-info
