# criusec: upstream CRIU 4.2.1 + our files + patches/, built under build/.
# 'make help' lists the targets.

CRIU_VERSION	:= 4.2.1
BUILD		:= $(CURDIR)/build
SRC		:= $(BUILD)/src
TARBALL		:= $(BUILD)/criu_$(CRIU_VERSION).orig.tar.xz
ENGINE_BUILD	:= $(SRC)/criu/criusec/_build
JOBS		?= $(shell nproc)

# Debian's python3 (with python3-protobuf and -cryptography) must win over
# any other python3 on PATH: CRIT, ZDTM and the tests run on it.
export PATH	:= /usr/sbin:/usr/bin:/sbin:/bin:$(PATH)
export PYTHON	:= /usr/bin/python3

CRIU		:= $(SRC)/criu/criu

.PHONY: all help deps fetch tree criu engine install demo test test-unit \
	test-integration test-zdtm test-vm zdtm-full zdtm-full-pre lint patch-tree patches-export reset-tree \
	clean distclean fuzz bench deb test-engines

all: criu

help:
	@echo "make [all]          fetch upstream, apply patches, build criu, compel, crit, libcriu"
	@echo "make deps           install the Debian packages for the build and the tests"
	@echo "make demo           dump and restore a demo process"
	@echo "make test           lint, unit, integration and ZDTM smoke tests"
	@echo "make lint           CRIU's clang-format and make lint on our C, the series' hunks, our Python and shell"
	@echo "make test-vm        pre-dump chains and ZDTM --pre/--snaps in a VM (Debian 12's 6.12), soft-dirty and userfaultfd"
	@echo "make zdtm-full      CRIU's whole ZDTM suite (long), with pass/fail/skip counts"
	@echo "make zdtm-full-pre  the whole suite with --pre 2, its report kept (make test-vm VM_LAYERS=zdtm-full-pre: the same in the VM)"
	@echo "make fuzz           bounded libFuzzer runs of the decoders"
	@echo "make bench          plain, --encrypt, --compress: sizes, dump/restore times, crypto floor, pre-dump chains (SIZES=MiB, REPEAT; WORKLOADS=snapshot: --cow-dump)"
	@echo "make patch-tree     build/src as a git work tree (one commit per patch)"
	@echo "make patches-export write build/src's commits back to patches/"
	@echo "make install        install like Debian's criu packages (DESTDIR, PREFIX)"
	@echo "make deb            Debian packages in build/deb/ that install over Debian's criu"
	@echo "make test-engines   Podman, Docker, containerd checkpoint/restore through the package"

deps:
	@scripts/criusec/deps.sh

$(TARBALL):
	@mkdir -p $(BUILD)
	@scripts/criusec/fetch-upstream.sh $@

fetch: $(TARBALL)

# Always run: it is cheap, re-applies patches only when they changed and
# overlays only files newer than their copies.
tree: $(TARBALL)
	@scripts/criusec/prepare-tree.sh $(TARBALL) $(SRC) $(CURDIR)

patch-tree: tree
	@echo "build/src is the work tree: commit on top of tag 'upstream', then 'make patches-export'"

patches-export:
	@scripts/criusec/export-patches.sh $(SRC) $(CURDIR)

reset-tree:
	rm -rf $(SRC)
	@$(MAKE) --no-print-directory tree

# As root, missing build packages are installed first (NO_DEPS=1 skips that).
DEPS_STEP	:= $(if $(NO_DEPS),,$(if $(filter 0,$(shell id -u)),deps))

# The plugins too (amdgpu needs libdrm-dev; upstream's Makefile skips it without): their
# image I/O goes through criusec (criu_image_open()).  Not installed or packaged.
criu: $(DEPS_STEP) tree
	$(MAKE) -C $(SRC) -j$(JOBS) criu lib crit amdgpu_plugin cuda_plugin
	@$(CRIU) --version

engine: tree
	cmake -S $(SRC)/criu/criusec -B $(ENGINE_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(ENGINE_BUILD) -j$(JOBS)

PREFIX		?= /usr/local
# With PREFIX=/usr, crit and pycriu go where Debian's python3-pycriu puts them.
install: criu
	$(if $(filter /usr,$(PREFIX)),DEB_PYTHON_INSTALL_LAYOUT=deb_system) \
	$(MAKE) -C $(SRC) PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) SKIP_PIP_INSTALL=0 \
		PIPFLAGS="--ignore-installed --no-build-isolation --no-deps --no-index --progress-bar off --break-system-packages" \
		install-criu install-lib install-crit install-compel install-man
	install -D -m 755 pki/criusec-keygen $(DESTDIR)$(PREFIX)/sbin/criusec-keygen
	install -D -m 755 pki/criusec-archive $(DESTDIR)$(PREFIX)/sbin/criusec-archive

# Debian packages (packaging/debian) built with dpkg-buildpackage in
# build/pkg; the .deb files land in build/deb.
deb: $(TARBALL)
	@scripts/criusec/deb.sh $(TARBALL) $(BUILD) $(CURDIR) $(JOBS)

# Podman, Docker and containerd through the package (installed for the run,
# then Debian's criu as before); see scripts/criusec/test-engines.sh.
test-engines: deb
	@ENGINES_TESTS="$(ENGINES_TESTS)" scripts/criusec/test-engines.sh $(CURDIR)

demo: criu
	@scripts/criusec/demo.sh $(CRIU) $(BUILD)/demo-keys

test: criu engine
	@scripts/criusec/run-tests.sh $(SRC) $(ENGINE_BUILD)

# CRIU's own style checks (its .clang-format, its 'make lint') on what we
# write: see scripts/criusec/lint.sh.  Part of 'make test'.
lint: tree
	@scripts/criusec/lint.sh $(SRC) $(CURDIR)

test-unit: engine
	ctest --test-dir $(ENGINE_BUILD) --output-on-failure

test-integration: criu
	cd $(CURDIR)/test/criusec && CRIU=$(CRIU) $(PYTHON) -m pytest -v

test-zdtm: criu
	@scripts/criusec/zdtm.sh $(SRC) smoke

# What needs memory tracking, in a VM under Debian 12's Linux 6.12 over
# this machine's root (scripts/criusec/vm.sh).  The ZDTM tests are built
# here: the guest may be slow (TCG).  VM_TIMEOUT kills a hung guest;
# VM_LAYERS=NAME... runs only those layers (see vm-tests.sh); the guest's
# logs go to VM_RESULTS_DIR.
VM_TIMEOUT	?= 3600
VM_RESULTS_DIR	?= $(BUILD)/vm/results
test-vm: criu
	@$(MAKE) -s -C $(SRC)/test/zdtm -j$(JOBS) >$(SRC)/test/zdtm-build.log 2>&1 || { tail -30 $(SRC)/test/zdtm-build.log; exit 1; }
	@scripts/criusec/vm.sh -t $(VM_TIMEOUT) -r $(VM_RESULTS_DIR) -e VM_LAYERS -e ZDTM_FULL_SET -- scripts/criusec/vm-tests.sh $(SRC)

zdtm-full: criu
	@scripts/criusec/zdtm.sh $(SRC) full

# One-off, not in CI: the whole suite with --pre 2 on this machine's
# tracking (userfaultfd here), its report kept for zdtm-compare.sh against
# the VM's soft-dirty run (make test-vm VM_LAYERS=zdtm-full-pre).
zdtm-full-pre: criu
	@ZDTM_REPORT_DIR=$(BUILD)/zdtm-full-pre.report scripts/criusec/zdtm.sh $(SRC) full --pre 2

fuzz: tree
	@scripts/criusec/fuzz.sh $(SRC)/criu/criusec $(BUILD)/fuzz

# make bench [SIZES="256 1024"] [REPEAT=5] [WORKLOADS="random records churn"] [BASE_CRIU=path] [THREADS=1]: MiB per run
# WORKLOADS=churn alone: the pre-dump chain against a full dump, and what memory tracking costs the
# application, flat out and at the CHURN rate with a compute loop (CHAIN_MODES="plain zstd",
# CHAIN_GAP=1 s between passes, CHURN=50 per mille a second, COST_WINDOW=1000 ms, COST_WINDOWS=3,
# MEM_TRACKER=uffd|soft-dirty to force criu's --mem-tracker)
# WORKLOADS=snapshot (not in the default list, which keeps plain `make bench` as long as it was): dump
# --leave-running with and without --cow-dump, at rest, writing SNAP_RATE=50 per mille a second, flat out
# (SNAP_CHAIN=1: each the second pass of a chain, --track-mem over a pre-dump)
SIZES		?= 256
export WORKLOADS MODES BASE_CRIU BASE_MODES THREADS SCALE_MODES BENCH_JSON BENCH_DIR
export CHAIN_MODES CHAIN_GAP CHURN COST_WINDOW COST_WINDOWS MEM_TRACKER SNAP_RATE SNAP_CHAIN
bench: criu
	cmake --build $(ENGINE_BUILD) --target criusec-bench-floor >/dev/null
	@REPEAT=$(or $(REPEAT),5) FLOOR=$(ENGINE_BUILD)/criusec-bench-floor $(PYTHON) scripts/criusec/bench.py \
		$(CRIU) test/criusec/workloads/workload.c $(SIZES)

clean:
	-[ -d $(SRC) ] && $(MAKE) -C $(SRC) clean
	rm -rf $(ENGINE_BUILD) $(BUILD)/fuzz

distclean:
	rm -rf $(BUILD)
