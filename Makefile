# Thin wrapper over CMake for the two commands of README.md: `make run` and `make test`.
BUILD      ?= build
BUILD_TYPE ?= Debug
CMAKE_ARGS ?=
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps configure build run test test-asan stop clean release bench load chaos

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
	@cmake --build build-release -j $(JOBS) --target batchd
	@scripts/run.sh build-release/batchd conf/dev.yaml

test: build
	@scripts/test.sh $(BUILD)

test-asan:
	@$(MAKE) --no-print-directory build BUILD=build-asan \
	    CMAKE_ARGS="-DBATCHD_ASAN=ON -DBATCHD_UBSAN=ON"
	@ASAN_OPTIONS=detect_leaks=1 scripts/test.sh build-asan

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

clean:
	rm -rf build build-release build-asan
