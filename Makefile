# contrastive_kernels: `make demo` (set up + main job), `make test` (set up + tests).
# Everything lives in .venv; `make install` is a no-op when nothing changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 triton==3.8.0
ANCHORS := lightly==1.6.0 open_clip_torch==3.3.0 torchvision==0.29.1 ftfy wcwidth regex
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh) csrc/cuda/nvcc_flags.py

.PHONY: install demo test test-fast bench info clean wheel wheel-check triton-report cuda-report gpu-check gpu-check-dry test-compat

install: $(VENV)/.installed $(VENV)/.built

$(VENV)/.installed: pyproject.toml setup.py
	@echo "[install 1/4] $(VENV): a virtual environment"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q setuptools wheel
	@echo "[install 2/4] $(TORCH_PIN), pybind11, ninja"
	$(PY) -m pip install -q $(TORCH_PIN) pybind11 ninja
	@echo "[install 3/4] the package and its compiled extension: the C++ CPU kernels and the CUDA kernels for sm_80 / sm_90 (about 8 minutes on 2 cores, silent until done)"
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	@echo "[install 4/4] the anchor libraries of the parity tests"
	# the anchor libraries the parity tests compare with, without their training stacks
	# (lightly would pull pytorch_lightning, open_clip timm / huggingface)
	$(PY) -m pip install -q --no-deps $(ANCHORS)
	touch $@ $(VENV)/.built

# C++ changes rebuild the extension incrementally (ninja), not the whole install.
$(VENV)/.built: $(EXT_SOURCES) | $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace
	touch $@

demo: install
	$(PY) -m contrastive_kernels.demo

# One pytest-xdist worker per core (torch single-threaded in each: tests/conftest.py), each
# test module on one worker (--dist loadfile), so that a module fixture that compiles or
# spawns ranks runs once. (--dist loadgroup's xdist_group marks group nothing under
# pytest 9.2 with xdist 3.8: xdist renames item._nodeid, which pytest 9.2 no longer reads,
# and the compile fixtures ran on both workers.)
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
TEST_ARGS = -q -ra -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PY) -m pytest $(TEST_ARGS) tests

test-fast: install
	$(PY) -m pytest $(TEST_ARGS) -m "not slow" tests

# BENCH_SIZES=512x64,1024x128 replaces the (N, d) grid for a quick check; its results go to
# the git-ignored bench/results/quick.tmp/ so that the committed full-grid ones stay.
bench: BENCH_OUT = $(if $(BENCH_SIZES),bench/results/quick.tmp,bench/results)
bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) -m pytest bench --ignore=bench/bench_losses.py -o python_files="bench_*.py" -q --benchmark-json=$(BENCH_OUT)/supcon_cpu.json $(if $(BENCH_SIZES),--bench-sizes=$(BENCH_SIZES))
	$(PY) bench/report.py $(BENCH_OUT)/supcon_cpu.json
	# every loss against its reference and anchor library (a line per case as it finishes)
	$(PY) -m pytest bench/bench_losses.py -o python_files="bench_*.py" -q --benchmark-json=$(BENCH_OUT)/losses.json $(if $(BENCH_SIZES),--bench-sizes=$(BENCH_SIZES))
	$(PY) bench/report_losses.py $(BENCH_OUT)/losses.json

# A wheel of this build (CPU + CUDA kernels for sm_80 / sm_90 + PTX), named for its torch:
# contrastive_kernels-<version>+cu130torch2.14-<python>-<platform>.whl, requiring torch==2.14.*.
wheel: install
	rm -rf dist
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w dist .

# Install that wheel into a fresh environment (torch reused from .venv, no source tree on the
# path), import it and run tests/wheel_smoke.py from outside the checkout.
WHEEL_VENV ?= build/wheel-venv
wheel-check: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > $$($(WHEEL_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/dev_torch.pth
	$(WHEEL_VENV)/bin/python -m pip install -q --no-deps dist/contrastive_kernels-*.whl
	cd /tmp && $(CURDIR)/$(WHEEL_VENV)/bin/python $(CURDIR)/tests/wheel_smoke.py $(abspath $(wildcard dist/contrastive_kernels-*.whl))

info: install
	$(PY) -m contrastive_kernels.info

# Regenerate the committed Triton AOT compile report and its ledger (no GPU; results cached,
# see CONTRASTIVE_KERNELS_TRITON_AOT_CACHE). tests/backends/test_triton_aot.py checks both are
# current, taking the rows the ledger holds and recompiling a sample of them.
triton-report: install
	env -u TRITON_INTERPRET $(PY) -m contrastive_kernels.backends.triton.aot --out docs/triton_compile_report.md --write-ledger docs/triton_compile_ledger.json

# Regenerate the committed CUDA C++ compile report (nvcc, no GPU);
# tests/backends/test_cuda_compile.py checks it is current.
cuda-report: install
	$(PY) csrc/cuda/compile_report.py --out docs/cuda_compile_report.md --write-ledger docs/cuda_compile_ledger.json

# The prepared GPU run (bench/gpu_check.py, docs/gpu_check.md): sections in child processes
# with deadlines, packed after each into $(OUT) as summary.md, summary.json, results.tar.gz
# (plus console.log: 4 files; the device tool returns at most 8). `timeout` bounds the whole
# run and the --pack-only step after it packs whatever a killed run left, so the results
# always come back. Uses the machine's own python / torch / triton (GPU machines cannot
# install anything). Whole run: GPU_CHECK_BUDGET + the packing, under 6 minutes.
OUT ?= bench/results/gpu
GPU_CHECK_BUDGET ?= 330
GPU_CHECK_LIMIT ?= $(shell echo $$(( $(GPU_CHECK_BUDGET) + 15 )))
GPU_CHECK_WORK ?= build/gpu-check
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK = mkdir -p $(OUT); \
	timeout -k 5 $(GPU_CHECK_LIMIT) $(GPU_PY) bench/gpu_check.py --out $(OUT) \
	  --work $(GPU_CHECK_WORK) --budget $(GPU_CHECK_BUDGET) $(1) 2>&1 | tee $(OUT)/console.log; \
	$(GPU_PY) bench/gpu_check.py --out $(OUT) --work $(GPU_CHECK_WORK) --pack-only
gpu-check:
	env -u TRITON_INTERPRET sh -c '$(call GPU_CHECK,)'

# The same run on CPU: Triton interpreter, CUDA emulation, tiny sizes (CI keeps it working:
# tests/backends/test_gpu_check_dry.py, also with a budget that cuts sections off).
gpu-check-dry: OUT = bench/results/gpu-dry.tmp
gpu-check-dry: GPU_CHECK_BUDGET = 240
gpu-check-dry: GPU_CHECK_WORK = build/gpu-check-dry
gpu-check-dry:
	sh -c '$(call GPU_CHECK,--dry)'

# A second environment with the GPU machines' versions (torch 2.11 and triton 3.6): the
# extension is built against that torch (as `pip install --no-build-isolation -e .` does
# there) in a copy of the checkout's files (an in-tree build would replace .venv's _C), then
# the Triton interpreter suite, the CUDA kernels through the emulation, the CPU kernels and
# the dry GPU check run there. Not part of `make test`: the first run downloads torch with
# its CUDA libraries (a few GB, about 9 minutes); then the build takes about 3 minutes and
# the tests about 5.5 on 2 cores (8.5 minutes in all).
# numpy < 2.4: triton 3.6's interpreter hands scalars to range() as 1-element arrays, which
# numpy 2.4 no longer converts to int (triton 3.8 passes 0-d ones). setuptools >= 77 reads
# pyproject's SPDX license string; torch 2.11 asks for < 82.
COMPAT_VENV ?= $(VENV)/compat
COMPAT_PIN ?= torch==2.11.* triton==3.6.* 'numpy<2.4' 'setuptools>=77,<82' pybind11 ninja
COMPAT_TREE ?= build/compat-src
COMPAT_TESTS := tests/backends/test_triton.py tests/backends/test_triton_split.py \
	tests/backends/test_triton_gpu_tables.py tests/backends/test_cuda_emulated.py \
	tests/backends/test_emulation.py tests/backends/test_native.py tests/backends/test_gpu_check_dry.py
test-compat:
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q $(COMPAT_PIN) pytest
	rm -rf $(COMPAT_TREE) && mkdir -p $(COMPAT_TREE)
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(COMPAT_TREE)
	cd $(COMPAT_TREE) && $(CURDIR)/$(COMPAT_VENV)/bin/python setup.py -q build_ext --inplace
	cd $(COMPAT_TREE) && PYTHONPATH=. $(CURDIR)/$(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)
	cd $(COMPAT_TREE) && PYTHONPATH=. $(CURDIR)/$(COMPAT_VENV)/bin/python -c "from contrastive_kernels import _extension as e; import torch; assert e.native_ops is not None, e.LOAD_ERROR; print('extension built and loaded against torch', torch.__version__)"

clean:
	rm -rf build *.egg-info contrastive_kernels/*.so $(VENV)
