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

# Messages name a variable and say what is wrong with its value, never quoting it: a variable meant to hold a
# path may hold the secret itself (a key pasted instead of its file name).
NOT_SHOWN="(the value is not shown)"

# is_path VALUE: VALUE can be a file name at all (one line, within PATH_MAX), so testing it as one is meaningful.
is_path() {
    [[ ${#1} -le 4096 && $1 != *$'\n'* ]]
}

# require_file NAME: the variable NAME holds the path of a readable, non-empty file.
require_file() {
    local path=${!1}
    is_path "$path" && [[ -e $path ]] || die "$1 names a file that does not exist $NOT_SHOWN"
    [[ -f $path && -r $path ]] || die "$1 names something that is not a readable file $NOT_SHOWN"
    [[ -s $path ]] || die "$1 names an empty file $NOT_SHOWN"
}

# pem_text VALUE: print VALUE as PEM text, turning escaped newlines (a secret pasted with literal \n) into real ones.
pem_text() {
    local text=$1
    while [[ $text == *$'\n' ]]; do text=${text%$'\n'}; done
    if [[ $text != *$'\n'* && $text == *'\n'* ]]; then
        text=${text//'\r\n'/$'\n'}
        text=${text//'\n'/$'\n'}
    fi
    printf '%s\n' "$text"
}

# require_pem NAME: NAME holds what libpq reads: the path of a PEM file, PEM content, or base64 of PEM content.
require_pem() {
    local value=${!1}
    if [[ $value == *-----BEGIN* ]]; then
        [[ $value == *-----END* ]] || die "$1 holds PEM content without its '-----END ...-----' line $NOT_SHOWN"
    elif [[ $value == *-----END* ]]; then
        die "$1 holds PEM content whose '-----BEGIN ...-----' line is missing $NOT_SHOWN"
    elif is_path "$value" && [[ -e $value ]]; then
        require_file "$1"
        grep -q -e '-----BEGIN ' -- "$value" || die "$1 names a file that is not PEM (no '-----BEGIN' line) $NOT_SHOWN"
    elif printf '%s' "$value" | base64 -d 2>/dev/null | grep -q -e '-----BEGIN '; then
        :
    elif [[ $value == [/~.]* ]] && is_path "$value"; then
        die "$1 names a file that does not exist $NOT_SHOWN"
    else
        die "$1 is neither the path of a PEM file nor PEM or base64 PEM content $NOT_SHOWN"
    fi
}

# b64_pem NAME: base64 (one line) of the PEM that NAME holds, once require_pem accepted it.
b64_pem() {
    local value=${!1}
    if [[ $value == *-----BEGIN* ]]; then
        pem_text "$value" | b64_stdin
    elif is_path "$value" && [[ -f $value ]]; then
        b64_file "$value"
    else
        printf '%s' "$value" | base64 -d | b64_stdin
    fi
}

# b64_file PATH: base64 of the file's content on one line.
b64_file() {
    base64 <"$1" | tr -d '\n'
}

# b64_stdin: base64 of stdin on one line (callers pipe a builtin printf into it).
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
