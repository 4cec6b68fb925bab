# The README's commands. Python packages go into .venv; the llama.cpp build and the
# models are cached in ~/.cache/gaplab (GAPLAB_CACHE), outside the clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= scenarios/local-cpu.yaml
WORKLOADS ?= scenarios/workloads-cpu.yaml
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: setup toolchain browser report lab test test-fast lint bench clean

$(BIN)/gaplab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# Quarto reads _environment.local: its kernels and pre-render then use .venv's Python, whichever
# shell runs `quarto render` (activated or not).
_environment.local: $(BIN)/gaplab
	echo "QUARTO_PYTHON=$(abspath $(BIN)/python)" > $@

# The kernels of .venv (Quarto's, JupyterLab's) log errors only: on loopback, ipykernel's warning
# that its TCP sockets are unencrypted is noise on every page Quarto renders.
$(VENV)/etc/ipython/ipython_kernel_config.py: $(BIN)/gaplab
	mkdir -p $(@D) && echo "c.IPKernelApp.log_level = 'ERROR'" > $@

setup: $(BIN)/gaplab _environment.local $(VENV)/etc/ipython/ipython_kernel_config.py

# cmake and a C++ compiler build llama.cpp; installed from Debian when missing (needs root).
toolchain:
	@command -v cmake >/dev/null && command -v c++ >/dev/null || \
	  { apt-get update -qq && $(APT) cmake g++; }

# Debian's Chromium, for the test that loads the site in a real browser.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && $(APT) chromium; }

# Measure the scenario and the workloads study (cells already measured on this machine are
# skipped; FORCE=1 reruns them) and build the site into _site/. WORKLOADS= skips the study.
report: setup toolchain
	$(BIN)/gaplab local setup --runtime llamacpp --runtime vllm --runtime ollama
	$(BIN)/gaplab sweep $(SCENARIO) $(if $(FORCE),--force)
	$(if $(WORKLOADS),$(BIN)/gaplab sweep $(WORKLOADS) $(if $(FORCE),--force))
	$(BIN)/gaplab capabilities $(SCENARIO) $(if $(FORCE),--force)
	$(BIN)/gaplab quality $(SCENARIO) $(if $(FORCE),--force)
	$(BIN)/gaplab report

# JupyterLab on the notebooks, the kernel being .venv's Python (edit, run, then make report).
lab: setup
	$(BIN)/gaplab lab

test: setup toolchain browser lint
	$(BIN)/gaplab local setup --model smollm2-135m --quant Q8_0 --runtime llamacpp --runtime vllm
	$(BIN)/python -m pytest

# The unit tests alone: no build, no server, about 30 s.
test-fast: setup
	$(BIN)/python -m pytest tests/unit -q

# pyflakes, pycodestyle and import order (pyproject.toml's [tool.ruff]), then mypy on lib/gaplab
# ([tool.mypy]; its cache in .mypy_cache makes a rerun take seconds); make test runs it first.
lint: setup
	$(BIN)/ruff check lib tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/client_capacity.py
	$(BIN)/python bench/vs_vllm.py  # vLLM's side is skipped, in one line, without its venv
	$(BIN)/python bench/client_accuracy.py
	$(BIN)/python bench/open_loop_lag.py
	$(BIN)/python bench/store_scale.py --no-eager  # the eager reference: 15 GB, a minute more
	$(BIN)/python bench/cluster_sweep.py
	$(BIN)/python bench/targeting.py --runs 20 --budget 300
	$(BIN)/python bench/workload_precision.py  # the committed workloads study; give a folder for your own

clean:
	rm -rf build _site .quarto _freeze notebooks/*.qmd
