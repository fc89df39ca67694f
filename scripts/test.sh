#!/usr/bin/env bash
# Every check the project has, in the order that fails fastest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin
lint_only=0
if [[ ${1:-} == --lint-only ]]; then lint_only=1; shift; fi

step() { printf '\n== %s\n' "$*"; }

step "ruff check"
$BIN/ruff check operator tests bench
step "ruff format --check"
$BIN/ruff format --check operator tests bench
step "mypy (strict on the package, the tests and the benchmarks)"
$BIN/mypy
$BIN/mypy tests bench
step "import-linter (layering)"
$BIN/lint-imports
if [[ -f Dockerfile ]]; then
	step "hadolint Dockerfile"
	$BIN/hadolint Dockerfile
fi
[[ $lint_only == 1 ]] && exit 0

step "pytest (unit and end-to-end on the real local control plane)"
set +e
$BIN/pytest "$@"
status=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken test run, never a pass.
if [[ $status == 5 ]]; then
	echo "pytest collected no tests: failing" >&2
	exit 1
fi
exit $status
