# tsa_ros: `make setup` prepares everything in .venv (idempotent), `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.tsa-setup-done
BUILD := build

MSG_SOURCES := $(wildcard msg/*.msg) interfaces/tsa_msgs/CMakeLists.txt \
	interfaces/tsa_msgs/package.xml cmake/fix_wheel_include_dirs.cmake tools/build_interfaces.sh

.PHONY: setup keys test lint clean help demo
.DEFAULT_GOAL := help

help:
	@echo 'make setup   create .venv, install pinned dependencies, build tsa_msgs, create the'
	@echo '             weights key file when missing (idempotent)'
	@echo 'make demo    the whole method in one run: data, T/S/A, the graph under attack, a report'
	@echo '             (results/demo/index.html; cached re-runs take minutes)'
	@echo 'make test    run the whole test suite (runs setup first when needed)'
	@echo 'make lint    ruff check + format check (pinned ruff in .venv)'
	@echo 'make clean   remove build/ (keeps .venv)'

setup: $(STAMP) keys

# The key that signs A's weight snapshots lives outside the checkout (~/.config/tsa_ros,
# mode 0600), never in git; created when missing, checked when present.
keys: $(STAMP)
	@$(VENV)/bin/tsa keys init --exist-ok

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-done: requirements.txt requirements-nodeps.txt | $(VENV)/bin/python
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.msgs-done: $(VENV)/.deps-done $(MSG_SOURCES)
	tools/build_interfaces.sh $(VENV) $(BUILD)/tsa_msgs
	touch $@

$(STAMP): $(VENV)/.deps-done $(VENV)/.msgs-done setup.py
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(VENV)/bin/tsa demo

test: setup
	$(VPY) -m pytest test

lint: setup
	$(VENV)/bin/ruff check tsa_ros test benchmarks launch setup.py
	$(VENV)/bin/ruff format --check tsa_ros test benchmarks launch setup.py

clean:
	rm -rf $(BUILD)
