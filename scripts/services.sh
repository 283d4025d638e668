# Shared by scripts/demo and scripts/dev-up (sourced, not run): start the
# deployment's services on loopback from a PKI made by prov-pki init.
# Expects BIN (the binaries), WORK (a work directory), PKI (the PKI
# directory) and PASSWORD (its password file).

# free_port N: the first port from N that nothing on loopback listens on.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

# wait_ready URL PID LOG: wait until URL answers over TLS pinned to the
# root; fail (return 1, printing LOG) if PID exits or after 10 s.
wait_ready() {
  local url=$1 pid=$2 log=$3
  for _ in $(seq 1 100); do
    curl -fsS --cacert "$PKI/certs/root_ca.crt" "$url" >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then tail -n 20 "$log" >&2; return 1; fi
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  return 1
}

# start_ca: step-ca (embedded in prov-pki) from the PKI; sets CA_PID.
start_ca() {
  "$BIN/prov-pki" ca --dir "$PKI" --password-file "$PASSWORD" >"$WORK/ca.log" 2>&1 &
  CA_PID=$!
  wait_ready "$CA_URL/health" "$CA_PID" "$WORK/ca.log"
}

# start_core API_PORT MQTT_PORT: prov-core with its embedded broker; sets
# CORE_PID and CORE (its URL).
start_core() {
  local api=$1 mqtt=$2
  [[ -f "$WORK/machine-id.secret" ]] || { head -c 48 /dev/urandom | base64 > "$WORK/machine-id.secret"; chmod 600 "$WORK/machine-id.secret"; }
  cat > "$WORK/core.yaml" <<YAML
listen: "127.0.0.1:$api"
trustBundle: "$PKI/certs/root_ca.crt"
tls: {cert: "$PKI/core/core/cert.pem", key: "$PKI/core/core/key.pem"}
signer: {cert: "$PKI/signer/images/cert.pem", key: "$PKI/signer/images/key.pem"}
store: {path: "$WORK/registry.db"}
policy:
  machineIdSecretFile: "$WORK/machine-id.secret"
  groups:
    default: {hostname: "{{.Board}}-{{.Serial}}", mqttClientId: "{{.Serial}}", mqttGroupId: "line-a"}
mqtt: {embedded: {listen: "127.0.0.1:$mqtt"}}
rollouts: {tick: 1s}
YAML
  "$BIN/prov-core" serve --config "$WORK/core.yaml" >"$WORK/core.log" 2>&1 &
  CORE_PID=$!
  CORE="https://localhost:$api"
  MQTT_PORT=$mqtt
  wait_ready "$CORE/readyz" "$CORE_PID" "$WORK/core.log"
}

# start_proxy PORT [MANIFEST]: prov-proxy for the loopback "factory
# network", in front of core and the CA, with the console on a port of
# its own; sets PROXY_PID, PROXY and CONSOLE (the console's URL).
start_proxy() {
  local port=$1 manifest=${2:-}
  # The console's own port, with the console certificate browsers accept
  # (they refuse the proxy's identity: docs/factory.md).
  local console_port
  console_port=$(free_port $((port + 1)))
  local batches="" attestation=""
  [[ -n "$manifest" ]] && batches="  batches: [{name: demo-batch, manifest: \"$manifest\", group: default}]"
  # ATTESTATION_ROOTS: the TPM manufacturers' roots (PEM) the proxy's
  # attestation verifier trusts; unset, no board can enroll with a TPM key.
  [[ -n "${ATTESTATION_ROOTS:-}" ]] && attestation="attestation: {roots: \"$ATTESTATION_ROOTS\"}"
  cat > "$WORK/proxy.yaml" <<YAML
listen: "127.0.0.1:$port"
trustBundle: "$PKI/certs/root_ca.crt"
tls: {cert: "$PKI/proxy/factory1/cert.pem", key: "$PKI/proxy/factory1/key.pem"}
provisioner: {key: "$PKI/proxy/factory1/provisioner.jwe", passwordFile: "$PKI/proxy/factory1/provisioner.password"}
core: {url: "$CORE"}
ca: {url: "$CA_URL"}
field: {mqttUrl: "tls://localhost:$MQTT_PORT"}
record: {path: "$WORK/factory.jsonl"}
$attestation
console:
  listen: "127.0.0.1:$console_port"
  tls: {cert: "$PKI/console/factory1/cert.pem", key: "$PKI/console/factory1/key.pem"}
  stations: [{network: 127.0.0.0/8, name: "demo bench"}]
vouching:
  networks: ["127.0.0.0/8"]
$batches
YAML
  "$BIN/prov-proxy" serve --config "$WORK/proxy.yaml" >"$WORK/proxy.log" 2>&1 &
  PROXY_PID=$!
  PROXY="https://localhost:$port"
  CONSOLE="https://localhost:$console_port/"
  wait_ready "$PROXY/readyz" "$PROXY_PID" "$WORK/proxy.log"
}

# stop PID...: SIGTERM, then wait; returns the first non-zero exit status.
stop() {
  local rc=0
  for pid in "$@"; do
    [[ -n "$pid" ]] || continue
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || rc=$?
  done
  return $rc
}
