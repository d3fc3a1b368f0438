#!/usr/bin/env bash
# What the deployment tests need beyond the test suite's own tools: podman and runc
# (to build and run the container image; Debian packages, installed as root when
# missing), Checkov and python-hcl2 (to check the Terraform module offline; pinned,
# in a virtual environment under $SLUICE_TOOLS_DIR/iac, default
# ~/.cache/sluice/tools/iac) and kustomize (to render the Kubernetes manifests; pinned,
# built with Go into $SLUICE_TOOLS_DIR/kustomize, when Go is installed). Idempotent.
#
#   scripts/deploy-tools.sh          both
#   scripts/deploy-tools.sh --iac    Checkov and python-hcl2 only (no root needed)
set -euo pipefail
iac_only=0
case "${1:-}" in
  "") ;;
  --iac) iac_only=1 ;;
  *) echo "deploy-tools: unknown argument '$1'; usage: scripts/deploy-tools.sh [--iac]" >&2; exit 2 ;;
esac

tools=${SLUICE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}
checkov_version=3.3.30
hcl2_version=8.1.4
kustomize_version=v5.7.1

if [[ $iac_only == 0 ]] && { ! command -v podman >/dev/null || ! command -v runc >/dev/null; }; then
  if [[ $(id -u) != 0 ]]; then
    echo "deploy-tools: podman and runc are missing; install them (Debian: sudo apt-get install podman runc)" >&2
    exit 1
  fi
  echo >&2 "deploy-tools: installing podman and runc"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends podman runc >/dev/null
fi

venv=$tools/iac
if ! "$venv/bin/checkov" --version 2>/dev/null | grep -qx "$checkov_version" \
  || ! "$venv/bin/python" -c "import hcl2" 2>/dev/null; then
  echo >&2 "deploy-tools: installing Checkov $checkov_version and python-hcl2 $hcl2_version into $venv"
  python3 -m venv "$venv"
  # Bounded: a registry that does not answer fails the install, not the whole run.
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "checkov==$checkov_version" "python-hcl2==$hcl2_version" >&2 || {
    echo "deploy-tools: could not install Checkov $checkov_version and python-hcl2 $hcl2_version into $venv. Is PyPI reachable? To install them by hand: python3 -m venv $venv && $venv/bin/pip install checkov==$checkov_version python-hcl2==$hcl2_version" >&2
    exit 1
  }
fi

kustomize=$tools/kustomize/kustomize
if ! "$kustomize" version 2>/dev/null | grep -qx "$kustomize_version"; then
  if command -v go >/dev/null; then
    echo >&2 "deploy-tools: installing kustomize $kustomize_version into $tools/kustomize"
    GOBIN=$tools/kustomize timeout 600 go install "sigs.k8s.io/kustomize/kustomize/v5@$kustomize_version" >&2 || {
      echo "deploy-tools: could not build kustomize $kustomize_version. Is the Go module proxy reachable? To install it by hand: GOBIN=$tools/kustomize go install sigs.k8s.io/kustomize/kustomize/v5@$kustomize_version" >&2
      exit 1
    }
  else
    echo >&2 "deploy-tools: Go is not installed, so kustomize is not; the manifest test reads the kustomizations' files instead of rendering them"
  fi
fi
