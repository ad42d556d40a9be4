#!/usr/bin/env bash
# Runs the Autobahn|Testsuite against the wsrpc WebSocket examples:
#   server role: wstest fuzzingclient  -> target/release/examples/echo
#   client role: wstest fuzzingserver  <- target/release/examples/echo_client
#
# Usage: scripts/autobahn.sh [all|server|client]   (default: all)
#
# Environment:
#   WSRPC_AUTOBAHN_DIR          install dir for the testsuite (default ~/.cache/wsrpc/autobahn)
#   WSRPC_AUTOBAHN_SERVER_PORT  port of our echo server          (default 9001)
#   WSRPC_AUTOBAHN_CLIENT_PORT  port of the wstest fuzzingserver (default 9002)
#   WSRPC_AUTOBAHN_TIMEOUT      seconds allowed for each wstest / client run (default 1200)
#   WSRPC_PYTHON2               path to a python2.7 interpreter (default: found via pyenv)
#   WSRPC_AUTOBAHN_NO_BUILD     if set, skip `cargo build` and use the existing binaries
#
# Reports go to reports/servers and reports/clients (HTML index + JSON per case).
# Exits non-zero if any case is not OK/INFORMATIONAL, or if fewer cases ran than expected.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

ROLE=${1:-all}
case "$ROLE" in
    all | server | client) ;;
    *) echo "usage: $0 [all|server|client]" >&2; exit 2 ;;
esac

AB_DIR=${WSRPC_AUTOBAHN_DIR:-$HOME/.cache/wsrpc/autobahn}
SERVER_PORT=${WSRPC_AUTOBAHN_SERVER_PORT:-9001}
CLIENT_PORT=${WSRPC_AUTOBAHN_CLIENT_PORT:-9002}
RUN_TIMEOUT=${WSRPC_AUTOBAHN_TIMEOUT:-1200}
AGENT=wsrpc
REQUIREMENTS=$ROOT/scripts/autobahn/requirements.txt
REPORTS=$ROOT/reports
PREFIX=$AB_DIR/py27
SITE_PACKAGES=$PREFIX/lib/python2.7/site-packages
STAMP=$AB_DIR/py27.stamp

# Every section except 12.x/13.x: those test permessage-deflate (RFC 7692), which wsrpc does
# not implement (we never negotiate the extension, so they would only report UNIMPLEMENTED).
CASES='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]'
# 1.x 16 + 2.x 11 + 3.x 7 + 4.x 10 + 5.x 20 + 6.x 145 + 7.x 37 + 9.x 54 + 10.x 1
EXPECTED_CASES=301

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

PIDS=()
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
run_server_role() {
    local outdir=$REPORTS/servers rc=0
    step "Server role: starting echo server on port $SERVER_PORT"
    port_open "$SERVER_PORT" && die "port $SERVER_PORT is already in use (set WSRPC_AUTOBAHN_SERVER_PORT)"
    rm -rf "$outdir" && mkdir -p "$outdir"
    "$ECHO_SERVER" --port "$SERVER_PORT" >"$REPORTS/echo-server.log" 2>&1 &
    local server_pid=$!
    PIDS+=("$server_pid")
    wait_for_port "$SERVER_PORT" "$server_pid" "echo server" "$REPORTS/echo-server.log"

    cat >"$REPORTS/fuzzingclient.json" <<EOF
{
  "outdir": "$outdir",
  "servers": [{"agent": "$AGENT", "url": "ws://127.0.0.1:$SERVER_PORT"}],
  "cases": $CASES,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
    step "Server role: running wstest fuzzingclient (log: reports/fuzzingclient.log)"
    local start=$SECONDS
    bounded "$REPORTS/fuzzingclient.log" "${WSTEST[@]}" -m fuzzingclient -s "$REPORTS/fuzzingclient.json" || rc=$?
    echo "fuzzingclient finished in $((SECONDS - start)) s (exit $rc)"
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$REPORTS/fuzzingclient.log" >&2
        FAILED_STEPS+=("wstest fuzzingclient exited with $rc$([ "$rc" -eq 124 ] && echo ' (timeout)')")
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        FAILED_STEPS+=("echo server died during the run (log: reports/echo-server.log)")
    fi
    step "Server role: stopping echo server"
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}

# --- client role: our echo client -> wstest fuzzingserver -------------------------------------
run_client_role() {
    local outdir=$REPORTS/clients rc=0
    step "Client role: starting wstest fuzzingserver on port $CLIENT_PORT"
    port_open "$CLIENT_PORT" && die "port $CLIENT_PORT is already in use (set WSRPC_AUTOBAHN_CLIENT_PORT)"
    rm -rf "$outdir" && mkdir -p "$outdir"
    cat >"$REPORTS/fuzzingserver.json" <<EOF
{
  "url": "ws://127.0.0.1:$CLIENT_PORT",
  "outdir": "$outdir",
  "cases": $CASES,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
    # The fuzzingserver runs until killed; `timeout` bounds it in case we never get to that.
    timeout "$RUN_TIMEOUT" "${WSTEST[@]}" -m fuzzingserver -s "$REPORTS/fuzzingserver.json" \
        >"$REPORTS/fuzzingserver.log" 2>&1 &
    local fuzz_pid=$!
    PIDS+=("$fuzz_pid")
    wait_for_port "$CLIENT_PORT" "$fuzz_pid" "wstest fuzzingserver" "$REPORTS/fuzzingserver.log"

    step "Client role: running echo_client (log: reports/echo-client.log)"
    local start=$SECONDS
    bounded "$REPORTS/echo-client.log" "$ECHO_CLIENT" --url "ws://127.0.0.1:$CLIENT_PORT" --agent "$AGENT" || rc=$?
    echo "echo_client finished in $((SECONDS - start)) s (exit $rc)"
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$REPORTS/echo-client.log" >&2
        FAILED_STEPS+=("echo_client exited with $rc$([ "$rc" -eq 124 ] && echo ' (timeout)')")
    fi
    if ! kill -0 "$fuzz_pid" 2>/dev/null; then
        FAILED_STEPS+=("wstest fuzzingserver died during the run (log: reports/fuzzingserver.log)")
    fi
    step "Client role: stopping wstest fuzzingserver"
    kill "$fuzz_pid" 2>/dev/null || true
    wait "$fuzz_pid" 2>/dev/null || true
}

mkdir -p "$REPORTS"
TOTAL_START=$SECONDS
[ "$ROLE" = client ] || run_server_role
[ "$ROLE" = server ] || run_client_role

# --- summary ----------------------------------------------------------------------------------
step "Results (reports in reports/servers and reports/clients)"
SUMMARY_RC=0
ROLES=()
[ "$ROLE" = client ] || ROLES+=("server=$REPORTS/servers")
[ "$ROLE" = server ] || ROLES+=("client=$REPORTS/clients")
python3 - "$EXPECTED_CASES" "${ROLES[@]}" <<'PY' || SUMMARY_RC=$?
import collections, json, os, sys

ACCEPTED = {"OK", "INFORMATIONAL"}
expected = int(sys.argv[1])

def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))

def short(value, limit=240):
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

bad_run = False
for arg in sys.argv[2:]:
    role, outdir = arg.split("=", 1)
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
        print(f"{label}: {verdicts} (of {len(cases)})")
        if len(cases) < expected:
            print(f"  !! only {len(cases)} cases reported, expected {expected}: the run died early?")
            bad_run = True
        for case_id in sorted(cases, key=case_key):
            entry = cases[case_id]
            section = case_id.split(".")[0]
            ok = set(ACCEPTED)
            if section in ("12", "13"):
                ok.add("UNIMPLEMENTED")
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
