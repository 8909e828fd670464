#!/bin/bash
# check-ansible.sh VENV: the Ansible collection (ansible/) with the tools' ansible-core: built,
# installed, documented, its modules and playbooks run against stand-in scripts
# (ansible/tests/test_collection.py), and ansible-test's sanity tests that need no network.
set -eu
venv=$(cd "$1" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top/ansible/tests"
"$venv/bin/python" -m unittest -v test_collection 2>&1
# The sanity tests that need no network (the others make virtualenvs and download their tools).
cd "$top/ansible/ansible_collections/collective/zfssnap"
tests=""
for t in action-plugin-docs compile empty-init ignores line-endings no-assert no-get-exception \
        no-illegal-filenames no-smart-quotes replace-urlopen shebang symlinks \
        use-argspec-type-path use-compat-six; do
    tests="$tests --test $t"
done
# shellcheck disable=SC2086
"$venv/bin/ansible-test" sanity --python "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" $tests
