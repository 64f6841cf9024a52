#!/usr/bin/env bash
# A container's network life, scripted with curl against tunloom's Weave Net API, the
# way weave-era scripts do it. Every call returns only once its change is durable and
# in force, so each line can rely on the one before.
#
#   examples/weave-curl.sh [container-id]        (tunloom running on this host)
#   TUNLOOM_WEAVE=http://127.0.0.1:6784 examples/weave-curl.sh
set -euo pipefail
W=${TUNLOOM_WEAVE:-http://127.0.0.1:6784}
id=${1:-demo-$$}

# Ready? /status answers 200 once the node can allocate, 503 before.
curl -fsS "$W/status" >/dev/null
subnet=$(curl -fsS "$W/ipinfo/defaultsubnet")
domain=$(curl -fsS "$W/domain")

# Allocate an address for the container; asking again gives the same one.
cidr=$(curl -fsS -X POST "$W/ip/$id")
[ "$(curl -fsS -X POST "$W/ip/$id")" = "$cidr" ]
[ "$(curl -fsS "$W/ip/$id")" = "$cidr" ]
ip=${cidr%/*}
echo "container $id: $cidr (default subnet $subnet)"

# Name it in the DNS domain.
curl -fsS -X PUT "$W/name/$id/$ip" --data-urlencode "fqdn=$id.$domain"
echo "registered $id.$domain -> $ip"

# A specific address for a second container; a taken one is refused with a reason.
base=${subnet%/*}
want="${base%.*}.$(( ${base##*.} + 200 ))/${subnet#*/}"
curl -fsS -X PUT "$W/ip/$id-sidecar/$want"
code=$(curl -sS -o /tmp/tunloom-claim.$$ -w '%{http_code}' -X PUT "$W/ip/$id-other/$want")
echo "claiming $want again: HTTP $code: $(cat /tmp/tunloom-claim.$$)"
rm -f /tmp/tunloom-claim.$$
[ "$code" = 400 ]

# Tear down: names, then addresses (204 when released).
curl -fsS -X DELETE "$W/name/$id/$ip"
[ "$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE "$W/ip/$id")" = 204 ]
[ "$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE "$W/ip/$id-sidecar")" = 204 ]
[ "$(curl -sS -o /dev/null -w '%{http_code}' "$W/ip/$id")" = 404 ]
echo "released $id"
