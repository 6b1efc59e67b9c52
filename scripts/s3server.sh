#!/usr/bin/env bash
# scripts/s3server.sh — a loopback-only S3-compatible server (SeaweedFS) for the
# integration tests, built from the Go module pinned in tests/s3server/go.mod
# (no prebuilt downloads, no docker).
#
# Usage:
#   scripts/s3server.sh build       build (or reuse) weed; prints the binary path on stdout
#   scripts/s3server.sh start DIR   start a server whose data, config and log live in DIR
#   scripts/s3server.sh stop DIR    stop it (TERM, then KILL); idempotent
#   scripts/s3server.sh bin         print the cached binary path (no build)
#
# After `start DIR`:
#   DIR/env      `source DIR/env` sets, one `export` per line:
#                  AWS_ENDPOINT_URL=http://127.0.0.1:PORT  (path-style only, no virtual hosts)
#                  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   admin identity
#                                        (Admin, Read, Write, List, Tagging)
#                  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ALLOW_HTTP=true
#                  SILVERLINE_TEST_RO_ACCESS_KEY_ID / SILVERLINE_TEST_RO_SECRET_ACCESS_KEY
#                                        read-only identity (Read, List): writes get 403
#                  SILVERLINE_S3_MASTER_URL  SeaweedFS master (diagnostics only)
#   DIR/pids     "weed PID"
#   DIR/ports    "name port" lines for every listener (all on 127.0.0.1)
#   DIR/s3.json  the identities;  DIR/master.toml  volume growth settings
#   DIR/weed.log everything the server logs;  DIR/data/  volumes, master and filer metadata
#
# Environment:
#   SILVERLINE_CACHE        cache root (default ~/.cache/silverline); the binary lands in
#                           $SILVERLINE_CACHE/s3server-<sha256(go.mod+go.sum)[:16]>/bin/weed
#   SILVERLINE_S3_TIMEOUT   seconds to wait for the server to become ready (default 90)
#   SILVERLINE_S3_GOMEMLIMIT  soft Go heap limit for weed (default 192MiB; ~150 MB RSS)
#   SILVERLINE_S3_VOLUME_MB   size at which a volume is full and the next one is grown (default 64)
#
# Notes (SeaweedFS 4.53, github.com/seaweedfs/seaweedfs v0.0.0-20261109003541-7506e5f91cd6):
#   * Conditional writes are honoured, atomically: PUT If-None-Match: * on an existing key
#     and PUT with a stale If-Match ETag answer 412 PreconditionFailed; of N concurrent
#     conditional PUTs exactly one wins. If-Match on a missing key answers 404 NoSuchKey
#     (as AWS; object_store maps it to Precondition). CompleteMultipartUpload honours
#     If-None-Match: * too (object_store's S3CopyIfNotExists::Multipart works).
#     tests/s3server/check_conditional.py proves all this against a running server.
#   * Contended conditional writes are correct but slow: losers wait on a per-object lock
#     polled once a second, so 16 racing writers to one key take up to ~5 s.
#   * Path-style only (http://127.0.0.1:PORT/bucket/key); object_store's default.
#   * Buckets must be created first (CreateBucket): -s3.autoCreateBucket is off so a
#     missing bucket answers 404 NoSuchBucket as on AWS. DeleteBucket needs it empty.
#   * Every bucket is its own SeaweedFS collection with its own volumes; master.toml here
#     grows one volume per bucket (upstream: 7) and -volume.max=0 sizes the slot count
#     from free disk (64 MB volumes, sparse), so hundreds of buckets are fine.
#   * start waits for a signed ListBuckets, for the volume server to register and for a
#     probe bucket/object write+read+delete. That takes ~11 s on a fresh DIR: `weed server`'s
#     filer holds its announcement to the master ~8 s on a fresh store, and until the
#     master then publishes the lock ring every object write waits on its per-object lock.
#     The probe absorbs this, so tests always get a warm server. (`weed mini` skips that
#     hold but also runs an admin UI, WebDAV and maintenance workers; not used.)
#     Restarting on an existing DIR (~5 s) keeps the data but gets new ports and fresh
#     credentials.
#   * curl 7.88's --aws-sigv4 sends no x-amz-content-sha256; add
#     -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' when sending a body with --data-binary.
#   * The server is one process (`weed server -filer -s3`): master, volume, filer and S3.
#     Telemetry is off; every TCP listener is on 127.0.0.1; it also creates unix sockets
#     /tmp/seaweedfs-*-PORT.sock, which stop removes.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD_DIR="$REPO_ROOT/tests/s3server"
CACHE_ROOT="${SILVERLINE_CACHE:-$HOME/.cache/silverline}"
TIMEOUT="${SILVERLINE_S3_TIMEOUT:-90}"
REGION="us-east-1"

log() { echo "s3server: $*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed"; }

go_env() {
	# Keep the build independent of whatever workspace/flags the caller has;
	# CGO off gives a static binary and needs no C compiler.
	env GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 "$@"
}

weed_path() {
	local hash
	hash="$(cat "$MOD_DIR/go.mod" "$MOD_DIR/go.sum" | sha256sum | cut -c1-16)"
	echo "$CACHE_ROOT/s3server-$hash/bin/weed"
}

cmd_build() {
	local weed bindir tmp start
	weed="$(weed_path)"
	if [[ -x "$weed" ]]; then
		echo "$weed"
		return 0
	fi
	need go
	need flock
	bindir="$(dirname "$weed")"
	mkdir -p "$bindir"
	# Serialise concurrent builds of the same pin; the loser finds the binary done.
	exec 9>"$bindir/.build.lock"
	flock 9
	if [[ -x "$weed" ]]; then
		exec 9>&-
		echo "$weed"
		return 0
	fi
	log "building weed into $bindir (first time only; takes several minutes on 2 cores)"
	start=$SECONDS
	tmp="$bindir/weed.tmp.$$"
	if ! (cd "$MOD_DIR" && go_env go build -trimpath -ldflags='-s -w' -o "$tmp" github.com/seaweedfs/seaweedfs/weed); then
		rm -f "$tmp"
		die "go build failed"
	fi
	mv -f "$tmp" "$weed"
	exec 9>&-
	log "built $weed in $((SECONDS - start))s"
	echo "$weed"
}

# Print N distinct free TCP ports on 127.0.0.1 (held open together, then released).
free_ports() {
	python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

rand_str() { # rand_str LEN ALPHABET
	LC_ALL=C tr -dc "$2" </dev/urandom | head -c "$1" || true
}

pid_alive() { # pid_alive PID: true if PID runs a weed binary
	local pid="$1"
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
		tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'weed'
}

read_pid() { # read_pid DIR
	[[ -f "$1/pids" ]] && awk '$1=="weed"{print $2}' "$1/pids" || true
}

# Signed S3 request with curl; prints the HTTP status.
s3_status() { # s3_status URL KEY SECRET
	curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
		--aws-sigv4 "aws:amz:$REGION:s3" --user "$2:$3" "$1" 2>/dev/null || true
}

# Create a bucket, write, read back and delete an object, delete the bucket:
# the whole write path (filer, master volume growth, volume server) works.
probe_write() { # probe_write ENDPOINT KEY SECRET
	local b code ok=1
	local sig=(--aws-sigv4 "aws:amz:$REGION:s3" --user "$2:$3")
	b="$1/s3server-probe-$(rand_str 10 'a-z0-9')"
	code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "${sig[@]}" -X PUT "$b" || true)"
	[[ "$code" == 200 ]] || return 1
	# curl 7.88's --aws-sigv4 sends no x-amz-content-sha256, which S3 needs; say so.
	code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 45 "${sig[@]}" -X PUT \
		-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' --data-binary probe "$b/probe" || true)"
	if [[ "$code" == 200 ]] &&
		[[ "$(curl -s --max-time 10 "${sig[@]}" "$b/probe" || true)" == probe ]]; then
		ok=0
	else
		log "probe write answered $code"
	fi
	curl -s -o /dev/null --max-time 10 "${sig[@]}" -X DELETE "$b/probe" || true
	curl -s -o /dev/null --max-time 10 "${sig[@]}" -X DELETE "$b" || true
	return $ok
}

log_tail() {
	log "---- last lines of $1 ----"
	tail -n 60 "$1" >&2 2>/dev/null || true
	log "---- end of log ----"
}

cmd_start() {
	local dir="${1:-}"
	[[ -n "$dir" ]] || die "usage: $0 start DIR"
	need curl
	need python3
	need setsid
	mkdir -p "$dir"
	dir="$(cd "$dir" && pwd)"

	local oldpid
	oldpid="$(read_pid "$dir")"
	if pid_alive "$oldpid" && [[ -f "$dir/env" ]]; then
		log "already running (pid $oldpid); reusing $dir/env"
		return 0
	fi

	local weed
	weed="$(cmd_build)"

	local ak sk ro_ak ro_sk
	ak="SLADMIN$(rand_str 13 'A-Z0-9')"
	sk="$(rand_str 40 'A-Za-z0-9')"
	ro_ak="SLREAD$(rand_str 14 'A-Z0-9')"
	ro_sk="$(rand_str 40 'A-Za-z0-9')"

	mkdir -p "$dir/data"
	cat >"$dir/s3.json" <<EOF
{
  "identities": [
    {
      "name": "silverline-admin",
      "credentials": [{"accessKey": "$ak", "secretKey": "$sk"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    },
    {
      "name": "silverline-readonly",
      "credentials": [{"accessKey": "$ro_ak", "secretKey": "$ro_sk"}],
      "actions": ["Read", "List"]
    }
  ]
}
EOF
	chmod 600 "$dir/s3.json"
	# Found through -config_dir (and the working directory), before ~/.seaweedfs and /etc.
	cat >"$dir/master.toml" <<'EOF'
# Written by scripts/s3server.sh. Each S3 bucket is a collection with its own
# volumes; grow one volume at a time instead of upstream's 7.
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
# A restart on an existing DIR gets new ports, hence a new master state (the
# master keeps it in data/m<port>); the volume server then reports the old
# topology id and upstream freezes volume growth ("volume growth is frozen after
# master state loss"), so new buckets could not be written. Single node: off.
freeze_on_topology_mismatch = false
# After such a restart the new master also holds back volume id allocation for
# a warm-up window (~10 s) in case unknown volume servers report in; there is
# only ours, and start waits until it has reported its volumes.
allocation_deferral = "0s"
EOF

	local attempt ports pid s3_port master_port status deadline
	for attempt in 1 2 3; do
		# master, volume, filer, s3 (http + grpc each)
		read -r -a ports <<<"$(free_ports 8)"
		((${#ports[@]} == 8)) || die "could not pick free ports on 127.0.0.1"
		master_port=${ports[0]}
		s3_port=${ports[6]}
		{
			echo "master ${ports[0]}"
			echo "master.grpc ${ports[1]}"
			echo "volume ${ports[2]}"
			echo "volume.grpc ${ports[3]}"
			echo "filer ${ports[4]}"
			echo "filer.grpc ${ports[5]}"
			echo "s3 ${ports[6]}"
			echo "s3.grpc ${ports[7]}"
		} >"$dir/ports"

		: >"$dir/weed.log"
		(
			cd "$dir"
			# setsid: the server outlives this script and is not hit by the caller's ^C.
			# Soft heap cap: Go collects harder instead of growing to ~400 MB RSS.
			GOMEMLIMIT="${SILVERLINE_S3_GOMEMLIMIT:-192MiB}" exec setsid "$weed" -logtostderr=true -config_dir="$dir" server \
				-ip=127.0.0.1 -ip.bind=127.0.0.1 \
				-dir="$dir/data" \
				-master.port="${ports[0]}" -master.port.grpc="${ports[1]}" \
				-master.volumeSizeLimitMB="${SILVERLINE_S3_VOLUME_MB:-64}" -master.telemetry=false \
				-master.defaultReplication=000 \
				-volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
				-volume.max=0 -volume.preStopSeconds=0 -volume.minFreeSpace=1GiB \
				-filer -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
				-s3 -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" \
				-s3.port.iceberg=0 -s3.port.lance=0 \
				-s3.config="$dir/s3.json" -s3.autoCreateBucket=false
		) </dev/null >>"$dir/weed.log" 2>&1 &
		pid=$!
		echo "weed $pid" >"$dir/pids"

		deadline=$((SECONDS + TIMEOUT))
		status=""
		while ((SECONDS < deadline)); do
			if ! kill -0 "$pid" 2>/dev/null; then
				status="died"
				break
			fi
			# Ready = S3 answers a signed ListBuckets (needs the filer), the master
			# sees the volume server, and then a probe object write round-trips.
			if [[ "$(s3_status "http://127.0.0.1:$s3_port/" "$ak" "$sk")" == 200 ]] &&
				curl -s --max-time 5 "http://127.0.0.1:$master_port/dir/status" 2>/dev/null |
				grep -q "\"Url\":\"127.0.0.1:${ports[2]}\""; then
				if probe_write "http://127.0.0.1:$s3_port" "$ak" "$sk"; then
					status="ready"
					break
				fi
			fi
			sleep 0.3
		done

		if [[ "$status" == "ready" ]]; then
			break
		fi
		if [[ "$status" == "died" ]] && grep -q 'address already in use' "$dir/weed.log" && ((attempt < 3)); then
			log "a chosen port was taken meanwhile; retrying with new ports"
			continue
		fi
		[[ "$status" == "died" ]] && log "weed exited during startup" || log "not ready after ${TIMEOUT}s"
		log_tail "$dir/weed.log"
		cmd_stop "$dir" || true
		exit 1
	done

	cat >"$dir/env.tmp" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=$ak
export AWS_SECRET_ACCESS_KEY=$sk
export AWS_REGION=$REGION
export AWS_DEFAULT_REGION=$REGION
export AWS_ALLOW_HTTP=true
export SILVERLINE_TEST_RO_ACCESS_KEY_ID=$ro_ak
export SILVERLINE_TEST_RO_SECRET_ACCESS_KEY=$ro_sk
export SILVERLINE_S3_MASTER_URL=http://127.0.0.1:$master_port
EOF
	chmod 600 "$dir/env.tmp"
	mv -f "$dir/env.tmp" "$dir/env"
	log "ready: S3 at http://127.0.0.1:$s3_port (pid $pid); source $dir/env"
}

cmd_stop() {
	local dir="${1:-}"
	[[ -n "$dir" ]] || die "usage: $0 stop DIR"
	[[ -d "$dir" ]] || return 0
	local pid i
	pid="$(read_pid "$dir")"
	if pid_alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 30; i++)); do
			pid_alive "$pid" || break
			sleep 0.1
		done
		if pid_alive "$pid"; then
			# Upstream's graceful shutdown often hangs in Filer.Shutdown (waiting on its
			# metadata log buffer) after the volume server has closed its volumes; the
			# filer's leveldb journal makes a KILL at that point safe for test data.
			log "weed (pid $pid) still running 3s after TERM; killing"
			kill -KILL "$pid" 2>/dev/null || true
			for ((i = 0; i < 50; i++)); do
				pid_alive "$pid" || break
				sleep 0.1
			done
		fi
		log "stopped weed (pid $pid)"
	fi
	# Unix sockets the server creates in /tmp, named by port.
	if [[ -f "$dir/ports" ]]; then
		local name port
		while read -r name port; do
			rm -f /tmp/seaweedfs-*-"$port".sock 2>/dev/null || true
		done <"$dir/ports"
	fi
	rm -f "$dir/pids" "$dir/env"
}

case "${1:-}" in
build) cmd_build ;;
bin) weed_path ;;
start) cmd_start "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
*)
	echo "usage: $0 {build|start DIR|stop DIR|bin}" >&2
	exit 2
	;;
esac
