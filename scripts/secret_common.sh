# shellcheck shell=bash
# Helpers shared by create_secret.sh and create_secret_db.sh (sourced, not executed).
# Secret values only ever travel through shell variables, builtins and pipes: never argv, never a file, never stderr.

SCRIPT_NAME=$(basename "$0")
DRY_RUN=0

die() {
    printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
    exit 1
}

# parse_args USAGE "$@": handles --dry-run and --help, refuses anything else.
parse_args() {
    local usage=$1
    shift
    while (($#)); do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            -h | --help)
                printf '%s\n' "$usage"
                exit 0
                ;;
            *) die "unknown argument '$1' (try --help)" ;;
        esac
        shift
    done
}

# require_var NAME MEANING: the variable must be set and non-empty.
require_var() {
    [[ -n ${!1:-} ]] || die "environment variable $1 is not set ($2)"
}

# require_file NAME: the variable NAME holds the path of a readable, non-empty file (the path is not secret).
require_file() {
    local path=${!1}
    [[ -e $path ]] || die "$1 points to '$path', which does not exist"
    [[ -f $path && -r $path ]] || die "$1 points to '$path', which is not a readable file"
    [[ -s $path ]] || die "$1 points to '$path', which is empty"
}

# require_pem NAME: like require_file, and the file must be PEM (what libpq reads).
require_pem() {
    require_file "$1"
    grep -q -e '-----BEGIN ' -- "${!1}" || die "$1 points to '${!1}', which is not a PEM file (no '-----BEGIN' line)"
}

# b64_file PATH: base64 of the file's content on one line.
b64_file() {
    base64 <"$1" | tr -d '\n'
}

# b64_value: base64 of stdin on one line (callers pipe a builtin printf into it).
b64_stdin() {
    base64 | tr -d '\n'
}

# fill_template TEMPLATE_FILE PLACEHOLDER VALUE [PLACEHOLDER VALUE...]: print the template with each placeholder
# replaced, refusing one that is left unfilled.
fill_template() {
    local text
    text=$(<"$1")
    shift
    while (($#)); do
        [[ $text == *"$1"* ]] || die "placeholder $1 is missing from the template"
        text=${text//"$1"/"$2"}
        shift 2
    done
    [[ $text != *__*_B64__* ]] || die "the template still has an unfilled placeholder"
    printf '%s\n' "$text"
}

# emit_secret JSON: pipe to `pachctl create secret -f /dev/stdin` (some pachctl 2.x releases read -f with a
# plain file read, so `-f -` would mean a file named '-'), or print it with --dry-run.
emit_secret() {
    if ((DRY_RUN)); then
        printf '%s\n' "$1"
        return
    fi
    command -v pachctl >/dev/null 2>&1 || die "pachctl is not on PATH (install it, or use --dry-run to print the secret)"
    printf '%s\n' "$1" | pachctl create secret -f /dev/stdin || die "pachctl create secret failed"
}
