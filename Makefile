# make test       every test: the fast suite, then the OpenZFS guest suite on 2.1 and 2.3
# make test-fast  unit tests and doctests, no guest (seconds)
# make test-lab   the guest suite only; ZFS=2.1 or ZFS=2.3 for one series
# make demo       the release workflow, typed on a throwaway site in the guest
# make bench      times snapshot, rollback and cleanup against a repozo restore (guest)
# make lab-smoke  boots the guest and runs the ZFS smoke test only
PYTHON ?= python3
ZFS_SERIES ?= 2.1 2.3
ZFS ?=
LAB = $(PYTHON) tests/lab/lab.py
BUILDOUT_VERSION = 6.0.1

.PHONY: test test-fast test-lab lab-images demo bench lab-smoke clean

test: test-fast test-lab

.venv/bin/buildout:
	tests/bootstrap-venv.sh $(PYTHON) .venv zc.buildout==$(BUILDOUT_VERSION)

bin/test: .venv/bin/buildout buildout.cfg setup.py
	.venv/bin/buildout -q
	touch bin/test

test-fast: bin/test
	bin/test

lab-images:
	for v in $(if $(ZFS),$(ZFS),$(ZFS_SERIES)); do $(LAB) build --zfs $$v || exit $$?; done

test-lab:
	for v in $(if $(ZFS),$(ZFS),$(ZFS_SERIES)); do $(LAB) test --zfs $$v || exit $$?; done

demo:
	$(LAB) demo --zfs $(if $(ZFS),$(ZFS),2.1)

bench:
	$(LAB) bench --zfs $(if $(ZFS),$(ZFS),2.1)

lab-smoke:
	$(LAB) test --zfs $(if $(ZFS),$(ZFS),2.1) -- -t test_smoke

clean:
	rm -rf .venv bin develop-eggs eggs parts .installed.cfg src/*.egg-info
