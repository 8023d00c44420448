# ossl_ktls: entry points. `make test` is what CI runs (.ci/run); `make demo` is the main job.
#
#   make setup        install the lab's packages (apt, as root on Debian) and .lab/venv
#   make test         setup, then every tox environment and a summary (lab/matrix.py);
#                     ARGS=... goes to pytest in the host and kernel environments
#   make demo         setup, fetch the newest kernel, move a file over kernel TLS
#   make bench        the benchmark inside the newest lab kernel -> docs/benchmarks.{md,json,png}
#                     and docs/tunnel-benchmark.{md,json} (ossl-ktls tunnel vs stunnel4)
#   make lint | type | host | host-py312 | host-py313 | mindeps
#   make kernel-5.10 | kernel-6.1 | kernel-6.12 | kernel-7.2
#                     one tox environment; pytest arguments via ARGS="-k something"
#   make kernels      fetch (or refresh) all lab kernels into the cache
SHELL := /bin/bash
LAB_VENV ?= .lab/venv
PY := $(LAB_VENV)/bin/python
TOX := $(PY) -m tox
SETUP_STAMP := $(LAB_VENV)/.ossl-ktls-setup
SERIES := 5.10 6.1 6.12 7.2
KERNEL_ENVS := $(addprefix kernel-,$(SERIES))
ARGS ?=

# vng (virtme-ng) and tox come from the lab venv; the other Pythons the package claims
# (host-py312, host-py313) from pyenv's versions, where this machine image keeps them
# (last on PATH: python3 stays what it was)
PYENV_ROOT ?= $(HOME)/.pyenv
OTHER_PYTHONS := $(foreach v,3.12 3.13,$(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(v).*/bin))))
empty :=
space := $(empty) $(empty)
export PATH := $(CURDIR)/$(LAB_VENV)/bin:$(subst $(space),:,$(strip $(PATH) $(OTHER_PYTHONS)))

.PHONY: setup test demo bench lint type host host-py312 host-py313 mindeps kernels $(KERNEL_ENVS)

setup:
	bash lab/setup.sh

$(SETUP_STAMP): pyproject.toml lab/setup.sh
	bash lab/setup.sh

test: setup
	$(PY) -m lab.matrix $(if $(ARGS),-- $(ARGS))

demo: setup
	$(PY) -m lab.kernels fetch 7.2
	$(PY) -m lab.demo

bench: setup
	$(TOX) -e bench $(if $(ARGS),-- $(ARGS))

kernels: $(SETUP_STAMP)
	$(PY) -m lab.kernels fetch $(SERIES)

lint type host host-py312 host-py313 mindeps $(KERNEL_ENVS): $(SETUP_STAMP)
	$(TOX) -e $@ $(if $(ARGS),-- $(ARGS))
