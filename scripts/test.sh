#!/usr/bin/env bash
# The test command from the README. As root on Debian it first installs
# what the tests need (skipped when everything is there); then, for every
# Go module in the repository (each go.mod, nested ones such as grpclb/
# included), it runs
#   1. every test with the race detector, and
#   2. the allocation tests without it: the race detector allocates, so the
#      tests that hold a path to N allocations (by convention their names
#      contain "Alloc") skip under -race and are checked here.
# Privileged tests (network namespaces, XDP, nftables) run only as root
# and skip with a message otherwise; tests that need a peer program (Knot,
# NSD, Unbound, etcd, nginx, HAProxy, promtool, clang for the generated-BPF
# freshness check) skip when it is missing. Extra go test flags (-v,
# -run, ...) go to both runs; the second keeps its own -run.
set -euo pipefail
cd "$(dirname "$0")/.."

# has CMD: CMD is on PATH or in an sbin directory (not on PATH for every
# user).
has() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# command → Debian package that provides it
need=()
while read -r cmd pkg; do
  has "$cmd" || need+=("$pkg")
done <<'EOF'
knotd knot
kdig knot-dnsutils
nft nftables
ip iproute2
clang clang
llvm-strip llvm
nsd nsd
unbound unbound
promtool prometheus
etcd etcd-server
nginx nginx-light
haproxy haproxy
curl curl
EOF
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "test.sh: not root or no apt-get: ${need[*]} missing; tests that need them will skip"
  fi
fi

# Every module, the root one first.
mapfile -t modules < <(find . \( -name .git -o -name testdata -o -name vendor \) -prune -o \
  -name go.mod -printf '%h\n' | sort)
status=0
for m in "${modules[@]}"; do
  echo "test.sh: module ${m}: go test -race"
  (cd "$m" && go test -race -count=1 -timeout 20m "$@" ./...) || status=1
  echo "test.sh: module ${m}: allocation tests without -race"
  (cd "$m" && go test -count=1 -timeout 10m "$@" -run 'Alloc' ./...) || status=1
done
exit $status
