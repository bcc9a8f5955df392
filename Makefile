# hakube: the two entry points are `make demo` and `make test`. Both install what they need.
CARGO ?= cargo
HAKUBE := target/debug/hakube
LAB ?= demo

.PHONY: setup build demo test lint clean-lab fresh-check

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --bins

## demo: build, plan and render the runbook's cluster with real-tool checks, then a live lab.
demo: build
	bash scripts/demo.sh

## test: formatting, clippy and the whole test suite (lab tests need root).
test: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets -- --test-threads=2

## fresh-check: prove setup, build and the lab-free tests on a clean Debian 12 root (root; slow).
fresh-check:
	bash scripts/fresh-check.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

clean-lab:
	-$(HAKUBE) lab down --name $(LAB)
