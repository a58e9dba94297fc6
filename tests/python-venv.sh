# Sourced by tests/run.sh and tests/bench.sh: `python_venv DIR` makes a virtual
# environment in DIR unless one is there (Debian's system Python refuses `pip install`
# outside one, PEP 668), installing python3-venv with apt when Python lacks it, and
# puts DIR/bin first on PATH. Fails (status 1) when no environment could be made.
python_venv() {
  local venv=$1
  if [ ! -x "$venv/bin/python3" ]; then
    if ! python3 -m venv "$venv"; then
      echo "== installing python3-venv"
      rm -rf "$venv"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
      python3 -m venv "$venv"
    fi
  fi
  [ -x "$venv/bin/python3" ] || return 1
  export PATH="$PWD/$venv/bin:$PATH"
}
