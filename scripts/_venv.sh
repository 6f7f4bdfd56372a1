# shellcheck shell=bash
# ensure_venv [extra]: create .venv with Python 3.11 and install genbench (editable) once per
# change of pyproject.toml.
ensure_venv() {
  local extra="${1:-}" py stamp want
  if [ ! -x .venv/bin/python ]; then
    py="$(command -v python3.11 || command -v python3)"
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
  fi
  stamp=".venv/.genbench-installed${extra:+-$extra}"
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q -e ".${extra:+[$extra]}" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import genbench.cli" || { echo "genbench failed to install" >&2; exit 1; }
    echo "$want" > "$stamp"
  fi
}
