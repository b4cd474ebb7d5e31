# Two commands from a fresh clone:  make demo   (export swin_t, verify, time, report)
#                                   make test   (the test suite; CI runs exactly this)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test lint docs bench fixtures clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first, pinned: the CPU machines here install these two from local disk
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m exporters swin_t
	@echo "report: out/swin_t/report.md"

test: install lint docs
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# the documentation site, strict: a broken link, a stale API reference or a CLI whose --help fails stops make test
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

# the layer contract (import-linter, pyproject.toml) and the linter; both run in `make test`, so in CI
lint: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m benchmarks swin_t vit_b

fixtures: install
	$(PY) tests/fixtures/make_digits.py

clean:
	rm -rf out .pytest_cache
