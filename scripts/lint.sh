#!/usr/bin/env bash
# Lint and type-check: ruff over the code, mypy over grammars/ and kernels/ (the typed core), server/ and vllm_plugin/
# (strictcall.vllm; where vLLM is not installed its imports are unknown to mypy, which checks our side of them).
# mypy must see the folders as the strictcall.* packages they are installed as, so it checks a tree of
# symlinks (`strictcall/grammars -> grammars/`, ...) in a temporary folder.
# Usage: scripts/lint.sh            (needs the `test` extra: ruff and mypy)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check server grammars kernels vllm_plugin tests benchmarks .ci/check_serve.py
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir "$root/strictcall"
for folder in grammars kernels server; do ln -s "$PWD/$folder" "$root/strictcall/$folder"; done
ln -s "$PWD/vllm_plugin" "$root/strictcall/vllm"
(cd "$root" && MYPYPATH="$root" "$OLDPWD/$VENV/bin/mypy" --config-file "$OLDPWD/pyproject.toml" --namespace-packages --explicit-package-bases \
    -p strictcall.grammars -p strictcall.kernels -p strictcall.server -p strictcall.vllm)
