# pibake: every target installs what it needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIBAKE := $(BIN)/pibake
IMAGE ?= build/pibake-bullseye.img
BOARD ?= pi3b-plus
PROFILE ?=
EMULATION = --board $(BOARD) $(if $(PROFILE),--profile $(PROFILE))
NAME ?= pibake
PROVIDER ?= debian-source
RASPIOS_IMAGE ?= build/2024-10-22-raspios-bullseye-armhf-lite.img
PREPARED ?= build/pibake-prepared.img
GROW ?= 0
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Debian packages the harness drives. Override APT_GET to use another front end.
APT_GET ?= apt-get
APT_PACKAGES := qemu-system-arm qemu-utils qemu-user-static binfmt-support debootstrap \
	dosfstools mtools fdisk e2fsprogs openssh-client python3-venv ca-certificates ipxe-qemu bmap-tools

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help deps apt-packages binfmt venv image fetch prepare finalize kernel-deps kernel emulate emulate-stop provision demo test test-fast test-integration molecule lint collection clean

help: ## show this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: binfmt ## install the Debian packages the harness drives (apt, as root or with sudo)

# Checked every time (a second): a package added here reaches machines that ran `make deps` before.
apt-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) $(APT_GET) update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

binfmt: apt-packages ## register qemu-arm with binfmt_misc so armhf binaries run here
	@if ! grep -qs enabled /proc/sys/fs/binfmt_misc/qemu-arm; then \
		[ -e /proc/sys/fs/binfmt_misc/register ] || $(SUDO) mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; \
		$(SUDO) update-binfmts --enable qemu-arm; \
	fi
	@grep -q enabled /proc/sys/fs/binfmt_misc/qemu-arm

venv: $(VENV)/.installed ## the Python venv with pibake, its test and dev tools, and TensorFlow (host-only model conversion)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,convert]'
	@touch $@

image: deps venv ## build the base image from Debian bullseye armhf (cached: seconds the second time)
	$(PIBAKE) image build --base debian-bullseye -o $(IMAGE)

fetch: venv ## download Raspberry Pi OS Lite (Legacy bullseye armhf) to RASPIOS_IMAGE: sha256-checked, resumable, cached
	$(PIBAKE) image fetch -o $(RASPIOS_IMAGE)

prepare: .deps-stamp venv ## copy IMAGE to PREPARED and prepare it for PROFILE: GROW MiB, SSH, user + key, emulation tweaks
	$(PIBAKE) image prepare $(IMAGE) -o $(PREPARED) --grow $(GROW) $(if $(PROFILE),--profile $(PROFILE))

finalize: .deps-stamp venv ## undo PREPARED's emulation tweaks, fsck, write its .sha256, .bmap and .manifest.json
	$(PIBAKE) image finalize $(PREPARED)

KERNEL_PACKAGES := linux-source-6.1 gcc-arm-linux-gnueabihf libc6-dev-armhf-cross bc bison flex libssl-dev make cpio xz-utils

kernel-deps: ## Debian's kernel source and ARM cross compiler, for `make kernel`
	@missing=$$(for p in $(KERNEL_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		$(SUDO) $(APT_GET) update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

kernel: kernel-deps venv ## no-initrd kernel for PROFILE (vexpress-a9, vexpress-a15, virt); PROVIDER=debian-source|buildroot
	$(PIBAKE) kernel build --profile $(or $(PROFILE),virt) --provider $(PROVIDER)

emulate: deps venv ## boot IMAGE under QEMU (PROFILE=virt), wait for SSH, write inventories/qemu/hosts.yml
	@[ -f $(IMAGE) ] || $(MAKE) image
	$(PIBAKE) emulate start $(IMAGE) $(EMULATION) --name $(NAME)

emulate-stop: venv ## shut the emulated Pi down cleanly
	$(PIBAKE) emulate stop --name $(NAME)

provision: venv ## run site.yml against the emulated Pi (after `make emulate`)
	$(BIN)/ansible-playbook site.yml -i inventories/qemu

demo: deps venv ## the whole job: image, boot, provision, run the model on the Pi, finished image in build/
	$(PIBAKE) demo $(EMULATION)

.PHONY: flash bench-flash
DEVICE ?=
FLASH_ARGS ?=

flash: venv ## write the finished image to a card: make flash DEVICE=/dev/sdX [IMAGE=...] [FLASH_ARGS=--unmount]
	@[ -n "$(DEVICE)" ] || { echo "usage: make flash DEVICE=/dev/sdX [IMAGE=build/pibake-demo.img] (lsblk lists the disks)"; exit 2; }
	$(SUDO) $(PIBAKE) flash $(if $(filter command line,$(origin IMAGE)),$(IMAGE)) $(DEVICE) $(FLASH_ARGS)

bench-flash: venv ## throughput of flash against dd, and of a bmap write against a full one (loop device, root)
	$(SUDO) $(BIN)/python scripts/bench_flash.py $(BENCH_ARGS)

.PHONY: bench
REPEAT ?= 3
BENCH_FLAGS ?=

bench: deps venv ## time image, boots, converge, inference, serving, flashing (REPEAT=3): build/bench/bench.{json,png,md}
	$(PIBAKE) bench --repeat $(REPEAT) --output-dir build/bench $(BENCH_FLAGS)

test-fast: venv ## unit tests only: no emulator, no root
	$(BIN)/pytest -q tests/unit

test-integration: deps kernel-deps venv image
	PIBAKE_NO_SKIP=1 PIBAKE_IMAGE=$(CURDIR)/$(IMAGE) $(BIN)/pytest -q tests

# The raspi2b scenario (the Pi 2 board on QEMU's raspi2b machine) is slower: it runs second.
molecule: deps venv image ## the Molecule scenarios: boot, converge, idempotence, verify, destroy (virt, then raspi2b)
	PIBAKE_IMAGE=$(CURDIR)/$(IMAGE) $(BIN)/molecule test
	PIBAKE_IMAGE=$(CURDIR)/$(IMAGE) $(BIN)/molecule test -s raspi2b

test: test-integration molecule ## everything CI runs: installs what it needs, then pytest and Molecule

lint: venv ## ruff, mypy, ansible-lint, yamllint
	$(BIN)/ruff check src tests scripts models molecule plugins
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint

collection: venv ## build the pibake.raspberry collection tarball into build/
	$(BIN)/ansible-galaxy collection build --force --output-path build .

clean: ## remove build outputs (the cache in ~/.cache/pibake stays)
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
