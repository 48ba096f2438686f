# Thin wrapper over CMake for the two commands of README.md: `make run` and `make test`.
BUILD      ?= build
BUILD_TYPE ?= Debug
CMAKE_ARGS ?=
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps configure build run test test-asan stop clean release bench load chaos deb

all: build

deps:
	@scripts/deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

release:
	@$(MAKE) --no-print-directory build BUILD=build-release BUILD_TYPE=Release

run: deps
	@cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build build-release -j $(JOBS) --target batchd batchctl
	@scripts/run.sh build-release/batchd conf/dev.yaml

test: build
	@scripts/test.sh $(BUILD)

# The sanitizer build (docs/testing.md, "Sanitizers and CI"): clang, AddressSanitizer +
# UBSan with clang's extra checks, every finding fatal; every suite runs, and the fuzz
# targets, linked with libFuzzer, replay their corpora. SAN_CC=gcc: the same with gcc (fewer
# checks; the fuzz targets replay through replay_main.c). An existing build-asan made by
# another compiler is removed first: CMake would wipe its cache and drop the -D options with
# it, giving a build without sanitizers.
SAN_CC ?= clang
test-asan:
	@scripts/deps.sh --sanitizers
	@if [ -f build-asan/CMakeCache.txt ] && \
	    ! grep -qE '^CMAKE_C_COMPILER:[A-Z]+=(.*/)?$(SAN_CC)$$' build-asan/CMakeCache.txt; then \
	    rm -rf build-asan; fi
	@$(MAKE) --no-print-directory build BUILD=build-asan CMAKE_ARGS="-DCMAKE_C_COMPILER=$(SAN_CC) \
	    -DBATCHD_ASAN=ON -DBATCHD_UBSAN=ON -DBATCHD_FUZZ=$(if $(findstring clang,$(SAN_CC)),ON,OFF)"
	@scripts/test.sh build-asan

# The chaos test at full length (test/it_chaos.c: 200 random faults, ~15-20 min) on its own
# Redis and PostgreSQL; BD_CHAOS_FAULTS and BD_CHAOS_SEED override.
chaos: build
	@cd $(BUILD)/test && BD_SOURCE_DIR=$(CURDIR) BD_BATCHD_BIN=$(CURDIR)/$(BUILD)/batchd \
	    BD_FAKE_MODEL_BIN=$(CURDIR)/$(BUILD)/test/fake_model/fake_model \
	    BD_CHAOS_FAULTS=$${BD_CHAOS_FAULTS:-200} ./it_chaos

stop:
	@scripts/stack.sh stop dev

bench: deps
	@$(MAKE) --no-print-directory build BUILD=build-release BUILD_TYPE=Release
	@bench/run.sh build-release

# Hostile clients (not in `make test`: about two minutes): 1,000 keep-alive clients and 1,000
# slowloris connections for 60 s against one batchd; figures in docs/reliability.md.
load: deps
	@$(MAKE) --no-print-directory build BUILD=build-release BUILD_TYPE=Release
	@bench/run.sh --only hostile build-release

# The Debian package (packaging/deb.sh): built with dpkg-buildpackage from a staged copy of
# the tree into build-deb/, then unpacked into build-deb/root, where its batchd checks its
# config and systemd-analyze verifies and scores its unit. Only the unit tests run in the
# package build (no Redis or PostgreSQL there).
DEB_DIR ?= build-deb
deb:
	@scripts/deps.sh --deb
	@packaging/deb.sh $(DEB_DIR)

clean:
	rm -rf build build-release build-asan build-deb
