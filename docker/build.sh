#!/bin/sh
# Builds everything docker/compose.yaml uses, with or without a reachable image registry:
#   1. debian:bookworm-slim: pulled, or built here from Debian packages (debootstrap
#      --variant=minbase, `docker import`): the air-gapped path;
#   2. the certificates (a CA, Sluice's and HAProxy's certificates for 127.0.0.1/localhost)
#      and the secrets (random passwords) under docker/certs and docker/secrets, once;
#   3. sluice:local from docker/Dockerfile's `prebuilt` target with the profile-guided build of
#      bench/pgo.py: the build that ships (trained on a local sandbox, so this host needs the
#      MariaDB server binaries; sysbench and llvm-N are installed if missing). SLUICE_PGO=0: a
#      plain build instead, the full multi-stage build when rust:1-bookworm can be had,
#      otherwise the `prebuilt` target with the binary of `cargo build --release`;
#   4. sluice-tier:local (MariaDB, HAProxy, Prometheus, the example app) from Debian packages.
# Needs a running Docker engine, and debootstrap + openssl when building the base image.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)

# BuildKit builds only the stages a target needs. Docker 23+ clients use it through buildx;
# an older client (Debian's docker.io) uses the engine's built-in BuildKit.
DOCKER=${DOCKER:-docker}
if ! $DOCKER buildx version > /dev/null 2>&1 && [ -x /usr/bin/docker ]; then
  DOCKER=/usr/bin/docker
fi
export DOCKER_BUILDKIT=1
# Containers and build steps use the host's network (no bridge network is assumed).
build() { $DOCKER build --network host "$@"; }

say() { echo "== $*"; }

# 1. The base image.
if ! $DOCKER image inspect debian:bookworm-slim > /dev/null 2>&1; then
  if ! timeout 60 $DOCKER pull debian:bookworm-slim > /dev/null 2>&1; then
    say "no registry: building debian:bookworm-slim with debootstrap"
    command -v debootstrap > /dev/null || { echo "install debootstrap (apt-get install debootstrap)" >&2; exit 1; }
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" > /dev/null
    rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
    tar -C "$rootfs" -c . | $DOCKER import - debian:bookworm-slim > /dev/null
    rm -rf "$rootfs"
    trap - EXIT
  fi
fi

# 2. Certificates and secrets (kept across builds; delete the folders to renew).
certs=docker/certs
if [ ! -f "$certs/ca.pem" ]; then
  say "certificates in $certs"
  mkdir -p "$certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Sluice example tier CA" \
    -keyout "$certs/ca.key" -out "$certs/ca.pem" 2> /dev/null
  for name in sluice haproxy; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$certs/$name.key" -out "$certs/$name.csr" 2> /dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$certs/$name.ext"
    openssl x509 -req -in "$certs/$name.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" \
      -CAcreateserial -days 825 -extfile "$certs/$name.ext" -out "$certs/$name.pem" 2> /dev/null
    rm -f "$certs/$name.csr" "$certs/$name.ext"
  done
  cat "$certs/haproxy.pem" "$certs/haproxy.key" > "$certs/haproxy-bundle.pem"
  mv "$certs/haproxy-bundle.pem" "$certs/haproxy.pem"
fi
# The Sluice container runs as uid 10001: it reads its key and secrets through the group.
chown root:10001 "$certs/sluice.key" 2> /dev/null || true
chmod 0640 "$certs/sluice.key"
secrets=docker/secrets
mkdir -p "$secrets"
for s in app_password monitor_password repl_password admin_password; do
  if [ ! -s "$secrets/$s" ]; then
    head -c 18 /dev/urandom | base64 | tr -d '/+=\n' > "$secrets/$s"
    echo >> "$secrets/$s"
  fi
  chown root:10001 "$secrets/$s" 2> /dev/null || true
  chmod 0640 "$secrets/$s"
done

# 3. The Sluice image.
case "${SLUICE_PGO:-1}" in
  0|1) ;;
  *) echo "SLUICE_PGO must be 1 (the profile-guided build, the default) or 0 (a plain build), not '$SLUICE_PGO'" >&2; exit 2 ;;
esac
if [ "${SLUICE_PGO:-1}" = 1 ]; then
  # The profile-guided build (bench/pgo.py trains it on a local sandbox): about a quarter
  # less user CPU per statement than `cargo build --release`.
  if ! command -v mariadbd > /dev/null && [ ! -x /usr/sbin/mariadbd ]; then
    echo "the profile-guided build trains on a local MariaDB sandbox: install mariadb-server" >&2
    echo "(apt-get install mariadb-server mariadb-client), or set SLUICE_PGO=0 for a plain build" >&2
    exit 1
  fi
  say "sluice:local (prebuilt target with the profile-guided build of bench/pgo.py)"
  python3 bench/pgo.py --out target/pgo/sluice
  mkdir -p target/docker
  strip -o target/docker/sluice target/pgo/sluice
  build -f docker/Dockerfile --target prebuilt -t sluice:local .
elif $DOCKER image inspect rust:1-bookworm > /dev/null 2>&1 || timeout 60 $DOCKER pull rust:1-bookworm > /dev/null 2>&1; then
  say "sluice:local (full build)"
  build -f docker/Dockerfile --target runtime -t sluice:local .
else
  say "sluice:local (no rust image: the prebuilt target with cargo build --release)"
  cargo build --release --locked --bin sluice
  mkdir -p target/docker
  strip -o target/docker/sluice target/release/sluice
  build -f docker/Dockerfile --target prebuilt -t sluice:local .
fi

# 4. The rest of the tier.
say "sluice-tier:local"
build -f docker/tier/Dockerfile -t sluice-tier:local docker
say "done: docker compose -f docker/compose.yaml up -d   (or docker-compose)"
