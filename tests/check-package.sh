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
# Without PYTHONDONTWRITEBYTECODE (set by some CI images): with it setuptools says it skips
# byte-compiling, which is no problem of the package.
env -u PYTHONDONTWRITEBYTECODE "$venv/bin/python" -m build --no-isolation --sdist --wheel --outdir "$out/dist" . > "$out/build.log" 2>&1 \
    || { cat "$out/build.log"; exit 1; }
# setuptools' warnings (deprecations, data in no package, a licence field) are a build to fix.
if grep -i "warning" "$out/build.log"; then
    echo "check-package: the build printed warnings (above)"; exit 1
fi
"$venv/bin/check-manifest" --no-build-isolation .
"$venv/bin/twine" check --strict "$out"/dist/*
rating=$("$venv/bin/pyroma" --quiet "$out"/dist/*.tar.gz 2>/dev/null | tail -1)
echo "pyroma: $rating/10"
if [ "$rating" != 10 ]; then
    "$venv/bin/pyroma" "$out"/dist/*.tar.gz
    exit 1
fi
# PEP 639 licence metadata, no placeholder address on the package's index page, and the lab's
# drivers and test site left out of the wheel users install (the lab adds them to its own).
"$venv/bin/python" - "$out"/dist/*.whl <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(whl.read(n).decode() for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    names = whl.namelist()
problems = []
if "License-Expression: GPL-2.0-only" not in meta.splitlines():
    problems.append("no PEP 639 License-Expression")
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    problems.append("the LICENSE file is not in the wheel's licenses")
lab = [n for n in names if n.endswith(("tests/bench.py", "tests/demo.py")) or "/tests/site/" in n]
if lab:
    problems.append("the lab's drivers or test site are in the wheel: %s" % ", ".join(lab))
if "example.org" in meta or "example.com" in meta:
    problems.append("a placeholder address in the metadata")
if problems:
    sys.exit("check-package: " + "; ".join(problems))
print("wheel: License-Expression and licence file present, no placeholder address, no lab")
PY
# Read the Docs builds docs/ with docs/requirements.txt, as make docs does.
grep -q "configuration: docs/conf.py" .readthedocs.yaml && test -f docs/requirements.txt \
    || { echo "check-package: .readthedocs.yaml does not build docs/conf.py"; exit 1; }
