# make test       every test: the fast suite (with its buildout and Python matrix and the package
#                 checks) beside the OpenZFS guest suite on 2.1 and 2.3
# make test-fast  unit tests, doctests, package checks, the Ansible collection's checks and the
#                 documentation build, no guest
# make test-lab   the guest suite only, its shards side by side (LAB_JOBS at a time); ZFS=2.1
#                 or ZFS=2.3 for one series
# make docs       the documentation (Sphinx) in docs/_build/html
# make demo       the release workflow, typed on a throwaway Zope site in the guest (2.3)
# make bench      snapshot, rollback and cleanup against collective.recipe.backup and by hand
# make lab-smoke  boots the guest and runs the ZFS smoke test only
PYTHON ?= python3
ZFS_SERIES ?= 2.1 2.3
ZFS ?=
LAB = $(PYTHON) tests/lab/lab.py
BUILDOUT_VERSION = 6.0.1
# The fast suite also runs with the two latest zc.buildout 5 releases (Plone 6.2 pins 5.1.3 or
# 5.2.0; BUILDOUT_VERSION is the 6 it runs with) and with the oldest and newest Python the
# package supports, where this machine has them. Their virtualenvs and eggs are kept in
# ~/.cache/collective.recipe.zfssnap-matrix between runs (tests/matrix.sh).
MATRIX = tests/matrix.sh
MATRIX_RUNS ?= buildout-5.1.3 buildout-5.2.0 python-3.10 python-3.13

.PHONY: test test-fast test-matrix check-package check-ansible docs test-lab lab-images demo bench \
	lab-smoke clean

# The fast suite runs on the host beside the guest suite (the guests are shards of the suite
# booted side by side, tests/lab/suite.py); its output follows the guest suite's and stays in
# .test-fast.log. The last lines are the table of where the time went.
test:
	@started=$$(date +%s); \
	( $(MAKE) test-fast > .test-fast.log 2>&1; echo $$? > .test-fast.rc; \
	  echo $$(( $$(date +%s) - started )) > .test-fast.time ) & fast=$$!; \
	$(LAB) suite --times .lab-times.json; lab=$$?; \
	wait $$fast; fast=$$(cat .test-fast.rc); \
	echo "== make test-fast, run beside the guest suite: exit $$fast"; cat .test-fast.log; \
	echo "== where the time went (seconds)"; \
	$(LAB) times .lab-times.json --fast "$$(cat .test-fast.time)"; \
	echo "make test: $$(( $$(date +%s) - started )) s in all"; \
	if [ "$$fast" != 0 ]; then \
	    echo "== the end of the fast suite's output (it failed; all of it is above)"; \
	    grep -v -e "Warning" -e "tracemalloc" .test-fast.log | tail -n 25; fi; \
	echo "== make test: fast suite exit $$fast, guest suite exit $$lab"; \
	test $$lab = 0 && test $$fast = 0

.venv/bin/buildout:
	tests/bootstrap-venv.sh $(PYTHON) .venv zc.buildout==$(BUILDOUT_VERSION)

bin/test: .venv/bin/buildout buildout.cfg setup.py
	.venv/bin/buildout -q
	touch bin/test

test-fast: bin/test
	bin/test
	$(MAKE) test-matrix check-package check-ansible docs

test-matrix:
	for run in $(MATRIX_RUNS); do $(MATRIX) $$run || exit $$?; done

# Made again when the tools' requirements change.
.venv-tools/.installed: tests/tools.txt docs/requirements.txt
	tests/bootstrap-venv.sh $(PYTHON) .venv-tools -r tests/tools.txt
	touch $@

check-package: .venv-tools/.installed
	tests/check-package.sh .venv-tools

check-ansible: .venv-tools/.installed
	tests/check-ansible.sh .venv-tools

docs: .venv-tools/.installed
	.venv-tools/bin/sphinx-build -q -W --keep-going -b html docs docs/_build/html

lab-images:
	for v in $(if $(ZFS),$(ZFS),$(ZFS_SERIES)); do $(LAB) build --zfs $$v || exit $$?; done

test-lab:
	$(LAB) suite $(if $(ZFS),--zfs $(ZFS))

demo:
	$(LAB) demo --zfs $(if $(ZFS),$(ZFS),2.3)

bench: .venv-tools/.installed
	$(LAB) bench --zfs $(if $(ZFS),$(ZFS),2.1) --out docs/bench --plot-python .venv-tools/bin/python

lab-smoke:
	$(LAB) test --zfs $(if $(ZFS),$(ZFS),2.1) -- -t test_smoke

clean:
	rm -rf .venv .venv-tools .matrix .test-fast.log .test-fast.rc .test-fast.time .lab-times.json bin develop-eggs eggs parts .installed.cfg src/*.egg-info \
		docs/_build build dist
