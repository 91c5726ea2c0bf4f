# One-command entry points. Everything runs inside .venv, created by `make setup`.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
TORCH   := torch==2.14.1 torchvision==0.29.1
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# OpenMP threads sleep instead of spinning while they wait: with the default spinning, any other job
# on the machine made tiny-model training 3-26x slower.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo demo-ablation demo-cascade test test-fast test-unit test-real bench bench-real profile-real bench-progressive lint clean

setup: $(STAMP)

# constraints.txt pins every package to the version the README's numbers were measured with;
# pyproject.toml keeps ranges for library users.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt $(TORCH)
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m mpo.cli demo --out demo_out

bench: setup
	$(PY) -m mpo.cli bench --out benchmarks/results

# The real shape (InternVL2.5-1B widths, 151k vocabulary, 448 px tiles, MMPR-like pairs) on the CPU.
bench-real: setup
	$(PY) -m mpo.cli bench --shape real --threads 2 --out benchmarks/results

# Where the time and memory go at the real shape (about 10 minutes): benchmarks/results/real_profile.md
profile-real: setup
	$(PY) -m benchmarks.real_profile --out benchmarks/results

# Progressive scaling on the CPU (about 25 minutes): benchmarks/results/progressive.md
bench-progressive: setup
	$(PY) -m benchmarks.progressive

demo-ablation: setup
	$(PY) -m mpo.cli demo --out demo_out --ablation

# Cascade RL after the demo (reuses its checkpoints): MPO then GSPO against MPO, GSPO from SFT and a
# second MPO round, with 3 seeds of the two leading arms: demo_out/cascade/REPORT.md
demo-cascade: setup
	$(PY) -m mpo.cli demo --out demo_out --cascade

test: setup
	$(PY) -m pytest -q -m "not real" tests

# InternVL2.5-1B at its published widths: convert, generate, train (about 7 minutes, 20 GiB, 3.8 GB of disk).
test-real: setup
	$(PY) -m pytest -q -m real tests

# No multi-process or end-to-end runs: under 5 minutes on 2 cores.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not real" tests

# Unit tests that need no model (tests/conftest.py marks the others): under a minute on 2 cores.
test-unit: setup
	$(PY) -m pytest -q -m "not slow and not model and not real" tests

lint: setup
	.venv/bin/ruff format --check mpo data_builders eval tests benchmarks recipes
	.venv/bin/ruff check mpo data_builders eval tests benchmarks recipes

clean:
	rm -rf demo_out .pytest_cache
