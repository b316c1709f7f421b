# One entry point for setting up, testing and measuring pruning_core.
# Every target creates .venv from the project's own files first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision come from local wheels on the project machines (see README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PLUGINS := plugins/hf_transformers plugins/timm plugins/yolo
STAMP := $(VENV)/.installed
# worksteal: an idle worker takes queued tests from a busy one, so slow tests (marked `slow`)
# do not end the run on one core; --durations lists the slowest, to keep the suite from growing.
PYTEST_ARGS ?= -n 2 --dist worksteal --durations=15

.PHONY: setup demo test bench bench-llm bench-time sweep fuzz quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml plugins/hf_transformers/pyproject.toml plugins/timm/pyproject.toml plugins/yolo/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[all,test]" $(foreach p,$(PLUGINS),-e $(p))
	touch $(STAMP)

demo: setup
	$(PY) examples/minimal_depgraph.py
	$(PY) -m pruning_core prune torchvision:resnet18 --ratio 0.5 --output build/demo/resnet18-pruned

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/bench_depgraph.py --output benchmarks/results/depgraph.md

# Streaming prune of a LLaMA-2-7B-shaped checkpoint (13.5 GB, generated and deleted again; issue 14).
# Needs about 25 GB of free disk (13.5 GB in, 8.7 GB out) and 20 GB of memory for the in-memory comparison;
# took 31 minutes on 2 shared cores (benchmarks/results/llm_memory.md).
bench-llm: setup
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/bench_llm.py --output benchmarks/results/llm_memory.md

# Our graph+prune time over torch-pruning's, for the code as checked out and for the commit before the
# architecture refactor (issue 12), on a sample of the sweep's models in one interleaved run (about 10 minutes).
bench-time: setup
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/time_vs_baseline.py --output benchmarks/results/time_vs_baseline.md

sweep: setup
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/sweep.py --output benchmarks/results

fuzz: setup
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/fuzz.py --examples 2000 --output benchmarks/results/fuzz.md

# Pruned-model quality against torch-pruning 1.6.1 on real weights and data (issue 13). The small LM
# it trains is cached in build/quality-cache/, so only the first run pays for training.
quality: setup
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/quality.py --output benchmarks/results/quality.md

clean:
	rm -rf $(VENV) build *.egg-info plugins/*/build plugins/*/src/*.egg-info .pytest_cache .hypothesis
