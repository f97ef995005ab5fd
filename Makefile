# modelimage: `make demo` runs the main job on a generated model; `make test`
# installs everything the tests use (Debian packages + a virtualenv) and runs them.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `make demo` gets a virtualenv of its own with the runtime dependencies only
# (no test tools): measured 214 MB and 34 s from a warm pip cache (README).
DEMO_VENV ?= .venv-demo
MI := $(DEMO_VENV)/bin/modelimage
DEMO_DIR ?= demo-out
# The real parts the tests run against (see ../shared/ENVIRONMENT.md):
# a CNCF registry, podman (+runc), skopeo, umoci, busybox for FROM-scratch
# test images, htpasswd for registry auth, containerd (what Kubernetes nodes run).
APT_PACKAGES := docker-registry skopeo umoci podman runc busybox-static apache2-utils containerd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install tools demo test test-fast bench check-loaders check-llama-cpp clean

help:
	@echo "make demo   build a generated model into a local OCI layout (no registry, no daemon)"
	@echo "make test   install the test tools (apt + virtualenv) and run the whole suite"
	@echo "make bench  measure compression, push and pull against peers (several minutes)"
	@echo "make check-loaders    the real transformers and PEFT load what modelimage builds and pulls (outside CI)"
	@echo "make check-llama-cpp  the real llama.cpp (llama-cpp-python, ~10 min to build) loads base + adapter"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(DEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -e .
	touch $@

tools:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: $(DEMO_VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(MI) example-model $(DEMO_DIR)/llama-demo --kind llama
	$(MI) example-model $(DEMO_DIR)/llama-demo-gguf --kind gguf
	$(MI) inspect $(DEMO_DIR)/llama-demo
	$(MI) inspect $(DEMO_DIR)/llama-demo-gguf --as q8
	$(MI) plan $(DEMO_DIR)/llama-demo --max-layer-size 10MB
	$(MI) plan $(DEMO_DIR)/llama-demo-gguf --max-layer-size 4MB
	$(MI) build $(DEMO_DIR)/llama-demo --max-layer-size 10MB -o oci:$(DEMO_DIR)/oci:llama-demo
	$(MI) build $(DEMO_DIR)/llama-demo-gguf --max-layer-size 4MB -o oci:$(DEMO_DIR)/oci:llama-demo-gguf
	$(MI) inspect oci:$(DEMO_DIR)/oci:llama-demo-gguf
	@echo
	@echo "Built two images into the OCI layout $(DEMO_DIR)/oci. Next:"
	@echo "  skopeo inspect oci:$(DEMO_DIR)/oci:llama-demo"
	@echo "  umoci unpack --image $(DEMO_DIR)/oci:llama-demo $(DEMO_DIR)/bundle && ls $(DEMO_DIR)/bundle/rootfs/models/llama-demo"
	@echo "  podman pull oci:$(DEMO_DIR)/oci:llama-demo-gguf"
	@echo "  skopeo copy oci:$(DEMO_DIR)/oci:llama-demo docker://REGISTRY/llama-demo:latest"

test: tools install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration"

bench: tools install
	$(PY) benchmarks/compression.py
	$(PY) benchmarks/bench_build_push.py
	$(PY) benchmarks/bench_pull.py
	$(PY) benchmarks/estimate_vs_pull.py

clean:
	rm -rf $(DEMO_DIR) $(DEMO_VENV) build dist *.egg-info .pytest_cache

# The real upstream loaders, outside CI (torch is ~700 MB; llama-cpp-python builds from source
# in ~10 minutes): a virtualenv of their own, with this project installed editable.
LOADERS_VENV ?= build/loaders-venv

$(LOADERS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOADERS_VENV)
	$(LOADERS_VENV)/bin/pip install -q -e '.[test]' torch transformers peft
	touch $@

check-loaders: $(LOADERS_VENV)/.installed
	$(LOADERS_VENV)/bin/python benchmarks/upstream_loaders.py transformers peft

check-llama-cpp: $(LOADERS_VENV)/.installed
	$(LOADERS_VENV)/bin/pip install -q llama-cpp-python
	$(LOADERS_VENV)/bin/python benchmarks/upstream_loaders.py llama-cpp
