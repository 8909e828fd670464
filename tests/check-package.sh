#!/bin/bash
# check-package.sh VENV: the package as users get it from the index. Builds the sdist and the
# wheel (no network: the build tools come from VENV), then check-manifest, twine check --strict
# and pyroma, which must rate it 10/10.
set -eu
venv=$1
top=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "$venv" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# A copy of the files git knows (tracked, or new and not ignored): what a clean checkout has,
# without the development buildout's egg-info and eggs.
cd "$top"
mkdir "$out/tree"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$out/tree"
cd "$out/tree"
git init -q && git add -A
"$venv/bin/python" -m build --no-isolation --sdist --wheel --outdir "$out/dist" . > "$out/build.log" 2>&1 \
    || { cat "$out/build.log"; exit 1; }
"$venv/bin/check-manifest" --no-build-isolation .
"$venv/bin/twine" check --strict "$out"/dist/*
rating=$("$venv/bin/pyroma" --quiet "$out"/dist/*.tar.gz 2>/dev/null | tail -1)
echo "pyroma: $rating/10"
if [ "$rating" != 10 ]; then
    "$venv/bin/pyroma" "$out"/dist/*.tar.gz
    exit 1
fi
