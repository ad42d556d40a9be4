#!/usr/bin/env bash
# Runs the Autobahn|Testsuite against the wsrpc WebSocket examples:
#   server role: wstest fuzzingclient  -> target/release/examples/echo
#   client role: wstest fuzzingserver  <- target/release/examples/echo_client
# Cases 1-10 run against the default binaries, cases 12.x and 13.x (permessage-deflate)
# against the same binaries started with --compression (agent "wsrpc-deflate").
#
# Usage: scripts/autobahn.sh [all|server|client] [all|plain|deflate]   (defaults: all all)
#
# Environment:
#   WSRPC_AUTOBAHN_DIR          install dir for the testsuite (default ~/.cache/wsrpc/autobahn)
#   WSRPC_AUTOBAHN_SERVER_PORT  port of our echo server          (default 9001)
#   WSRPC_AUTOBAHN_CLIENT_PORT  port of the wstest fuzzingserver (default 9002)
#   WSRPC_AUTOBAHN_TIMEOUT      seconds allowed for each wstest / client run (default 2700)
#   WSRPC_PYTHON2               path to a python2.7 interpreter (default: found via pyenv)
#   WSRPC_AUTOBAHN_NO_BUILD     if set, skip `cargo build` and use the existing binaries
#   WSRPC_AUTOBAHN_SERIAL       if set, run the server and client roles one after the other
#                               (by default they run at the same time: each harness is one
#                               Python process, and the harnesses take most of the time)
#
# Reports go to reports/servers, reports/clients (cases 1-10) and reports/servers-deflate,
# reports/clients-deflate (12.x, 13.x): HTML index + JSON per case.
# Exits non-zero if any case is not OK/INFORMATIONAL, or if fewer cases ran than expected.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

ROLE=${1:-all}
SUITE=${2:-all}
case "$ROLE" in all | server | client) ;; *) echo "usage: $0 [all|server|client] [all|plain|deflate]" >&2; exit 2 ;; esac
case "$SUITE" in all | plain | deflate) ;; *) echo "usage: $0 [all|server|client] [all|plain|deflate]" >&2; exit 2 ;; esac

AB_DIR=${WSRPC_AUTOBAHN_DIR:-$HOME/.cache/wsrpc/autobahn}
SERVER_PORT=${WSRPC_AUTOBAHN_SERVER_PORT:-9001}
CLIENT_PORT=${WSRPC_AUTOBAHN_CLIENT_PORT:-9002}
RUN_TIMEOUT=${WSRPC_AUTOBAHN_TIMEOUT:-2700}
AGENT=wsrpc
DEFLATE_AGENT=wsrpc-deflate
REQUIREMENTS=$ROOT/scripts/autobahn/requirements.txt
REPORTS=$ROOT/reports
PREFIX=$AB_DIR/py27
SITE_PACKAGES=$PREFIX/lib/python2.7/site-packages
STAMP=$AB_DIR/py27.stamp

# Every section but permessage-deflate, against the default binaries.
CASES='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]'
# 1.x 16 + 2.x 11 + 3.x 7 + 4.x 10 + 5.x 20 + 6.x 145 + 7.x 37 + 9.x 54 + 10.x 1
EXPECTED_CASES=301
# permessage-deflate (RFC 7692), against the binaries started with --compression.
DEFLATE_CASES='["12.*", "13.*"]'
# 12.x 90 + 13.x 126
EXPECTED_DEFLATE_CASES=216

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

PIDS=()
SERVER_PORT_DEFLATE=$((SERVER_PORT + 2))
CLIENT_PORT_DEFLATE=$((CLIENT_PORT + 2))
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bounded LOG CMD...: runs CMD under `timeout`, output to LOG, and returns its exit status.
# It runs in the background and is waited for, so that INT/TERM reach our trap at once.
bounded() {
    local log=$1 pid
    shift
    timeout "$RUN_TIMEOUT" "$@" >"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid"
}

# --- python2.7 -------------------------------------------------------------------------------
is_py27() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1; }

find_python2() {
    local candidate root
    if [ -n "${WSRPC_PYTHON2:-}" ]; then
        is_py27 "$WSRPC_PYTHON2" || die "WSRPC_PYTHON2=$WSRPC_PYTHON2 is not a working python2.7"
        echo "$WSRPC_PYTHON2"
        return
    fi
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for candidate in "$root/versions/2.7.18/bin/python2.7" "$root"/versions/2.7.*/bin/python2.7; do
        if is_py27 "$candidate"; then echo "$candidate"; return; fi
    done
    # A pyenv shim for python2.7 fails unless 2.7 is selected, hence the version check.
    candidate=$(command -v python2.7 || true)
    if is_py27 "$candidate"; then echo "$candidate"; return; fi
    die "python2.7 not found (looked in $root/versions/2.7.*/bin and on PATH).
Autobahn|Testsuite needs CPython 2.7: install it with 'pyenv install 2.7.18', or set WSRPC_PYTHON2."
}

PY2=$(find_python2)

# --- install the testsuite (cached) -----------------------------------------------------------
install_key() {
    { sha256sum "$REQUIREMENTS" | cut -d' ' -f1; echo "$PY2"; "$PY2" -c 'import sys; print(sys.version)'; } \
        | sha256sum | cut -d' ' -f1
}
KEY=$(install_key)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -d "$SITE_PACKAGES/autobahntestsuite" ]; then
    step "Autobahn|Testsuite already installed in $PREFIX"
else
    step "Installing Autobahn|Testsuite into $PREFIX (python: $PY2)"
    "$PY2" -m pip --version >/dev/null 2>&1 || die "$PY2 has no pip (try: $PY2 -m ensurepip)"
    mkdir -p "$AB_DIR"
    rm -rf "$PREFIX" "$STAMP"
    # --ignore-installed: otherwise pip "upgrades" pyenv's own setuptools by removing it.
    if ! "$PY2" -m pip install --disable-pip-version-check --no-warn-script-location \
        --ignore-installed --prefix "$PREFIX" -r "$REQUIREMENTS" >"$AB_DIR/pip.log" 2>&1; then
        tail -n 30 "$AB_DIR/pip.log" >&2
        die "pip install failed (full log: $AB_DIR/pip.log)"
    fi
    echo "$KEY" >"$STAMP"
    echo "installed (log: $AB_DIR/pip.log)"
fi

# Plain PYTHONPATH breaks the zope namespace package (its .pth files are only read by
# site.addsitedir), so wstest is launched through this wrapper.
WSTEST=("$PY2" -c "import site, sys; site.addsitedir(sys.argv.pop(1)); from autobahntestsuite.wstest import run; sys.exit(run())" "$SITE_PACKAGES")

# --- build ------------------------------------------------------------------------------------
if [ -n "${WSRPC_AUTOBAHN_NO_BUILD:-}" ]; then
    step "Skipping the build (WSRPC_AUTOBAHN_NO_BUILD set): using the binaries in target/release/examples"
else
    step "Building the examples (release)"
    cargo build --release -p wsrpc-examples --examples || die "cargo build failed"
fi
ECHO_SERVER=$ROOT/target/release/examples/echo
ECHO_CLIENT=$ROOT/target/release/examples/echo_client
[ -x "$ECHO_SERVER" ] && [ -x "$ECHO_CLIENT" ] || die "missing $ECHO_SERVER or $ECHO_CLIENT"

# --- helpers ----------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for_port PORT PID WHAT LOG: waits up to 60 s for PORT to accept connections while PID lives.
wait_for_port() {
    local port=$1 pid=$2 what=$3 log=$4 i
    for ((i = 0; i < 600; i++)); do
        if port_open "$port"; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            die "$what exited before listening on port $port (log: $log)"
        fi
        sleep 0.1
    done
    die "$what did not listen on port $port within 60 s (log: $log)"
}

FAILED_STEPS=()

# --- server role: wstest fuzzingclient -> our echo server -------------------------------------
# run_server_role NAME PORT AGENT CASES [ECHO FLAGS...]: reports in reports/NAME.
run_server_role() {
    local name=$1 port=$2 agent=$3 cases=$4 rc=0
    shift 4
    local outdir=$REPORTS/$name
    step "Server role ($name): starting echo server $* on port $port"
    port_open "$port" && die "port $port is already in use (set WSRPC_AUTOBAHN_SERVER_PORT)"
    rm -rf "$outdir" && mkdir -p "$outdir"
    "$ECHO_SERVER" --port "$port" "$@" >"$REPORTS/echo-$name.log" 2>&1 &
    local server_pid=$!
    PIDS+=("$server_pid")
    wait_for_port "$port" "$server_pid" "echo server" "$REPORTS/echo-$name.log"

    cat >"$REPORTS/fuzzingclient-$name.json" <<EOF
{
  "outdir": "$outdir",
  "servers": [{"agent": "$agent", "url": "ws://127.0.0.1:$port"}],
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
    step "Server role ($name): running wstest fuzzingclient (log: reports/fuzzingclient-$name.log)"
    local start=$SECONDS
    bounded "$REPORTS/fuzzingclient-$name.log" "${WSTEST[@]}" -m fuzzingclient -s "$REPORTS/fuzzingclient-$name.json" || rc=$?
    echo "fuzzingclient ($name) finished in $((SECONDS - start)) s (exit $rc)"
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$REPORTS/fuzzingclient-$name.log" >&2
        echo "wstest fuzzingclient ($name) exited with $rc$([ "$rc" -eq 124 ] && echo ' (timeout)')" >>"$FAILURES"
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "echo server ($name) died during the run (log: reports/echo-$name.log)" >>"$FAILURES"
    fi
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}

# --- client role: our echo client -> wstest fuzzingserver -------------------------------------
# run_client_role NAME PORT AGENT CASES [ECHO_CLIENT FLAGS...]: reports in reports/NAME.
run_client_role() {
    local name=$1 port=$2 agent=$3 cases=$4 rc=0
    shift 4
    local outdir=$REPORTS/$name
    step "Client role ($name): starting wstest fuzzingserver on port $port"
    port_open "$port" && die "port $port is already in use (set WSRPC_AUTOBAHN_CLIENT_PORT)"
    rm -rf "$outdir" && mkdir -p "$outdir"
    cat >"$REPORTS/fuzzingserver-$name.json" <<EOF
{
  "url": "ws://127.0.0.1:$port",
  "outdir": "$outdir",
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
    # The fuzzingserver runs until killed; `timeout` bounds it in case we never get to that.
    timeout "$RUN_TIMEOUT" "${WSTEST[@]}" -m fuzzingserver -s "$REPORTS/fuzzingserver-$name.json" \
        >"$REPORTS/fuzzingserver-$name.log" 2>&1 &
    local fuzz_pid=$!
    PIDS+=("$fuzz_pid")
    wait_for_port "$port" "$fuzz_pid" "wstest fuzzingserver" "$REPORTS/fuzzingserver-$name.log"

    step "Client role ($name): running echo_client $* (log: reports/echo-client-$name.log)"
    local start=$SECONDS
    bounded "$REPORTS/echo-client-$name.log" "$ECHO_CLIENT" --url "ws://127.0.0.1:$port" --agent "$agent" "$@" || rc=$?
    echo "echo_client ($name) finished in $((SECONDS - start)) s (exit $rc)"
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$REPORTS/echo-client-$name.log" >&2
        echo "echo_client ($name) exited with $rc$([ "$rc" -eq 124 ] && echo ' (timeout)')" >>"$FAILURES"
    fi
    if ! kill -0 "$fuzz_pid" 2>/dev/null; then
        echo "wstest fuzzingserver ($name) died during the run (log: reports/fuzzingserver-$name.log)" >>"$FAILURES"
    fi
    kill "$fuzz_pid" 2>/dev/null || true
    wait "$fuzz_pid" 2>/dev/null || true
}

server_suites() {
    [ "$SUITE" = deflate ] || run_server_role servers "$SERVER_PORT" "$AGENT" "$CASES"
    [ "$SUITE" = plain ] || run_server_role servers-deflate "$SERVER_PORT_DEFLATE" "$DEFLATE_AGENT" "$DEFLATE_CASES" --compression
}

client_suites() {
    [ "$SUITE" = deflate ] || run_client_role clients "$CLIENT_PORT" "$AGENT" "$CASES"
    [ "$SUITE" = plain ] || run_client_role clients-deflate "$CLIENT_PORT_DEFLATE" "$DEFLATE_AGENT" "$DEFLATE_CASES" --compression
}

mkdir -p "$REPORTS"
FAILURES=$REPORTS/failures.txt
: >"$FAILURES"
TOTAL_START=$SECONDS
if [ "$ROLE" = all ] && [ -z "${WSRPC_AUTOBAHN_SERIAL:-}" ]; then
    # Both harnesses at once, one core each; their progress lines interleave.
    (
        trap cleanup EXIT
        trap 'exit 143' TERM
        server_suites
    ) &
    SERVER_JOB=$!
    PIDS+=("$SERVER_JOB")
    client_suites || true
    wait "$SERVER_JOB" || true
else
    [ "$ROLE" = client ] || server_suites
    [ "$ROLE" = server ] || client_suites
fi
mapfile -t FAILED_STEPS <"$FAILURES"

# --- summary ----------------------------------------------------------------------------------
step "Results (reports in reports/servers and reports/clients)"
SUMMARY_RC=0
ROLES=()
if [ "$SUITE" != deflate ]; then
    [ "$ROLE" = client ] || ROLES+=("server=$EXPECTED_CASES=$REPORTS/servers")
    [ "$ROLE" = server ] || ROLES+=("client=$EXPECTED_CASES=$REPORTS/clients")
fi
if [ "$SUITE" != plain ]; then
    [ "$ROLE" = client ] || ROLES+=("server-deflate=$EXPECTED_DEFLATE_CASES=$REPORTS/servers-deflate")
    [ "$ROLE" = server ] || ROLES+=("client-deflate=$EXPECTED_DEFLATE_CASES=$REPORTS/clients-deflate")
fi
python3 - "${ROLES[@]}" <<'PY' || SUMMARY_RC=$?
import collections, json, os, sys

ACCEPTED = {"OK", "INFORMATIONAL"}

def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))

def short(value, limit=240):
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

bad_run = False
for arg in sys.argv[1:]:
    role, expected, outdir = arg.split("=", 2)
    expected = int(expected)
    index_path = os.path.join(outdir, "index.json")
    if not os.path.exists(index_path):
        print(f"{role}: no report ({index_path} missing)")
        bad_run = True
        continue
    with open(index_path) as f:
        index = json.load(f)
    if not index:
        print(f"{role}: empty report")
        bad_run = True
    for agent, cases in sorted(index.items()):
        counts = collections.Counter(c["behavior"] for c in cases.values())
        verdicts = ", ".join(f"{b} {n}" for b, n in counts.most_common())
        label = role if len(index) == 1 else f"{role} [{agent}]"
        millis = sum(c.get("duration", 0) for c in cases.values())
        print(f"{label}: {verdicts} (of {len(cases)}; cases took {millis / 1000:.1f} s)")
        if len(cases) < expected:
            print(f"  !! only {len(cases)} cases reported, expected {expected}: the run died early?")
            bad_run = True
        for case_id in sorted(cases, key=case_key):
            entry = cases[case_id]
            ok = ACCEPTED
            if entry["behavior"] in ok and entry.get("behaviorClose", "OK") in ok:
                continue
            bad_run = True
            print(f"  {case_id}: behavior={entry['behavior']} behaviorClose={entry.get('behaviorClose')}")
            detail = {}
            report_file = entry.get("reportfile")
            if report_file:
                try:
                    with open(os.path.join(outdir, report_file)) as f:
                        detail = json.load(f)
                except (OSError, ValueError) as e:
                    print(f"    (detail unreadable: {e})")
            if detail.get("description"):
                print(f"    description: {short(detail['description'])}")
            if detail.get("expectation"):
                print(f"    expectation: {short(detail['expectation'])}")
            if entry["behavior"] not in ok:
                print(f"    result: {short(detail.get('result', ''))}")
                print(f"    expected events: {short(detail.get('expected'), 400)}")
                print(f"    received events: {short(detail.get('received'), 400)}")
            if entry.get("behaviorClose", "OK") not in ok:
                print(f"    resultClose: {short(detail.get('resultClose', ''))}")
                exp = detail.get("expectedClose") or {}
                print(
                    f"    close: expected code {exp.get('closeCode')} closedByMe={exp.get('closedByMe')} "
                    f"requireClean={exp.get('requireClean')}; got remoteCloseCode={detail.get('remoteCloseCode')} "
                    f"localCloseCode={detail.get('localCloseCode')} closedByMe={detail.get('closedByMe')} "
                    f"droppedByMe={detail.get('droppedByMe')} wasClean={detail.get('wasClean')}"
                    + (f" ({detail['wasNotCleanReason']})" if detail.get("wasNotCleanReason") else "")
                )
sys.exit(1 if bad_run else 0)
PY

for failure in "${FAILED_STEPS[@]}"; do
    echo "error: $failure" >&2
done
echo "total time: $((SECONDS - TOTAL_START)) s"
if [ "$SUMMARY_RC" -ne 0 ] || [ "${#FAILED_STEPS[@]}" -ne 0 ]; then
    echo "Autobahn: FAILED" >&2
    exit 1
fi
echo "Autobahn: all cases OK/INFORMATIONAL"
