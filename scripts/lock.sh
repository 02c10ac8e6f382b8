#!/usr/bin/env bash
# Refreshes constraints.txt, the lock that scripts/install.sh installs in every mode: a new virtual
# environment, the newest releases within pyproject.toml's ranges (install.sh dev without the lock),
# then `pip freeze`. Run the full suite in that environment before committing the new file:
#   bash scripts/lock.sh && . .lock-venv/bin/activate && python3 -m pytest -m "slow or not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOCK_VENV:-.lock-venv}
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
head_lines=$(sed -n '/^[a-zA-Z]/q;p' constraints.txt)  # the header comment and causal-conv1d stay
printf '%s\n' "$head_lines" >constraints.txt.unlocked
grep -E '^causal-conv1d==' constraints.txt >>constraints.txt.unlocked
cp constraints.txt constraints.txt.previous
cp constraints.txt.unlocked constraints.txt  # install.sh with a lock that pins nothing but causal-conv1d
trap 'mv -f constraints.txt.previous constraints.txt; rm -f constraints.txt.unlocked' ERR
PYTHON="$VENV/bin/python" bash scripts/install.sh dev
{ cat constraints.txt.unlocked; "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v '^-e' | sed 's/+cpu$//'; } \
  >constraints.txt
rm -f constraints.txt.unlocked constraints.txt.previous
echo "lock.sh: constraints.txt rewritten ($(grep -c '==' constraints.txt) pins); git diff constraints.txt shows what moved"
