#!/bin/bash
# check-ansible.sh VENV: the Ansible collection (ansible/) with the tools' ansible-core: built,
# installed, documented, its modules and playbooks run against stand-in scripts
# (ansible/tests/test_collection.py); then ansible-test's sanity tests, all of them, on the
# oldest ansible-core the collection claims (meta/runtime.yml) and on the newest, each with a
# Python it supports, in virtualenvs kept in ~/.cache/collective.recipe.zfssnap-ansible.
set -eu
venv=$(cd "$1" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
collection=$top/ansible/ansible_collections/collective/zfssnap
cache=${XDG_CACHE_HOME:-$HOME/.cache}/collective.recipe.zfssnap-ansible
# ansible-core release:Python. The first is the floor of meta/runtime.yml (checked below).
SANITY_RUNS=${ZFSSNAP_SANITY_RUNS:-"2.15.13:3.11 2.21.5:3.13"}

cd "$top/ansible/tests"
"$venv/bin/python" -m unittest -v test_collection 2>&1

floor=$(sed -n 's/^requires_ansible: *">=\([0-9.]*\)".*/\1/p' "$collection/meta/runtime.yml")
first=${SANITY_RUNS%% *}
case "${first%%:*}" in
    "${floor%.0}".*) ;;
    *) echo "check-ansible.sh: meta/runtime.yml claims ansible-core >= $floor, but the oldest" \
            "sanity run is ${first%%:*}: make them agree" >&2; exit 1 ;;
esac

find_python() {  # python3.X on PATH, or one of pyenv's installed versions
    for candidate in "python$1" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/"python$1"; do
        if "$candidate" -c 'import venv, ensurepip' > /dev/null 2>&1; then
            command -v "$candidate"
            return
        fi
    done
    return 1
}

for run in $SANITY_RUNS; do
    core=${run%%:*} version=${run#*:}
    if ! python=$(find_python "$version"); then
        echo "check-ansible.sh: ansible-core $core needs Python $version, which this machine" \
            "does not have: install it (pyenv install $version), or set ZFSSNAP_SANITY_RUNS" >&2
        exit 1
    fi
    env=$cache/ansible-core-$core-py$version
    if [ "$(cat "$env/.complete" 2> /dev/null)" != "$python ansible-core==$core" ]; then
        rm -rf "$env"
        mkdir -p "$cache"
        "$top/tests/bootstrap-venv.sh" "$python" "$env" "ansible-core==$core"
        echo "$python ansible-core==$core" > "$env/.complete"
    fi
    # ansible-test puts pip into each of its virtualenvs with get-pip.py, which it downloads
    # from a host only Ansible's CI reaches; it takes a copy from its cache when there is one.
    pip=$("$env/bin/python" -c 'import re, ansible_test, os
text = open(os.path.join(os.path.dirname(ansible_test.__file__), "_internal",
                         "python_requirements.py")).read()
print(re.search(r"pip=.([0-9.]+).", text).group(1))')
    cached=$HOME/.ansible/test/cache/get_pip_${pip//./_}.py
    if [ ! -e "$cached" ]; then
        mkdir -p "$(dirname "$cached")"
        cp "$top/tests/ansible/get-pip.py" "$cached"
    fi
    echo "== ansible-test sanity with ansible-core $core on Python $version"
    cd "$collection"
    rm -rf tests/output
    "$env/bin/ansible-test" sanity --venv --python "$version" > "$cache/sanity-$core.log" 2>&1 \
        || { grep -v "^Looking in\|^WARNING: Location\|^Collecting\|^  Downloading\|^Processing\|━" \
                 "$cache/sanity-$core.log"; exit 1; }
    # Every test that ran passed (ansible-test fails on any); the ones it skipped say why.
    grep "^Running sanity test\|Skipping" "$cache/sanity-$core.log" | sed 's/^Running sanity test /  passed: /'
done
