#!/usr/bin/env bash
# Builds a container image of the `sluice` binary FROM scratch: the binary, exactly the
# shared libraries `ldd` lists (and the dynamic loader), CA certificates, and a
# non-root user (65532). No base image is pulled.
#
#   scripts/image.sh [--binary PATH] [--tag NAME] [--engine podman|docker]
#
# --binary  the sluice binary to package (default: the release build, built first;
#           ${CARGO_TARGET_DIR:-target}/release/sluice)
# --tag     the image name (default: localhost/sluice:<version>, then also tagged
#           localhost/sluice:latest)
# --engine  podman or docker (default: podman if installed, else docker if its
#           engine answers)
#
# In the image:
#   /usr/local/bin/sluice      the entry point; the default command is
#                              `run --config /etc/sluice/sluice.toml`
#   /etc/sluice/               mount the pipeline file here (read-only)
#   /etc/sluice/plugin/        mount the plugin here (e.g. a ConfigMap: the watcher
#                              follows the kubelet's symlink flip)
#   /home/sluice               HOME of user 65532: the compilation cache and the admin
#                              token go under it (an emptyDir on a read-only root)
#   port 9464                  the admin endpoint (/ready, /metrics); it listens on
#                              127.0.0.1 unless SLUICE_ADMIN says otherwise, which needs
#                              SLUICE_ADMIN_TOKEN or SLUICE_ADMIN_TOKEN_FILE
#
# Podman on a machine without systemd cgroups and with limits the container runtime
# may not raise (as in CI here) runs with runc, cgroupfs and no default ulimits: this
# script writes such a containers.conf of its own and points CONTAINERS_CONF at it,
# unless CONTAINERS_CONF is already set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=
tag=
engine=${SLUICE_IMAGE_ENGINE:-}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ -z $engine ]]; then
  if command -v podman >/dev/null; then
    engine=podman
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  else
    echo "image: neither podman nor a running Docker engine was found;" \
      "install podman (Debian: apt-get install podman runc) or start Docker" >&2
    exit 1
  fi
fi
if [[ $engine == podman && -z ${CONTAINERS_CONF:-} ]]; then
  conf_dir=${XDG_CONFIG_HOME:-$HOME/.config}/sluice
  mkdir -p "$conf_dir"
  # runc and cgroupfs: crun is refused setrlimit here, and the host's cgroups are
  # hybrid; no default ulimits for the same reason.
  cat >"$conf_dir/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_CONF=$conf_dir/containers.conf
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
default_tag=localhost/sluice:${version:-dev}
tag=${tag:-$default_tag}
if [[ -z $binary ]]; then
  echo "image: building sluice (release)"
  cargo build --release -p sluice-host --bin sluice
  binary=${CARGO_TARGET_DIR:-target}/release/sluice
fi
[[ -x $binary ]] || { echo "image: $binary is not an executable" >&2; exit 1; }

context=$(mktemp -d -t sluice-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/sluice/plugin" "$root/etc/ssl/certs" \
  "$root/tmp" "$context/home/sluice"
# Stripped: symbols are for debuggers; panics still name their file and line.
strip -o "$root/usr/local/bin/sluice" "$binary"

# Exactly what the dynamic linker loads: every `=> /path` of ldd, and the loader.
while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done < <(ldd "$binary" | awk '/=> \// { print $3 } /^[ \t]*\/[^ ]*ld-linux/ { print $1 }')

ca=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca ]] || { echo "image: no CA bundle at $ca (Debian: apt-get install ca-certificates)" >&2; exit 1; }
cp "$ca" "$root$ca"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
sluice:x:65532:65532:sluice:/home/sluice:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
sluice:x:65532:
EOF
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"

cat >"$context/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
# HOME and /tmp writable by the user only (the compilation cache refuses a directory
# others can write); on a read-only root, mount an emptyDir on /home/sluice.
COPY --chown=65532:65532 home/ /home/
USER 65532:65532
ENV HOME=/home/sluice \
    PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /home/sluice
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--config", "/etc/sluice/sluice.toml"]
EOF
chmod 1777 "$root/tmp"
chmod 0700 "$context/home/sluice"

echo "image: building $tag with $engine"
"$engine" build --quiet -f "$context/Containerfile" -t "$tag" "$context" >/dev/null
# The default name is also tagged :latest; a name given with --tag is used alone.
[[ $tag == "$default_tag" ]] && "$engine" tag "$tag" localhost/sluice:latest
size=$("$engine" image inspect "$tag" --format '{{.Size}}')
echo "image: $tag, $((size / 1000000)) MB"
