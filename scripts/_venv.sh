# shellcheck shell=bash
# ensure_venv [extra]: create .venv with Python 3.11 and install genbench (editable) once per
# change of pyproject.toml. One stamp records what was installed ("<pyproject hash> <extra>"):
# an install with the dev extra serves a later call without one (scripts/quickstart after
# scripts/test), so each change of pyproject.toml installs once.
ensure_venv() {
  local extra="${1:-}" py stamp want have have_extra
  if [ ! -x .venv/bin/python ]; then
    py="$(command -v python3.11 || command -v python3)"
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
  fi
  stamp=".venv/.genbench-installed"
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  read -r have have_extra 2>/dev/null < "$stamp" || true
  if [ "${have:-}" = "$want" ] && { [ -z "$extra" ] || [ "${have_extra:-}" = "$extra" ]; }; then
    return 0
  fi
  .venv/bin/python -m pip install -q -e ".${extra:+[$extra]}" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import genbench.cli" || { echo "genbench failed to install" >&2; exit 1; }
  echo "$want $extra" > "$stamp"
}
