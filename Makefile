# contrastive_kernels: `make demo` (set up + main job), `make test` (set up + tests).
# Everything lives in .venv; `make install` is a no-op when nothing changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 triton==3.8.0
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h)

.PHONY: install demo test test-fast bench info clean

install: $(VENV)/.installed $(VENV)/.built

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q setuptools wheel
	$(PY) -m pip install -q $(TORCH_PIN) pybind11 ninja
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@ $(VENV)/.built

# C++ changes rebuild the extension incrementally (ninja), not the whole install.
$(VENV)/.built: $(EXT_SOURCES) | $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace
	touch $@

demo: install
	$(PY) -m contrastive_kernels.demo

test: install
	$(PY) -m pytest -q -ra tests

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow" tests

bench: install
	mkdir -p bench/results
	$(PY) -m pytest bench -o python_files="bench_*.py" -q --benchmark-json=bench/results/supcon_cpu.json
	$(PY) bench/report.py bench/results/supcon_cpu.json

info: install
	$(PY) -m contrastive_kernels.info

clean:
	rm -rf build *.egg-info contrastive_kernels/*.so $(VENV)
