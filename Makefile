# visloc: the two set-up commands are `make test` and `make demo`; both build what is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Every target that runs Python sources the venv and the colcon install tree.
RUN := source $(VENV)/bin/activate && source install/local_setup.bash &&

.PHONY: env build test test-core test-ros lint demo bench clean

env: $(VENV)/.stamp
$(VENV)/.stamp: requirements/lock.txt requirements/nodeps.txt pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh

build: install/.stamp
install/.stamp: $(VENV)/.stamp package.xml CMakeLists.txt $(wildcard msg/*.msg) scripts/build_ros.sh scripts/ros_src.sh
	bash scripts/build_ros.sh

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: env build
	$(RUN) bash scripts/run_tests.sh

demo: env build
	$(RUN) bash scripts/demo.sh

bench: env build
	$(RUN) visloc bench --out bench_results

clean:
	rm -rf build install log
