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
exec mycelya-server "$@"
