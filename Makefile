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
RELEASE ?= latest-armhf-lite
RASPIOS_IMAGE ?= build/raspios-$(RELEASE).img
PREPARED ?= build/pibake-prepared.img
GROW ?= 0
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Debian packages the harness drives. Override APT_GET to use another front end.
APT_GET ?= apt-get
# arch-test: mmdebstrap's check that a foreign architecture runs here (qemu-user); only a Recommends of mmdebstrap,
# which --no-install-recommends leaves out, and without it mmdebstrap refuses armhf and arm64.
APT_PACKAGES := qemu-system-arm qemu-utils qemu-user-static binfmt-support mmdebstrap arch-test \
	dosfstools mtools fdisk e2fsprogs openssh-client python3-venv ca-certificates ipxe-qemu bmap-tools xz-utils \
	python3-gi gir1.2-nm-1.0

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: locks help deps apt-packages binfmt venv image image-arm64 image-armhf molecule-armhf images test-builds test-raspi64 fetch prepare finalize kernel-deps cross-deps kernel emulate emulate-stop provision demo test test-fast test-integration molecule test-raspi2b lint docs sanity collection clean

help: ## show this list
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: binfmt ## install the Debian packages the harness drives (apt, as root or with sudo)

# Checked every time (a second): a package added here reaches machines that ran `make deps` before.
apt-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) $(APT_GET) update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

BINFMTS := qemu-arm qemu-aarch64

binfmt: apt-packages ## register qemu-arm and qemu-aarch64 with binfmt_misc so armhf and arm64 binaries run here
	@for f in $(BINFMTS); do \
		if ! grep -qs enabled /proc/sys/fs/binfmt_misc/$$f; then \
			[ -e /proc/sys/fs/binfmt_misc/register ] || $(SUDO) mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; \
			$(SUDO) update-binfmts --enable $$f; \
		fi; \
		grep -q enabled /proc/sys/fs/binfmt_misc/$$f || exit 1; \
	done

venv: $(VENV)/.installed ## the Python venv with pibake, its test and dev tools, and TensorFlow (host-only model conversion)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,convert]'
	@touch $@

# The runtime locks: pip's resolver for each (runtime, Python, platform) in scripts/lock_runtimes.py; see the README.
locks: venv ## regenerate roles/python_runtime/files/locks/*.txt: each runtime's closure for its Pi, one wheel and SHA-256 a package
	$(BIN)/python scripts/lock_runtimes.py

image: deps venv ## build the base image from Debian bullseye armhf (cached: seconds the second time)
	$(if $(TIMING),$(TIMED) image --) $(PIBAKE) image build --base debian-bullseye -o $(IMAGE)

IMAGE_ARM64 ?= build/pibake-trixie-arm64.img
BOARD_ARM64 ?= pi4

# Also the first step of make test's background job (test-integration below).
ARM64_BUILD = $(if $(TIMING),$(TIMED) image-arm64 --) $(PIBAKE) image build --base debian-trixie-arm64 --board $(BOARD_ARM64) -o $(IMAGE_ARM64)

image-arm64: deps venv ## build the 64-bit base image from Debian trixie arm64 for BOARD_ARM64 (default pi4; cached)
	$(ARM64_BUILD)

IMAGE_ARMHF ?= build/pibake-bookworm-armhf.img
BOARD_ARMHF ?= pi3b-plus

image-armhf: deps venv ## build the 32-bit base image from Debian bookworm armhf for BOARD_ARMHF (default pi3b-plus; cached)
	$(PIBAKE) image build --base debian-bookworm-armhf --board $(BOARD_ARMHF) -o $(IMAGE_ARMHF)

# Side by side: a root filesystem build is dpkg under qemu-user, one process at a time, so two builds on two cores take
# about as long as the longer one.
images: deps venv ## both base images, bullseye armhf (IMAGE) and trixie arm64 (IMAGE_ARM64), built at the same time
	$(MAKE) --no-print-directory -j2 image image-arm64

# What make test builds before its first test, side by side: the bullseye base image and the no-initrd kernel
# (tests/integration/test_kernel.py's). Measured on a fresh machine (2 cores) with the trixie arm64 root filesystem
# building beside them: the kernel 13.5 min (before its fragment left out debug info, display, sound, USB and the
# rest: 335 s alone since), the bullseye root filesystem 10.8 min.
test-builds: deps kernel-deps venv
	@$(if $(TIMING),$(PYTHON) scripts/test_times.py begin builds)
	$(MAKE) --no-print-directory -j2 image kernel PROFILE=vexpress-a9 TIMING=
	@$(if $(TIMING),$(PYTHON) scripts/test_times.py end builds)

fetch: venv ## download RELEASE (default: the current Raspberry Pi OS Lite armhf; pibake image fetch --list) to RASPIOS_IMAGE, checked against Raspberry Pi's OS list, resumable, cached
	$(PIBAKE) image fetch --release $(RELEASE) -o $(RASPIOS_IMAGE)

prepare: deps venv ## copy IMAGE to PREPARED and prepare it for PROFILE: GROW MiB, SSH, user + key, emulation tweaks
	$(PIBAKE) image prepare $(IMAGE) -o $(PREPARED) --grow $(GROW) $(if $(PROFILE),--profile $(PROFILE))

finalize: deps venv ## undo PREPARED's emulation tweaks, fsck, write its .sha256, .bmap and .manifest.json
	$(PIBAKE) image finalize $(PREPARED)

KERNEL_PACKAGES := linux-source-6.1 gcc-arm-linux-gnueabihf libc6-dev-armhf-cross gcc-aarch64-linux-gnu bc bison flex libssl-dev make cpio xz-utils

kernel-deps: ## Debian's kernel source and the ARM and AArch64 cross compilers, for `make kernel`
	@missing=$$(for p in $(KERNEL_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		$(SUDO) $(APT_GET) update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

# The aarch64 cross compiler and libc (the sysroot /usr/aarch64-linux-gnu) that tests/unit/test_preflight_arm64.py
# builds its ARMv8.2 dotprod library and program with, to reproduce the Pi 5 / Pi 4 "Illegal instruction".
CROSS_PACKAGES := gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu

cross-deps: ## Debian's aarch64 cross compiler and libc, for the 64-bit preflight tests
	@missing=$$(for p in $(CROSS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		$(SUDO) $(APT_GET) update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

kernel: kernel-deps venv ## no-initrd kernel for PROFILE (vexpress-a9, vexpress-a15, virt; virt64: arm64); PROVIDER=debian-source|buildroot
	$(PIBAKE) kernel build --profile $(or $(PROFILE),virt) --provider $(PROVIDER)

emulate: deps venv ## boot IMAGE under QEMU (PROFILE=virt), wait for SSH, write inventories/qemu/hosts.yml
	@[ -f $(IMAGE) ] || $(MAKE) image
	$(PIBAKE) emulate start $(IMAGE) $(EMULATION) --name $(NAME)

emulate-stop: venv ## shut the emulated Pi down cleanly
	$(PIBAKE) emulate stop --name $(NAME)

provision: venv ## run site.yml against the emulated Pi (after `make emulate`)
	$(BIN)/ansible-playbook site.yml -i inventories/qemu

# Empty: the board's base, as `pibake demo --board B` picks it (debian-trixie-arm64 where the board has a 64-bit core,
# debian-bookworm-armhf on the pi2); DEMO_BASE=debian-bookworm-armhf for a 32-bit OS, debian-bullseye for the legacy one.
DEMO_BASE ?=

demo: deps venv ## the whole job for BOARD on DEMO_BASE (default: the board's): image, boot, provision, run the model on the Pi, finished image in build/
	$(PIBAKE) demo $(EMULATION) $(if $(DEMO_BASE),--base $(DEMO_BASE))

.PHONY: flash bench-flash
DEVICE ?=
FLASH_ARGS ?=

# Checked when the Makefile is read, before any prerequisite (and under make -n): a missing DEVICE costs nothing.
ifneq ($(filter flash,$(MAKECMDGOALS)),)
ifeq ($(strip $(DEVICE)),)
$(error usage: make flash DEVICE=/dev/sdX [IMAGE=build/pibake-demo.img] (lsblk lists the disks))
endif
endif

flash: venv ## write the finished image to a card: make flash DEVICE=/dev/sdX [IMAGE=...] [FLASH_ARGS=--unmount]
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

# On a fresh machine the trixie arm64 root filesystem is the longest build (about 20 min: dpkg under qemu-user, one
# process at a time), so it starts first, in the background: the 32-bit builds take the other core, the tests that
# need no arm64 base run beside its end, and the ones that do (marker arm64_base) after it. Cached, it takes seconds.
# In `make test` (ARM64_BESIDE=1) the whole 64-bit half is that background job: the arm64 build, then Molecule's
# default scenario, then pytest's arm64 part, beside the 32-bit builds and pytest's first part. Each half drives one
# guest at a time and left about half the CPU idle when they ran one after the other (vmstat over a fresh run:
# 45% idle from the end of the builds on).
PYTEST_RUN = env PIBAKE_NO_SKIP=1 PIBAKE_IMAGE=$(CURDIR)/$(IMAGE) $(BIN)/pytest -q
PYTEST_ARM64 = $(if $(TIMING),$(TIMED) pytest-arm64 --) $(PYTEST_RUN) -m "arm64_base and not raspi2b and not raspi3b" tests
MOLECULE_RUN = $(if $(TIMING),$(TIMED) molecule-default --) env PIBAKE_IMAGE=$(CURDIR)/$(IMAGE_ARM64) $(BIN)/molecule test
ARM64_BESIDE ?=
ARM64_STEP = $(if $(ARM64_BESIDE),arm64,image-arm64)
# Molecule and pytest both run once the image is built, whatever the other's result, so a failure reports both.
ARM64_JOB = $(if $(ARM64_BESIDE),bash -c '$(ARM64_BUILD) && { $(MOLECULE_RUN); m=$$?; $(PYTEST_ARM64); p=$$?; [ $$m = 0 ] && [ $$p = 0 ]; }',$(ARM64_BUILD))

test-integration: deps kernel-deps cross-deps venv
	$(PYTHON) scripts/test_times.py start $(ARM64_STEP) build/$(ARM64_STEP).log -- $(ARM64_JOB)
	$(MAKE) --no-print-directory test-builds TIMING=$(TIMING)
	$(if $(TIMING),$(TIMED) pytest --) $(PYTEST_RUN) -m "not raspi2b and not raspi3b and not arm64_base" tests
	$(PYTHON) scripts/test_times.py wait $(ARM64_STEP)
	$(if $(ARM64_BESIDE),,$(PYTEST_ARM64))

molecule: deps venv image-arm64 ## the Molecule scenario on the 64-bit base (a Pi 4's Cortex-A72 on virt): boot, converge, idempotence, verify, reboot, destroy
	$(MOLECULE_RUN)

# The 32-bit current base in Molecule: bookworm armhf on virt (Cortex-A15), tflite-runtime 2.14.0 from its lock. Not in
# `make test`: its root filesystem (another 10-25 min on a fresh machine) and scenario would take CI past its budget.
molecule-armhf: deps venv image-armhf ## the Molecule scenario on the 32-bit bookworm base (virt, Cortex-A15): boot, converge, idempotence, verify
	env PIBAKE_IMAGE=$(CURDIR)/$(IMAGE_ARMHF) $(BIN)/molecule test -s armhf

# QEMU's raspi2b board model (4 Cortex-A7s on TCG, SD card, USB networking): its Molecule scenario takes
# about 19 min, and its guest kernel stalls (soft lockups, an sdhost timeout, an oops) when its 4 vCPUs
# share 2 host cores. Neither it nor the raspi2b boot test runs in `make test`: `make test-raspi2b` does.
test-raspi2b: deps venv image ## QEMU's raspi2b board model: its boot test and Molecule scenario (slow: about 25 min)
	env PIBAKE_NO_SKIP=1 PIBAKE_IMAGE=$(CURDIR)/$(IMAGE) $(BIN)/pytest -q -m raspi2b tests
	env PIBAKE_IMAGE=$(CURDIR)/$(IMAGE) $(BIN)/molecule test -s raspi2b

# QEMU's Pi 3 and Pi 4 board models on the 64-bit image: the image's own kernel and device tree, the SD card, USB
# networking; raspi4b needs QEMU 9.0 or later (bookworm-backports), and on an older QEMU its test checks the refusal.
test-raspi64: deps venv image-arm64 ## QEMU's raspi3b and raspi4b board models booting the 64-bit image, and raspi3b's Molecule scenario (slow)
	env PIBAKE_NO_SKIP=1 $(BIN)/pytest -q -m "raspi3b or raspi4b" tests
	env PIBAKE_IMAGE=$(CURDIR)/$(IMAGE_ARM64) $(BIN)/molecule test -s raspi3b

# `make test` times its steps (scripts/test_times.py: image, pytest per file, each Molecule scenario and
# step) into build/test-times.tsv and prints the table at the end, or when a step fails.
TIMED := $(PYTHON) scripts/test_times.py run
test: TIMING := 1
test: ARM64_BESIDE := 1
test: test-times-reset test-integration ## everything CI runs: installs what it needs, then pytest and Molecule (the 64-bit half beside the 32-bit one); prints where the time went
	@$(PYTHON) scripts/test_times.py report

.PHONY: test-times-reset
test-times-reset:
	@$(PYTHON) scripts/test_times.py reset

# Python that runs on the Pi (target/pibake_target, which roles/python_runtime/files links to): ruff checks it as
# Python 3.9 (pyproject.toml), mypy under 3.11, tests/unit/test_serve.py runs it under the guest's 3.9.
ROLE_PYTHON := target
ROLES := $(patsubst roles/%/meta/argument_specs.yml,%,$(wildcard roles/*/meta/argument_specs.yml))

lint: venv ## ruff, mypy, yamllint, ansible-lint, role READMEs up to date, ansible-test sanity on plugins/
	$(BIN)/ruff check src tests scripts models molecule plugins ansible_plugins $(ROLE_PYTHON)
	$(BIN)/ruff format --check src tests scripts $(ROLE_PYTHON)
	$(BIN)/mypy
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && for role in $(ROLES); do \
		cp roles/$$role/README.md $$tmp/$$role.md && \
		$(BIN)/aar-doc --config-file .aar_doc.yml --output-file $$tmp/$$role.md roles/$$role markdown && \
		diff -u roles/$$role/README.md $$tmp/$$role.md || { echo "roles/$$role/README.md is stale: run make docs" >&2; exit 1; }; \
	done
	$(MAKE) --no-print-directory sanity

docs: venv ## regenerate the variable table of each role README from its meta/argument_specs.yml (aar-doc, .aar_doc.yml)
	for role in $(ROLES); do $(BIN)/aar-doc --config-file .aar_doc.yml roles/$$role markdown || exit 1; done

# ansible-test sanity, every test it has, locally on the venv's Python (--local --python X.Y: no container; the
# module runs on the controller): action-plugin-docs, ansible-doc, compile, ignores, import, line-endings,
# no-assert, no-get-exception, no-illegal-filenames, no-smart-quotes, pep8, pylint, replace-urlopen,
# runtime-metadata, shebang, symlinks, use-argspec-type-path, use-compat-six, validate-modules and yamllint check
# plugins/, meta/runtime.yml and galaxy.yml; changelog, empty-init, pslint and shellcheck find nothing to check and
# report skipped. Each test installs its pinned requirements from PyPI into its own venv under ~/.ansible/test/venv
# the first time (three minutes), so later runs take seconds.
# ansible-test must run from the collection's root, at .../ansible_collections/pibake/raspberry/, and finds it with
# os.getcwd(), which resolves the .collections/ symlink to this checkout's real path: so those files are copied to
# SANITY_ROOT, outside git's view (ANSIBLE_TEST_CONTENT_ROOT), and checked there.
SANITY_ROOT := build/sanity/ansible_collections/pibake/raspberry
# The collection is MIT (galaxy.yml): validate-modules's GPLv3 header rule is for ansible-core's own modules.
MIT_MODULES := $(wildcard plugins/modules/*.py)

# ansible-test puts pip into each of those venvs with a get-pip script that it downloads from Ansible's CI file
# server, which these machines cannot reach (package registries only). Its error message says to save the script
# in its cache: this stand-in installs pip from the interpreter's own (ensurepip), then the version asked for.
define ANSIBLE_TEST_GET_PIP
"""Stand-in for ansible-test's get-pip script, written by `make sanity` (see pibake's Makefile)."""
import subprocess
import sys

# In a child: ensurepip turns pip's configuration (index, certificates) off in its own process.
subprocess.check_call([sys.executable, "-m", "ensurepip"])
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall", *args]))
endef
export ANSIBLE_TEST_GET_PIP

sanity: venv ## ansible-test sanity on plugins/ (every test, locally on the venv's Python; see the Makefile)
	rm -rf build/sanity && mkdir -p $(SANITY_ROOT)/tests/sanity
	cp -r galaxy.yml meta plugins $(SANITY_ROOT)/
	find $(SANITY_ROOT) -name __pycache__ -prune -exec rm -rf {} +
	@python=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') && \
	ansible=$$($(BIN)/python -c 'from ansible.release import __version__ as v; print(".".join(v.split(".")[:2]))') && \
	pip=$$($(BIN)/python -c 'from ansible_test._internal.python_requirements import get_venv_packages as packages; \
		print(packages(type("Python", (), {"version": "'$$python'"})())["pip"])') && \
	get_pip=$(HOME)/.ansible/test/cache/get_pip_$${pip//./_}.py && \
	{ [ -f $$get_pip ] || { mkdir -p $$(dirname $$get_pip) && printf '%s\n' "$$ANSIBLE_TEST_GET_PIP" > $$get_pip; }; } && \
	for module in $(MIT_MODULES); do echo "$$module validate-modules:missing-gplv3-license"; done \
		> $(SANITY_ROOT)/tests/sanity/ignore-$$ansible.txt && \
	cd $(SANITY_ROOT) && echo "ansible-test sanity --local --python $$python" && ANSIBLE_TEST_CONTENT_ROOT=$$PWD \
	$(CURDIR)/$(BIN)/ansible-test sanity --local --python $$python --color no

collection: venv ## build the pibake.raspberry collection tarball into build/
	$(BIN)/ansible-galaxy collection build --force --output-path build .

clean: ## remove build outputs (the cache in ~/.cache/pibake stays)
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
