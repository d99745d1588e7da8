#!/usr/bin/env bash
# The test command from the README: installs what the tests need (when run
# as root on Debian), then runs every test with the race detector.
# Privileged tests (network namespaces, XDP, nftables) run only as root and
# skip with a message otherwise; the DNS tests need knotd (and keymgr),
# nsd (secondaries) and unbound (validation).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v knotd >/dev/null 2>&1 || [ -x /usr/sbin/knotd ] || need+=(knot)
command -v nsd >/dev/null 2>&1 || [ -x /usr/sbin/nsd ] || need+=(nsd)
command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || need+=(unbound)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
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

exec go test -race -count=1 -timeout 20m "$@" ./...
