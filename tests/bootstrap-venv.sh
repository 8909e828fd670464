#!/bin/bash
# bootstrap-venv.sh PYTHON DIR REQUIREMENT...: a virtualenv with the given packages. On a fresh
# Debian-like machine `python3 -m venv` needs the python3-venv package: installed when root.
set -eu
python=$1 dir=$2
shift 2
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        # The lab may be installing its packages at the same moment (make test runs both).
        exec 9> /var/lock/collective.recipe.zfssnap-apt.lock
        flock 9
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q > /dev/null
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
            --no-install-recommends python3-venv
        exec 9>&-
    else
        echo "bootstrap-venv.sh: $python cannot make a virtualenv: install python3-venv" >&2
        exit 1
    fi
fi
"$python" -m venv "$dir"
"$dir/bin/pip" install -q --disable-pip-version-check "$@"
