# cvmboot — see README.md. `make test` is the test command CI runs.
SHELL      := /bin/bash
GO         ?= go
BIN        := bin/cvmboot
PKG        := github.com/cvmboot/cvmboot
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -s -w -buildid= -X $(PKG)/internal/version.Version=$(VERSION)
SIZE_LIMIT := 12582912  # 12 MiB budget for the static binary
RUN        ?=
FUZZTIME   ?= 10s

export CGO_ENABLED=0

.PHONY: build deps test unit lint e2e demo fuzz fuzz-ci bench clean install

# Installs into an image's root tree (DESTDIR): the binary, the systemd units and generator,
# and the dracut module. CONFIG=file installs it as /etc/cvmboot/config.yaml.
DESTDIR ?=
CONFIG  ?=

build:
	@mkdir -p bin
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/cvmboot
	@size=$$(stat -c %s $(BIN)); \
	 awk -v s=$$size -v l=$(SIZE_LIMIT) -v v='$(VERSION)' 'BEGIN{printf "bin/cvmboot: %d bytes (%.1f MiB, budget %.0f MiB), version %s\n", s, s/1048576, l/1048576, v}'; \
	 if command -v file >/dev/null; then file -b $(BIN); fi; \
	 if [ $$size -gt $(SIZE_LIMIT) ]; then echo "bin/cvmboot is over its size budget" >&2; exit 1; fi; \
	 if ! file -b $(BIN) 2>/dev/null | grep -q 'statically linked'; then \
	   command -v file >/dev/null && { echo "bin/cvmboot is not statically linked" >&2; exit 1; } || true; fi
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/cvmboot-host ./cmd/cvmboot-host
	@echo "bin/cvmboot-host: $$(stat -c %s bin/cvmboot-host) bytes (host tools: adds evidence verify; no budget)"

# Debian packages for the interop tests, the VM boots and the demo (apt-get; root or sudo).
deps:
	@test/install-deps.sh

# The README's test command: lint, unit tests (with the interop tests against the real
# cryptsetup/veritysetup) and the VM boots.
test: deps lint unit fuzz-ci e2e

unit:
	$(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	 if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Boots real images under qemu. RUN=name runs one scenario.
e2e: deps build
	@mkdir -p test/e2e/artifacts
	CVMBOOT_E2E=1 $(GO) test -count=1 -timeout 70m -v ./test/e2e -run 'TestE2E$(if $(RUN),/$(RUN))' 2>&1 | tee test/e2e/artifacts/e2e.log | grep -E '^(=== RUN|--- |\s+--- |PASS|FAIL|ok|e2e:)|scenario' ; \
	 rc=$${PIPESTATUS[0]}; if [ $$rc -ne 0 ]; then echo "e2e: what failed, with the console's last lines:"; \
	 awk '/_test.go:[0-9]+: scenario .* failed:$$/ {on=1; print; next} on && /^        / {print; next} {on=0}' test/e2e/artifacts/e2e.log; fi; exit $$rc

demo: deps build
	$(GO) run ./test/e2e/cmd/demo

# Benchmarks against the peers, measured in the same run (ratios first): dm-verity
# format/verify vs veritysetup on this machine; LUKS2 format + activate and storage-ready vs
# cryptsetup and the CoCo-style script in the same VM; initramfs time vs a busybox init;
# sizes and peak memory. BENCH_RUNS runs of each; one table at the end
# (test/bench/results/summary.json).
BENCH_RUNS ?= 3
bench: deps build
	@mkdir -p test/bench/results
	$(GO) test -run '^$$' -bench '1GiB' -benchtime 1x -count $(BENCH_RUNS) -timeout 60m ./pkg/verity | tee test/bench/results/verity-bench.txt
	CVMBOOT_E2E=1 CVMBOOT_E2E_BENCH=1 CVMBOOT_BENCH_RUNS=$(BENCH_RUNS) $(GO) test -count=1 -run '^(TestStorageBench|TestBootBench|TestPersistBench)$$' -v -timeout 150m ./test/e2e 2>&1 | tee test/bench/results/e2e-bench.log | grep -E 'run [0-9]+|ratio|conversion|persistent root,|cvmboot:|cvmboot steps|reference:|cvmboot / busybox|systemd-initrd /|root systemd|binary|storage-ready|results in|^(ok|FAIL|---)'; exit $${PIPESTATUS[0]}
	$(GO) run ./test/bench/benchtable -dir test/bench/results

# Runs every fuzz target for FUZZTIME each (`make fuzz FUZZTIME=10m` for real); fuzz-ci is
# CI's short pass over the same targets (seed corpora plus 2000 new inputs each: a count, not
# a time, since a time limit reached while the machine is loaded fails the run with "context
# deadline exceeded").
fuzz-ci:
	$(MAKE) fuzz FUZZTIME=2000x

fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	    out=$$($(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=100x -parallel=1 $$pkg 2>&1) || \
	      { echo "$$out"; echo "FAIL: fuzz $$pkg $$t" >&2; exit 1; }; \
	    echo "$$out" | grep -E 'elapsed:' | tail -1; \
	  done; done

install:
	@test -x $(BIN) || { echo "make install: $(BIN) is missing: run make build first" >&2; exit 1; }
	systemd/install.sh "$(DESTDIR)" $(BIN) $(CONFIG)

clean:
	rm -rf bin test/e2e/artifacts
