#!/usr/bin/env bash
# Create the Kubernetes secret `pg-credentials` that the pg-load pipeline exposes as environment variables.
# Connection settings come from PG_* variables; the three certificate variables name PEM files whose CONTENT is
# stored, or hold the PEM (or base64 of it) themselves. Everything is base64-encoded in memory and piped to `pachctl create secret -f /dev/stdin`; nothing touches disk.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/secret_common.sh
source "$HERE/secret_common.sh"

USAGE="usage: $SCRIPT_NAME [--dry-run]

Creates the Pachyderm secret 'pg-credentials' from
  PG_HOST, PG_PORT (default 5432), PG_DBNAME, PG_USER, PG_PASSWORD,
  PG_SSLROOTCERT, PG_SSLCERT, PG_SSLKEY (paths of PEM files, whose content is stored, or the PEM
  content itself, or its base64).
PG_SSLCLIENT_CERT and PG_SSL_CLIENT_KEY are accepted for PG_SSLCERT and PG_SSLKEY.
--dry-run prints the filled secret to stdout instead (it contains the password and key, base64-encoded)."

parse_args "$USAGE" "$@"

# The original class project's README spelled the client certificate variables differently; accept both,
# the canonical name wins.
PG_SSLCERT=${PG_SSLCERT:-${PG_SSLCLIENT_CERT:-}}
PG_SSLKEY=${PG_SSLKEY:-${PG_SSL_CLIENT_KEY:-}}
PG_PORT=${PG_PORT:-5432}

require_var PG_HOST "Postgres host name or IP (Cloud SQL public or private IP)"
[[ $PG_PORT =~ ^[0-9]{1,5}$ ]] || die "PG_PORT must be a port number, got '$PG_PORT'"
require_var PG_DBNAME "database name"
require_var PG_USER "database user"
require_var PG_PASSWORD "database password"
require_var PG_SSLROOTCERT "the server CA certificate (server-ca.pem): its path or its PEM content"
require_var PG_SSLCERT "the client certificate (client-cert.pem), path or PEM; PG_SSLCLIENT_CERT also works"
require_var PG_SSLKEY "the client private key (client-key.pem), path or PEM; PG_SSL_CLIENT_KEY also works"
require_pem PG_SSLROOTCERT
require_pem PG_SSLCERT
require_pem PG_SSLKEY

secret=$(fill_template "$HERE/../secrets/secret_template_db.json" \
    __PG_HOST_B64__ "$(printf '%s' "$PG_HOST" | b64_stdin)" \
    __PG_PORT_B64__ "$(printf '%s' "$PG_PORT" | b64_stdin)" \
    __PG_DBNAME_B64__ "$(printf '%s' "$PG_DBNAME" | b64_stdin)" \
    __PG_USER_B64__ "$(printf '%s' "$PG_USER" | b64_stdin)" \
    __PG_PASSWORD_B64__ "$(printf '%s' "$PG_PASSWORD" | b64_stdin)" \
    __PG_SSLROOTCERT_B64__ "$(b64_pem PG_SSLROOTCERT)" \
    __PG_SSLCERT_B64__ "$(b64_pem PG_SSLCERT)" \
    __PG_SSLKEY_B64__ "$(b64_pem PG_SSLKEY)")
emit_secret "$secret"
((DRY_RUN)) || printf '%s: secret pg-credentials created\n' "$SCRIPT_NAME" >&2
