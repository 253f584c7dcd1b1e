#!/bin/sh
# SPDX-License-Identifier: AGPL-3.0-or-later
#
# The server image's entry point: mycelya-server on every interface, with its
# settings from the environment. Arguments are passed on as extra flags.
#
#   MYCELYA_PORT          port to listen on (default 50051)
#   MYCELYA_TOKEN         the token clients must send (required: the port is public)
#   MYCELYA_TLS_CERT/KEY  PEM text or file paths (required unless MYCELYA_INSECURE=1)
#   MYCELYA_IDLE_TIMEOUT  seconds without a client before the server stops
#   MYCELYA_STATE_DIR     where paused sessions' storages go (machine.pause());
#                         a folder that outlives the container, e.g. a volume
#   MYCELYA_DEVICES       e.g. cuda:0,cpu (default: every GPU torch sees, then cpu)
#   MYCELYA_MEMORY_LIMIT, MYCELYA_SESSION_MEMORY_LIMIT, MYCELYA_MAX_SESSIONS
#   MYCELYA_INSECURE=1    serve plaintext (anyone on the path reads the token)
#
# mycelya-server itself reads MYCELYA_TOKEN, MYCELYA_TLS_CERT/KEY and
# MYCELYA_MEMORY_LIMIT; the rest become flags here.
set -eu
set -- --listen "0.0.0.0:${MYCELYA_PORT:-50051}" "$@"
[ -z "${MYCELYA_IDLE_TIMEOUT:-}" ] || set -- "$@" --idle-timeout "$MYCELYA_IDLE_TIMEOUT"
[ -z "${MYCELYA_STATE_DIR:-}" ] || set -- "$@" --state-dir "$MYCELYA_STATE_DIR"
[ -z "${MYCELYA_DEVICES:-}" ] || set -- "$@" --devices "$MYCELYA_DEVICES"
[ -z "${MYCELYA_SESSION_MEMORY_LIMIT:-}" ] || set -- "$@" --session-memory-limit "$MYCELYA_SESSION_MEMORY_LIMIT"
[ -z "${MYCELYA_MAX_SESSIONS:-}" ] || set -- "$@" --max-sessions "$MYCELYA_MAX_SESSIONS"
[ "${MYCELYA_INSECURE:-0}" != 1 ] || set -- "$@" --insecure
[ -n "${RUNPOD_POD_ID:-}" ] || exec mycelya-server "$@"

# On RunPod a container that exits is started again, and the pod bills on:
# a server that stopped by itself (--idle-timeout: its client vanished, its
# tensors saved; or a crash, which would only repeat) stops its own pod
# instead, with the pod-scoped RUNPOD_API_KEY that RunPod gives every pod.
# RunPod's own stop (SIGTERM here) is passed on and ends the container as usual.
stopping=0
trap 'stopping=1; kill -TERM "$server" 2>/dev/null' TERM INT
mycelya-server "$@" &
server=$!
status=0
wait "$server" || status=$?
# A trapped signal interrupts wait: wait again for the server's own exit.
while kill -0 "$server" 2>/dev/null; do wait "$server" || status=$?; done
if [ "$stopping" = 0 ]; then
  echo "mycelya-server exited by itself (status $status); stopping pod $RUNPOD_POD_ID" >&2
  python3 - <<'PY' || echo "could not stop pod $RUNPOD_POD_ID; RunPod will restart it" >&2
import json, os, urllib.request
base = os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io/v2").rstrip("/")
request = urllib.request.Request(
    f"{base}/pods/{os.environ['RUNPOD_POD_ID']}/action",
    data=json.dumps({"action": "stop"}).encode(),
    headers={"Authorization": f"Bearer {os.environ['RUNPOD_API_KEY']}", "Content-Type": "application/json"},
    method="POST",
)
urllib.request.urlopen(request, timeout=30).read()
PY
  # Stay until RunPod's stop ends the container, so it is not restarted.
  sleep 120 &
  wait $! || true
fi
exit "$status"
