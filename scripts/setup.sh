#!/usr/bin/env bash
# One-time (idempotent) setup: creates .venv at the repo root and installs P2Med.
#   scripts/setup.sh          # a second run with unchanged inputs returns at once
#   P2MED_VENV=/tmp/v scripts/setup.sh   # the same into another venv
# Every dependency's version comes from requirements.lock (`make lock` writes it from
# pyproject.toml). torch is not in the lock: it is installed first and pinned while the
# rest resolves, since an unpinned torch pulls a multi-GB CUDA build, while torch==2.13.0
# is a cached CPU wheel on our machines (the lock holds that wheel's own dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${P2MED_TORCH_VERSION:-2.13.0}"
VENV="${P2MED_VENV:-.venv}"
STAMP="$VENV/.p2med-setup"
LOCK=requirements.lock

inputs_hash() {
    cat pyproject.toml "$LOCK" scripts/setup.sh | sha256sum | cut -d' ' -f1
}

# The demo's browser test drives Debian's Chromium (Playwright's own browser download is
# not reachable from our machines). Checked on every run, apart from the venv's stamp.
CHROMIUM=/usr/bin/chromium
if [[ ! -x "$CHROMIUM" ]]; then
    if command -v apt-get >/dev/null; then
        SUDO=()
        [[ "$(id -u)" == 0 ]] || SUDO=(sudo)
        echo "setup: installing Debian's chromium for the browser test (about a minute)"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    else
        echo "setup: warning: no $CHROMIUM and no apt-get to install it;" \
            "tests/serve_apps/test_demo_browser.py will fail until Chromium is there" >&2
    fi
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(inputs_hash) torch=$TORCH_VERSION" ]]; then
    echo "setup: $VENV is up to date"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

# pip installs torch (uv does not look where our machines keep its CPU wheel) and uv, at
# the lock's version; uv installs the rest: the same versions as pip, in a fraction of the time.
# Unlike pip, uv leaves modules uncompiled; where PYTHONDONTWRITEBYTECODE is set (our CI
# machines) every process, each Ray worker included, would then compile its imports anew:
# --compile-bytecode writes the .pyc files once, here.
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off)
UV_PIN="$(grep -E '^uv==' "$LOCK")"
echo "setup: installing torch==$TORCH_VERSION and $UV_PIN"
"${PIP[@]}" -c "$LOCK" "torch==$TORCH_VERSION" "$UV_PIN"

CONSTRAINTS="$VENV/p2med-constraints.txt"
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
echo "setup: installing p2med and its dependencies from $LOCK"
if ! "$VENV/bin/uv" pip install --compile-bytecode --python "$VENV/bin/python" -c "$CONSTRAINTS" -c "$LOCK" -e ".[dev]"; then
    echo "setup: the install failed; if pyproject.toml's dependencies changed, run 'make lock'" \
        "to bring $LOCK in line with them" >&2
    exit 1
fi
"$VENV/bin/python" -m pip check

# DeepSpeed compiles its CPU shared-memory op the first time a training job starts (into
# ~/.cache/torch_extensions; its cost: docs/performance.md); build it here so the first job
# does not wait.
# Accelerators without the op (CUDA) return no builder.
echo "setup: building DeepSpeed's CPU shared-memory op (once per machine)"
"$VENV/bin/python" -c "
from deepspeed.accelerator import get_accelerator
from p2med.platform.train.native_ops import use_installed_ninja
use_installed_ninja()  # the ninja the jobs build with
builder = get_accelerator().create_op_builder('ShareMemCommBuilder')
if builder is not None:
    builder.load(verbose=False)
"

echo "$(inputs_hash) torch=$TORCH_VERSION" > "$STAMP"
echo "setup: done; activate with: source $VENV/bin/activate"
