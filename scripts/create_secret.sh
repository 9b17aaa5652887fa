#!/usr/bin/env bash
# Create the Kubernetes secret `gcs-credentials` (key `key.json`) that the gcs-ingest pipeline mounts at
# /var/secrets/gcs. The service-account key file named by GOOGLE_APPLICATION_CREDENTIALS is base64-encoded in
# memory into secrets/secret_template.json and piped to `pachctl create secret -f /dev/stdin`; nothing is written to disk.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/secret_common.sh
source "$HERE/secret_common.sh"

USAGE="usage: $SCRIPT_NAME [--dry-run]

Creates the Pachyderm secret 'gcs-credentials' from the service-account key file at
\$GOOGLE_APPLICATION_CREDENTIALS. --dry-run prints the filled secret to stdout instead
(it contains the key, base64-encoded: do not paste it anywhere)."

parse_args "$USAGE" "$@"
require_var GOOGLE_APPLICATION_CREDENTIALS "path of the GCS service-account key file (JSON)"
require_file GOOGLE_APPLICATION_CREDENTIALS

secret=$(fill_template "$HERE/../secrets/secret_template.json" \
    __GCS_KEY_JSON_B64__ "$(b64_file "$GOOGLE_APPLICATION_CREDENTIALS")")
emit_secret "$secret"
((DRY_RUN)) || printf '%s: secret gcs-credentials created\n' "$SCRIPT_NAME" >&2
