#!/usr/bin/env bash
# One entry point for the two things people do with this repository:
#   ./run.sh audit [pytest args...]   set up, then audit the default model (writes reports/)
#   ./run.sh test  [pytest args...]   set up, then run the engine and plugin tests
# Setup is idempotent: a .venv beside this file, the CPU build of torch unless a torch is already
# installed there (install your own GPU build into .venv first if you have a GPU), then the project.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${REFUSAL_PROBE_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
        "$PY" -m pip install -q --upgrade pip
    fi
    if ! "$PY" -c "import torch" 2>/dev/null; then
        # The CPU build; an unpinned torch would pull a multi-GB CUDA build.
        "$PY" -m pip install -q "torch==2.13.0"
    fi
    local stamp="$VENV/.refusal-probe-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$PY" -m pip install -q -e ".[dev]"
        touch "$stamp"
    fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
    audit)
        setup
        exec "$PY" -m refusal_probe audit "$@"
        ;;
    test)
        setup
        set +e
        "$PY" -m pytest tests "$@"
        rc=$?
        # pytest exits 5 when a selection ran no test; that is not a failure of the code.
        if [ "$rc" -eq 5 ]; then rc=0; fi
        exit "$rc"
        ;;
    *)
        echo "usage: ./run.sh audit|test [pytest args...]" >&2
        exit 2
        ;;
esac
