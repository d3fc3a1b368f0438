#!/usr/bin/env bash
# What the demo and the tests need beyond the toolchains (Rust via rustup, Java 17+ with
# Maven, Node.js with npm, Python 3): the wasm32-wasip2 target, the pinned plugin
# builders and the broker's jars. Idempotent; nothing is written inside the clone.
#
#   scripts/install.sh            everything the tests need
#   scripts/install.sh --demo     the wasm target and the broker's jars only
#
# The builders go to $SLUICE_TOOLS_DIR (default ~/.cache/sluice/tools), the jars to
# Maven's local repository. On success the builders' bin directories are printed on
# stdout as one PATH fragment (empty with --demo); every message goes to stderr.
# Every missing toolchain is named at once, with the command that installs it, before
# anything is installed; an install that fails stops the script with its reason.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The builder versions `sluice plugin new` pins (host/src/author/builder.rs); a unit
# test keeps the two in step.
componentize_js_version=0.23.0
componentize_py_version=0.25.1

tools=${SLUICE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}
demo_only=0
case "${1:-}" in
  "") ;;
  --demo) demo_only=1 ;;
  *) echo "install: unknown argument '$1'; usage: scripts/install.sh [--demo]" >&2; exit 2 ;;
esac

say() { echo "install: $*" >&2; }

# 1. Toolchains: all checked before anything is installed.
missing=()
need() { # need COMMAND WHAT HOW
  command -v "$1" >/dev/null 2>&1 || missing+=("$2 ('$1' not found). Install it with: $3")
}
need cargo "Rust" "curl https://sh.rustup.rs -sSf | sh (rustup), then open a new shell"
need rustup "rustup (Rust's installer, for the wasm32-wasip2 target)" "curl https://sh.rustup.rs -sSf | sh"
need java "Java 17 or later (the Kafka broker)" "apt-get install openjdk-17-jdk-headless"
need mvn "Maven (fetches the Kafka broker)" "apt-get install maven"
if [[ $demo_only == 0 ]]; then
  need node "Node.js 18 or later (builds the JavaScript plugins)" "apt-get install nodejs npm"
  need npm "npm (installs componentize-js)" "apt-get install npm"
  need python3 "Python 3.10 or later (builds the Python plugins)" "apt-get install python3 python3-venv"
  if command -v node >/dev/null 2>&1; then
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    ((major >= 18)) || missing+=("Node.js 18 or later (found $(node --version 2>/dev/null || echo an unreadable version)). Install a newer one, e.g.: apt-get install nodejs")
  fi
  if command -v python3 >/dev/null 2>&1 && [[ ! -x $tools/py/bin/componentize-py ]] &&
    ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=("Python's venv module with ensurepip (makes the builders' environment). Install it with: apt-get install python3-venv")
  fi
fi
# The real parts the end-to-end tests drive, from Debian's packages: podman and runc
# (the container image), Chromium (the web console), Prometheus and promtool (metrics
# and alert rules). Installed below when this runs as root; named here otherwise.
packages=()
if [[ $demo_only == 0 ]]; then
  command -v podman >/dev/null 2>&1 || packages+=(podman)
  command -v runc >/dev/null 2>&1 || packages+=(runc)
  command -v chromium >/dev/null 2>&1 || packages+=(chromium)
  { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || packages+=(prometheus)
  if ((${#packages[@]})) && { [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; }; then
    missing+=("${packages[*]} (the end-to-end tests drive them). Install them with: sudo apt-get install ${packages[*]}")
  fi
fi
if ((${#missing[@]})); then
  say "the tests cannot run on this machine yet; missing:"
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 1
fi
if ((${#packages[@]})); then
  say "installing ${packages[*]} (Debian packages)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 \
      apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >&2 || {
    say "could not install ${packages[*]} (see above). To install them by hand: apt-get install ${packages[*]}"
    exit 1
  }
fi

# 2. The Rust target plugins are built for.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  say "adding the Rust target wasm32-wasip2"
  rustup target add wasm32-wasip2 >&2 || {
    say "could not add the Rust target wasm32-wasip2 (see above). To add it by hand: rustup target add wasm32-wasip2"
    exit 1
  }
fi

# 3. The broker's jars (Maven resolves them once into its local repository).
"$root/scripts/kafka.sh" classpath >/dev/null || {
  say "could not fetch the Kafka broker with Maven (see the log named above). To try by hand: scripts/kafka.sh classpath"
  exit 1
}

[[ $demo_only == 1 ]] && exit 0

# 4. The plugin builders, pinned, each in a directory of its own under $tools.
mkdir -p "$tools"
log="$tools/install.log"

js_dir=$tools/node
js_installed=$(node -p "try { require('$js_dir/node_modules/@bytecodealliance/componentize-js/package.json').version } catch (e) { '' }" 2>/dev/null || true)
if [[ $js_installed != "$componentize_js_version" ]]; then
  say "installing componentize-js $componentize_js_version into $js_dir"
  npm install --no-audit --no-fund --no-save --prefix "$js_dir" \
    "@bytecodealliance/componentize-js@$componentize_js_version" >"$log" 2>&1 || {
    tail -n 5 "$log" | sed 's/^/  /' >&2
    say "could not install componentize-js $componentize_js_version (npm's output: $log). Is the npm registry reachable? To install it by hand: npm install --prefix $js_dir @bytecodealliance/componentize-js@$componentize_js_version"
    exit 1
  }
fi

# weval, which componentize-js runs for `sluice plugin build --aot`: its npm package
# would download it from GitHub at first use; it is built here from crates.io instead
# (once, a few minutes), at the version that package names.
weval_pkg=$js_dir/node_modules/@bytecodealliance/weval
weval_version=$(node -p "require('$weval_pkg/package.json').version" 2>/dev/null || true)
case "$(uname -m)-$(uname -s)" in
  x86_64-Linux) weval_platform=x86_64-linux ;;
  aarch64-Linux) weval_platform=aarch64-linux ;;
  x86_64-Darwin) weval_platform=x86_64-macos ;;
  arm64-Darwin) weval_platform=aarch64-macos ;;
  *) weval_platform="" ;;
esac
if [[ -n $weval_version && -n $weval_platform && ! -x $weval_pkg/$weval_platform/weval ]]; then
  if [[ $("$tools/weval/bin/weval" --version 2>/dev/null) != "weval $weval_version" ]]; then
    say "building weval $weval_version from crates.io into $tools/weval (for plugin build --aot; once, a few minutes)"
    CARGO_TARGET_DIR=$tools/weval-build cargo install --quiet weval --version "$weval_version" \
      --root "$tools/weval" >"$log" 2>&1 || {
      tail -n 5 "$log" | sed 's/^/  /' >&2
      say "could not build weval $weval_version (cargo's output: $log). Is crates.io reachable? To build it by hand: cargo install weval --version $weval_version --root $tools/weval"
      exit 1
    }
    rm -rf "$tools/weval-build"
  fi
  mkdir -p "$weval_pkg/$weval_platform"
  cp "$tools/weval/bin/weval" "$weval_pkg/$weval_platform/weval"
fi

py_dir=$tools/py
py_installed=$("$py_dir/bin/python" -c "import importlib.metadata as m; print(m.version('componentize-py'))" 2>/dev/null || true)
if [[ $py_installed != "$componentize_py_version" ]]; then
  say "installing componentize-py $componentize_py_version into $py_dir"
  { [[ -x $py_dir/bin/pip ]] || python3 -m venv "$py_dir"; } >"$log" 2>&1 &&
    "$py_dir/bin/pip" install --disable-pip-version-check -q "componentize-py==$componentize_py_version" >>"$log" 2>&1 || {
    tail -n 5 "$log" | sed 's/^/  /' >&2
    say "could not install componentize-py $componentize_py_version (pip's output: $log). Is PyPI reachable? To install it by hand: python3 -m venv $py_dir && $py_dir/bin/pip install componentize-py==$componentize_py_version"
    exit 1
  }
fi

# 5. The deployment's offline checkers: Checkov and python-hcl2 under $tools/iac,
# kustomize under $tools/kustomize.
SLUICE_TOOLS_DIR=$tools "$root/scripts/deploy-tools.sh" --iac >&2

echo "$js_dir/node_modules/.bin:$py_dir/bin:$tools/kustomize"
