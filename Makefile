# tcpmap build, test and run targets. Go 1.26+ is the only build dependency;
# the e2e tests also need root and iproute2 (see .ci/run for a fresh machine).

GO      ?= go
BIN     := bin
PKGS    := ./...
# Every test run has a hard deadline so a hung socket fails the run instead of
# eating CI's budget.
TEST_TIMEOUT ?= 30m

.PHONY: all build test unit e2e run bench lint fmt vet clean image

all: build

build:
	$(GO) build -o $(BIN)/tcpmapd ./cmd/tcpmapd
	$(GO) build -o $(BIN)/tcpmapctl ./cmd/tcpmapctl

## test: everything, unit and end-to-end (e2e needs root; it skips otherwise, fails under CI=true).
## The end-to-end suite runs twice: once as it is (userspace relay) and once
## with every daemon on the eBPF kernel splice, so each behaviour is checked
## on both datapaths.
test:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)
	E2E_DATAPATH=ebpf $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./test/e2e/

unit:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v /test/)

e2e:
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./test/e2e/

## run: tcpmapd with deploy/examples and the built-in demo upstream on 127.0.0.1:7001
run: build
	@# The eBPF datapath pins under /sys/fs/bpf; as root, mount it if needed.
	@# Without it (or without root) tcpmapd relays in userspace and says why.
	@mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
	$(BIN)/tcpmapd --config deploy/examples --demo-upstream 127.0.0.1:7001 --log-format console

## bench: tcpmapd (both datapaths) against direct, HAProxy and a Go relay on loopback,
## one table with ratios to direct (test/bench); BENCH_FLAGS="--quick" for a smoke run.
## Installs nothing: without haproxy on PATH or in /usr/sbin its column is skipped.
BENCH_FLAGS ?=
bench:
	$(GO) run ./test/bench $(BENCH_FLAGS)

## image: the container image $(IMAGE) with podman (deploy/Containerfile).
## No base image can be pulled here, so the static binaries are built on the
## host into the staging context $(IMAGE_CONTEXT) and copied into FROM scratch.
## BPFTOOL= (empty) leaves bpftool out; by default the host's is copied with
## the shared libraries ldd lists for it.
IMAGE         ?= localhost/tcpmap:dev
IMAGE_CONTEXT ?= $(BIN)/image
PODMAN        ?= podman
BPFTOOL       ?= $(shell command -v bpftool 2>/dev/null || ls /usr/sbin/bpftool 2>/dev/null)
CA_BUNDLE     ?= /etc/ssl/certs/ca-certificates.crt
image:
	rm -rf $(IMAGE_CONTEXT)
	mkdir -p $(IMAGE_CONTEXT)/etc $(IMAGE_CONTEXT)/bpftool
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(IMAGE_CONTEXT)/tcpmapd ./cmd/tcpmapd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(IMAGE_CONTEXT)/tcpmapctl ./cmd/tcpmapctl
	printf 'root:x:0:0:root:/:/sbin/nologin\n' > $(IMAGE_CONTEXT)/etc/passwd
	printf 'root:x:0:\n' > $(IMAGE_CONTEXT)/etc/group
	cp -L $(CA_BUNDLE) $(IMAGE_CONTEXT)/ca-certificates.crt
	@if [ -n "$(BPFTOOL)" ]; then \
		set -e; ctx=$(IMAGE_CONTEXT)/bpftool; \
		mkdir -p $$ctx/usr/sbin; cp -L $(BPFTOOL) $$ctx/usr/sbin/bpftool; \
		for lib in $$(ldd $(BPFTOOL) 2>/dev/null | grep -o '/[^ ]*'); do \
			mkdir -p $$ctx$$(dirname $$lib); cp -L $$lib $$ctx$$lib; \
		done; \
		echo "bpftool: $(BPFTOOL) and $$(ldd $(BPFTOOL) 2>/dev/null | grep -c '/') shared libraries"; \
	else \
		echo "bpftool: not found on this host (or BPFTOOL= given); the image has none"; \
	fi
	$(PODMAN) build --layers=false -t $(IMAGE) -f deploy/Containerfile \
		--build-arg VERSION=$$(git describe --always --dirty 2>/dev/null || echo dev) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
		$(IMAGE_CONTEXT)

## generate: rebuild the BPF object and its Go bindings (needs clang-14, llvm-14, libbpf-dev)
.PHONY: generate check-generate
generate:
	$(GO) generate ./...

## check-generate: fail when the committed BPF object or bindings differ from what the sources build
BPF_GENERATED := datapath/splice_bpfel.go datapath/splice_bpfel.o datapath/lookup_bpfel.go datapath/lookup_bpfel.o
check-generate: generate
	@git ls-files --error-unmatch $(BPF_GENERATED) >/dev/null || \
		{ echo "generated BPF files are not committed: $(BPF_GENERATED)"; exit 1; }
	@git diff --exit-code --stat -- $(BPF_GENERATED) || \
		{ echo "generated BPF files differ from the committed ones: run make generate with clang-14 and commit"; exit 1; }

lint: fmt vet

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb]\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

clean:
	rm -rf $(BIN)
