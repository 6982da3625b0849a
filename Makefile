# Everything a fresh Debian 12 machine needs: `make demo` and `make test` do all set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Real tools the tests and benchmarks drive (registry, image tools, rootfs builder).
DEBS := gcc libc6-dev zstd docker-registry skopeo umoci mmdebstrap podman uidmap \
        fuse-overlayfs attr acl tar gzip rpm pacman-package-manager libarchive-tools \
        nginx-light casync zchunk ostree rsync xdelta3
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup debs venv demo test lint format typecheck bench bench-cdc bench-build bench-layers \
        bench-format bench-update bench-registry bench-suite bench-quick bench-fleet \
        bench-fleet-quick fuzz clean

setup: debs venv

debs:
	@missing=$$(for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard chunkah/_native/*.c chunkah/_native/*.h) chunkah/_native/build_ffi.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/python fixtures/demo.py

test: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)
	$(MAKE) bench-quick

# The parsers' fuzzers at 10 000 examples each (make test runs a short profile).
fuzz: setup
	CHUNKAH_FUZZ=long $(BIN)/python -m pytest -q -n 2 tests/test_fuzz_parsers.py $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check chunkah tests benchmarks
	$(BIN)/ruff format --check chunkah tests benchmarks
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format chunkah tests benchmarks
	$(BIN)/ruff check --fix chunkah tests benchmarks

typecheck: venv
	$(BIN)/mypy

bench-cdc: setup
	$(BIN)/python benchmarks/bench_cdc.py

bench-build: setup
	$(BIN)/python benchmarks/bench_build.py

bench-layers: setup
	$(BIN)/python benchmarks/bench_layers.py

bench-format: setup
	$(BIN)/python benchmarks/bench_format.py --series tiny
	$(BIN)/python benchmarks/bench_format.py --series app

bench-update: setup
	$(BIN)/python benchmarks/bench_update.py

bench-registry: setup
	$(BIN)/python benchmarks/bench_registry.py

# Every update strategy on every image series (hours; resumable: finished cells are kept).
bench-suite: setup
	$(BIN)/python benchmarks/suite.py --profile full --keep-peer-cells

# The fleet's quick profile, then the tiny series' v2->v3 step with every quick strategy;
# fails when our byte counts regress beyond benchmarks/thresholds.json (run by make test).
bench-quick: setup bench-fleet-quick
	$(BIN)/python benchmarks/suite.py --profile quick

# Fleet scale (issue 11): N hosts updating at once against chunkah serve, docker-registry
# and an nginx CDN edge. Full sweep (tiny series, N up to 1000: about 15 min) and a
# quick profile (synthetic tree, N = 10 and 100: under 90 s).
bench-fleet: setup
	$(BIN)/python benchmarks/fleet.py --profile full

bench-fleet-quick: setup
	$(BIN)/python benchmarks/fleet.py --profile quick

# Every benchmark program; results in benchmarks/results/, summary in benchmarks/RESULTS.md.
# (bench-update's methods are all in the suite; run it on its own for 3-run medians.)
bench: bench-suite bench-fleet bench-cdc bench-build bench-layers bench-format bench-registry

clean:
	rm -rf $(VENV) build *.egg-info chunkah/_native/*.so .pytest_cache .mypy_cache .ruff_cache
