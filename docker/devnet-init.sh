#!/bin/sh
# The compose devnet's one-shot init (docker/compose.yaml): makes the keys and the signed
# manifest once, then leaves them to the nodes. Usage:
#   devnet-init.sh DIR WORKERS VALIDATOR_PORT [MAX_NEW_TOKENS]
#   DIR/validator, DIR/worker-N   each node's data dir (identity.key, profile)
#   DIR/founder                   the founder key that signed the manifest
#   DIR/net/network.manifest      the manifest every node mounts read-only
# It runs as root only to hand DIR to the nodes' user (uid 10000) afterwards.
set -eu
dir=$1
workers=$2
port=$3
max_new_tokens=${4:-48}
if [ -f "$dir/net/network.manifest" ]; then
  echo "devnet-init: $dir/net/network.manifest exists; keeping this devnet"
else
  field() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }
  validator=$(flopnet identity --data-dir "$dir/validator")
  key=$(echo "$validator" | field public_key)
  peer=$(echo "$validator" | field peer_id)
  i=1
  while [ "$i" -le "$workers" ]; do
    flopnet identity --data-dir "$dir/worker-$i" >/dev/null
    flopnet profile set --data-dir "$dir/worker-$i" --name "worker-$i" --team devnet >/dev/null
    i=$((i + 1))
  done
  rm -rf "$dir/founder"
  # Every node dials the validator, named in the manifest: it is publisher, validator and the
  # bootstrap peer. A devnet audits every submission (audit rate floor 1.0).
  flopnet network init --out "$dir/founder" --name devnet --validator "$key" --publisher "$key" \
    --audit-rate-floor 1.0 --max-new-tokens "$max_new_tokens" --bootstrap "/ip4/127.0.0.1/tcp/$port/p2p/$peer"
  mkdir -p "$dir/net"
  cp "$dir/founder/network.manifest" "$dir/net/network.manifest"
fi
if [ "$(id -u)" -eq 0 ]; then
  chown -R 10000:10000 "$dir"
fi
