#!/bin/bash
# matrix.sh RUN: the fast suite in a buildout of its own under .matrix/RUN, with another
# zc.buildout or another Python than the development buildout's.
#   buildout-5.2.0   zc.buildout 5.2.0 (with the zc.recipe.* releases made for it)
#   python-3.10      the development buildout's zc.buildout on Python 3.10 (skipped, and said
#                    so, when this machine has no such Python)
set -eu
run=$1
top=$(cd "$(dirname "$0")/.." && pwd)
dir=$top/.matrix/$run
# The virtualenvs and the eggs outside the checkout (a clean clone finds them again); what
# points into the checkout (develop eggs, scripts, parts) stays under .matrix.
cache=${ZFSSNAP_MATRIX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/collective.recipe.zfssnap-matrix}
python=python3
buildout=6.0.1
pins=()
case "$run" in
    buildout-5.*)
        buildout=${run#buildout-}
        pins=(versions:zc.recipe.egg=4.0.0 versions:zc.recipe.testrunner=4.2.post1) ;;
    buildout-6.*)
        buildout=${run#buildout-} ;;
    python-*)
        version=${run#python-}
        python=
        # On PATH, or one of pyenv's installed versions (its shims hide the others).
        for candidate in "python$version" \
                "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version"; do
            if "$candidate" -c 'import venv, ensurepip' > /dev/null 2>&1; then
                python=$candidate
                break
            fi
        done
        if [ -z "$python" ]; then
            echo "matrix: $run skipped: this machine has no python$version"
            exit 0
        fi
        # The development pins' newest releases may have dropped this Python: let buildout
        # pick what supports it (zc.buildout and its recipes stay pinned).
        mapfile -t pins < <(python3 -c 'import configparser, sys
c = configparser.RawConfigParser(); c.read(sys.argv[1])
print("\n".join("versions:%s=" % n for n in c["versions"] if not n.startswith("zc.")))' \
            "$top/buildout.cfg") ;;
    *) echo "matrix.sh: unknown run '$run'" >&2; exit 2 ;;
esac
echo "matrix: $run ($("$python" --version), zc.buildout $buildout)"
venv=$cache/$run/venv
stamp="$(command -v "$python") $("$python" --version 2>&1) zc.buildout==$buildout"
if [ "$(cat "$venv/.complete" 2> /dev/null)" != "$stamp" ] || ! "$venv/bin/python" -c '' 2> /dev/null; then
    # The stamp is written last: an interrupted bootstrap, or one of another Python, is made
    # again, not trusted.
    rm -rf "$venv"
    mkdir -p "$cache/$run"
    "$top/tests/bootstrap-venv.sh" "$python" "$venv" "zc.buildout==$buildout"
    echo "$stamp" > "$venv/.complete"
fi
mkdir -p "$dir"
cd "$top"
"$venv/bin/buildout" -q -c buildout.cfg \
    "buildout:bin-directory=$dir/bin" "buildout:parts-directory=$dir/parts" \
    "buildout:develop-eggs-directory=$dir/develop-eggs" \
    "buildout:eggs-directory=$cache/$run/eggs" \
    "buildout:installed=$dir/.installed.cfg" "versions:zc.buildout=$buildout" "${pins[@]}" \
    2> >(grep -v -e 'UserWarning: Module' -e 'ws.add(_d' >&2)
exec "$dir/bin/test"
