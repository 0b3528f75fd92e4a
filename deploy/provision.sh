#!/usr/bin/env bash
# Provision domed's JetStream objects as the NATS admin user, then exit:
# the stream DOMED_JOBS, the durable consumer `executors` and the KV buckets domed-jobs,
# domed-secrets, domed-idempotency, domed-slots and domed-holds.
#
# It starts each service once as admin (the services' own start-up code creates exactly what
# they expect) and stops it as soon as it is ready. The executor runs with --slots 0, so it
# takes no job. The service users cannot create or change any of this (deploy/README.md).
#
#   DOMED_NATS_URL='nats://admin:<DOMED_ADMIN_PASSWORD>@127.0.0.1:4222' \
#     deploy/provision.sh --replicas 1 --max-age 0 --max-bytes -1 --ack-wait 30
#
# Pass the same stream arguments as DOMED_STREAM_ARGS in /etc/domed/stream.env. Run it again,
# with new arguments, to change --max-age or --max-bytes (the only settings it may change).
# Environment: DOMED (the domed command, default `domed`), DOMED_SSOT (default /opt/domed/ssot).
set -euo pipefail

domed=${DOMED:-domed}
ssot=${DOMED_SSOT:-/opt/domed/ssot}
: "${DOMED_NATS_URL:?set DOMED_NATS_URL to the URL of the admin user}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for svc in router executor projector; do
    extra=()
    if [ "$svc" = executor ]; then extra=(--slots 0); fi
    "$domed" "$svc" --ssot "$ssot" --data-dir "$work" --name "domed-provision-$svc" \
        "${extra[@]}" "$@" 2>"$work/$svc.log" &
    pid=$!
    deadline=$((SECONDS + 60))
    until grep -q ' ready' "$work/$svc.log"; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            echo "provisioning failed in domed $svc:" >&2
            cat "$work/$svc.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    kill -TERM "$pid"
    wait "$pid" || true
    echo "provisioned: domed $svc"
done
