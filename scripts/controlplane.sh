#!/usr/bin/env bash
# scripts/controlplane.sh — a loopback-only test Kubernetes control plane
# (etcd + kube-apiserver + kube-controller-manager) built from the Go modules
# pinned in tests/controlplane/go.mod (no prebuilt downloads).
#
# Usage:
#   scripts/controlplane.sh build        build (or reuse) the binaries; prints the bin dir on stdout
#   scripts/controlplane.sh start DIR    start a control plane whose state lives in DIR
#   scripts/controlplane.sh stop DIR     stop it (TERM, then KILL); idempotent
#   scripts/controlplane.sh bindir       print the cached bin dir (no build)
#
# After `start DIR`:
#   DIR/kubeconfig   admin kubeconfig: server https://127.0.0.1:PORT, CA embedded
#                    (certificate-authority-data), bearer token of user "silverline-admin"
#                    in group system:masters (static --token-auth-file)
#   DIR/env          `source DIR/env` sets KUBECONFIG and SILVERLINE_CP_* (server, token,
#                    CA file, etcd URL)
#   DIR/pids         "name pid" lines;  DIR/{etcd,kube-apiserver,kube-controller-manager}.log
#   DIR/pki/         CA, apiserver serving cert, service-account signing key pair
#
# Environment:
#   SILVERLINE_CACHE            cache root (default ~/.cache/silverline); binaries land in
#                               $SILVERLINE_CACHE/controlplane-<hash>/bin, where <hash> covers
#                               go.mod, go.sum, cmd/etcd/main.go, the build recipe and `go version`
#   SILVERLINE_CP_CONTROLLERS   kube-controller-manager --controllers (default below)
#   SILVERLINE_CP_TIMEOUT       seconds to wait for each component (default 120)
#
# What this cluster has and has not (findings, k8s v1.37.2 / etcd v3.7.0):
#   * There is no scheduler and no kubelet, and no Node objects. Pods created by the
#     Job controller stay Pending with an empty spec.nodeName. A test kubelet can drive
#     such pods directly: PUT/PATCH .../pods/NAME/status with phase Running/Succeeded/Failed
#     works on an unscheduled pod, and the Job controller counts the result (verified:
#     a Job whose pod is patched to Succeeded becomes Complete, and ttl-after-finished then
#     deletes it and GC removes the pod).
#   * No fake Node object is needed. If a test kubelet wants spec.nodeName set, it can POST
#     a pods/binding to any name, Node object or not. BUT: deleting a pod that has a
#     nodeName and is not yet Succeeded/Failed only sets deletionTimestamp (graceful
#     deletion waits for a kubelet); the test kubelet must then finish it with a delete
#     using gracePeriodSeconds=0. Unbound pods, and bound pods whose phase is already
#     Succeeded/Failed, are removed at once (verified), so leaving pods unbound is
#     simplest. (The pod GC controller, which would delete pods bound to non-existent
#     Nodes, is deliberately not enabled; neither is node-lifecycle.)
#   * Pods are admitted only once their namespace's "default" ServiceAccount exists (the
#     ServiceAccount admission plugin; it retries for ~1-2s). The serviceaccount controller
#     creates it right after a namespace is created, so creating a pod straight after its
#     namespace works in practice (verified); `start` waits for default/default before it
#     reports ready. With SILVERLINE_CP_CONTROLLERS lacking serviceaccount-controller, pods
#     are rejected unless the test creates the ServiceAccount itself.
#   * The apiserver runs with --endpoint-reconciler-type=none (127.0.0.1 cannot be an
#     Endpoints address), so the "kubernetes" Service has no endpoints. There is no
#     kube-proxy/DNS: in-cluster service traffic does not work, admission webhooks must be
#     configured with a url (clientConfig.url), not a service.
#   * --token-auth-file still exists in v1.37; kube-controller-manager authenticates with
#     its own static token as system:kube-controller-manager and runs every controller
#     under its own service account (--use-service-account-credentials), so controllers
#     get the same RBAC as in a real cluster.
#   * etcd runs with --unsafe-no-fsync (data is throwaway) and plain http on 127.0.0.1.
#   * `stop` must stop etcd last: with etcd gone first, kube-apiserver's shutdown hangs
#     for minutes. Each component needs ~2-3s to exit on TERM.
#   * The first `build` compiles kubernetes from source: ~17 min on this 2-core machine
#     with a cold Go build cache (warm Go cache, new cache key: ~30s). Needs only the Go
#     module proxy.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD_DIR="$REPO_ROOT/tests/controlplane"
CACHE_ROOT="${SILVERLINE_CACHE:-$HOME/.cache/silverline}"
TIMEOUT="${SILVERLINE_CP_TIMEOUT:-120}"
DEFAULT_CONTROLLERS="job-controller,garbage-collector-controller,ttl-after-finished-controller,serviceaccount-token-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,namespace-controller"
CONTROLLERS="${SILVERLINE_CP_CONTROLLERS:-$DEFAULT_CONTROLLERS}"
SERVICE_CIDR="10.0.0.0/24"
SERVICE_IP="10.0.0.1"
BINARIES=(etcd kube-apiserver kube-controller-manager)
# Bump when the way the binaries are built changes, so the cache key changes.
BUILD_RECIPE="v2 CGO_ENABLED=0 -trimpath -buildvcs=false -ldflags=-s -w +version"

log() { echo "controlplane: $*" >&2; }
die() { log "error: $*"; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed"; }

go_env() {
	# Keep the build independent of whatever workspace/flags the caller has.
	env GOWORK=off GOFLAGS= CGO_ENABLED=0 "$@"
}

cache_dir() {
	need go
	need sha256sum
	local key
	key="$({
		cat "$MOD_DIR/go.mod" "$MOD_DIR/go.sum" "$MOD_DIR/cmd/etcd/main.go"
		echo "$BUILD_RECIPE"
		(cd "$MOD_DIR" && go_env go env GOVERSION GOOS GOARCH)
	} | sha256sum | cut -c1-16)"
	echo "$CACHE_ROOT/controlplane-$key"
}

have_binaries() {
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x "$1/$b" ]] || return 1
	done
}

cmd_build() {
	local dir bin
	dir="$(cache_dir)"
	bin="$dir/bin"
	if have_binaries "$bin"; then
		log "binaries cached in $bin"
		echo "$bin"
		return 0
	fi
	mkdir -p "$dir"
	need flock
	# Serialize concurrent builds of the same key.
	exec 9>"$dir/.lock"
	flock 9
	if have_binaries "$bin"; then
		log "binaries cached in $bin (built concurrently)"
		exec 9>&-
		echo "$bin"
		return 0
	fi
	local kver major minor tmp start
	kver="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$MOD_DIR/go.mod")"
	[[ "$kver" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "cannot read the k8s.io/kubernetes version from $MOD_DIR/go.mod"
	major="${BASH_REMATCH[1]}"
	minor="${BASH_REMATCH[2]}"
	local ldflags="-s -w"
	local pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
	done
	tmp="$dir/bin.tmp.$$"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	start=$SECONDS
	log "building etcd, kube-apiserver, kube-controller-manager ($kver) into $bin"
	log "(first build from source takes several minutes; later calls reuse the cache)"
	if ! (cd "$MOD_DIR" && go_env go build -trimpath -buildvcs=false -ldflags="$ldflags" -o "$tmp/" \
		./cmd/etcd \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager); then
		rm -rf "$tmp"
		die "go build failed"
	fi
	have_binaries "$tmp" || { rm -rf "$tmp"; die "go build produced no binaries in $tmp"; }
	rm -rf "$bin"
	mv "$tmp" "$bin"
	exec 9>&-
	log "built in $((SECONDS - start))s"
	echo "$bin"
}

# free_ports N: print N distinct free TCP ports on 127.0.0.1.
free_ports() {
	local n=$1
	if command -v python3 >/dev/null 2>&1; then
		python3 - "$n" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
		return
	fi
	# Fallback: random high ports that nothing on 127.0.0.1 answers on.
	local ports=() p
	while ((${#ports[@]} < n)); do
		p=$((20000 + RANDOM % 30000))
		[[ " ${ports[*]} " == *" $p "* ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			ports+=("$p")
		fi
	done
	echo "${ports[*]}"
}

# is_ours NAME PID: true if PID is alive and runs the binary NAME.
is_ours() {
	local name=$1 pid=$2 exe
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
	[[ -z "$exe" || "$(basename "${exe% (deleted)}")" == "$name" ]]
}

running_pids() { # DIR -> "name pid" lines of live processes
	local f="$1/pids" name pid
	[[ -f "$f" ]] || return 0
	while read -r name pid; do
		is_ours "$name" "$pid" && echo "$name $pid"
	done <"$f"
	return 0
}

# stop_group NAME:PID...: TERM them all, wait up to 10s, then KILL what is left.
stop_group() {
	local item name pid t alive
	for item in "$@"; do
		log "stopping ${item%%:*} (pid ${item#*:})"
		kill -TERM "${item#*:}" 2>/dev/null || true
	done
	for ((t = 0; t < 100; t++)); do # 10s
		alive=0
		for item in "$@"; do
			is_ours "${item%%:*}" "${item#*:}" && alive=1
		done
		((alive)) || return 0
		sleep 0.1
	done
	for item in "$@"; do
		name=${item%%:*}
		pid=${item#*:}
		if is_ours "$name" "$pid"; then
			log "$name did not exit on TERM; sending KILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	for ((t = 0; t < 50; t++)); do
		alive=0
		for item in "$@"; do
			is_ours "${item%%:*}" "${item#*:}" && alive=1
		done
		((alive)) || return 0
		sleep 0.1
	done
}

cmd_stop() {
	local dir=${1:?usage: $0 stop DIR}
	[[ -d "$dir" ]] || { log "nothing to stop in $dir"; return 0; }
	local lines
	lines="$(running_pids "$dir")"
	if [[ -z "$lines" ]]; then
		rm -f "$dir/pids"
		log "not running ($dir)"
		return 0
	fi
	# kube-controller-manager and kube-apiserver together, etcd last.
	local first=() last=() name pid
	while read -r name pid; do
		if [[ "$name" == etcd ]]; then last+=("$name:$pid"); else first+=("$name:$pid"); fi
	done <<<"$lines"
	((${#first[@]})) && stop_group "${first[@]}"
	((${#last[@]})) && stop_group "${last[@]}"
	rm -f "$dir/pids"
	log "stopped ($dir)"
}

fail_start() { # DIR LOGNAME MESSAGE
	local dir=$1 name=$2 msg=$3
	log "error: $msg"
	if [[ -f "$dir/$name.log" ]]; then
		echo "---- last 40 lines of $dir/$name.log ----" >&2
		tail -n 40 "$dir/$name.log" >&2
		echo "----" >&2
	fi
	cmd_stop "$dir" || true
	exit 1
}

# launch DIR NAME ARGS...: start a binary in its own session, log to DIR/NAME.log,
# record its pid in DIR/pids.
launch() {
	local dir=$1 name=$2
	shift 2
	setsid "$@" >>"$dir/$name.log" 2>&1 </dev/null &
	local pid=$!
	echo "$name $pid" >>"$dir/pids"
	LAUNCHED_PID=$pid
}

# wait_for DIR NAME PID DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
wait_for() {
	local dir=$1 name=$2 pid=$3 what=$4
	shift 4
	local deadline=$((SECONDS + TIMEOUT))
	while ! "$@" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || fail_start "$dir" "$name" "$name exited while waiting for $what"
		((SECONDS < deadline)) || fail_start "$dir" "$name" "timed out after ${TIMEOUT}s waiting for $what"
		sleep 0.2
	done
}

gen_pki() { # PKI_DIR
	local pki=$1
	[[ -f "$pki/ca.crt" && -f "$pki/apiserver.crt" && -f "$pki/sa.key" && -f "$pki/sa.pub" ]] && return 0
	mkdir -p "$pki"
	(
		cd "$pki"
		umask 077
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
		openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=silverline-test-ca" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out ca.crt 2>/dev/null
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out apiserver.key 2>/dev/null
		openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
		cat >apiserver.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:$SERVICE_IP
EOF
		openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
			-extfile apiserver.ext -out apiserver.crt 2>/dev/null
		# Service-account token signing key pair (apiserver issues, kcm signs legacy tokens).
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
		openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
		rm -f apiserver.csr apiserver.ext ca.srl
		chmod 644 ca.crt apiserver.crt sa.pub
	) || die "certificate generation with openssl failed"
}

cmd_start() {
	local dir=${1:?usage: $0 start DIR}
	need openssl
	need curl
	need base64
	mkdir -p "$dir"
	dir="$(cd "$dir" && pwd)"
	if [[ -n "$(running_pids "$dir")" ]]; then
		die "a control plane is already running in $dir (run: $0 stop $dir)"
	fi
	rm -f "$dir/pids"
	local bin
	bin="$(cmd_build)"

	local pki="$dir/pki"
	gen_pki "$pki"

	# Static tokens: admin (system:masters) and kube-controller-manager.
	local admin_token kcm_token
	if [[ -f "$dir/tokens.csv" ]]; then
		admin_token="$(awk -F, '$2 == "silverline-admin" { print $1 }' "$dir/tokens.csv")"
		kcm_token="$(awk -F, '$2 == "system:kube-controller-manager" { print $1 }' "$dir/tokens.csv")"
	fi
	if [[ -z "${admin_token:-}" || -z "${kcm_token:-}" ]]; then
		admin_token="$(openssl rand -hex 24)"
		kcm_token="$(openssl rand -hex 24)"
		(
			umask 077
			cat >"$dir/tokens.csv" <<EOF
$admin_token,silverline-admin,silverline-admin,"system:masters"
$kcm_token,system:kube-controller-manager,system:kube-controller-manager
EOF
		)
	fi

	local ports etcd_port peer_port api_port
	ports="$(free_ports 3)"
	read -r etcd_port peer_port api_port <<<"$ports"
	local server="https://127.0.0.1:$api_port"
	local etcd_url="http://127.0.0.1:$etcd_port"
	log "starting in $dir (etcd :$etcd_port, kube-apiserver :$api_port)"

	# ---- etcd ----
	launch "$dir" etcd "$bin/etcd" \
		--name=silverline \
		--data-dir="$dir/etcd-data" \
		--listen-client-urls="$etcd_url" \
		--advertise-client-urls="$etcd_url" \
		--listen-peer-urls="http://127.0.0.1:$peer_port" \
		--initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
		--initial-cluster="silverline=http://127.0.0.1:$peer_port" \
		--initial-cluster-state=new \
		--unsafe-no-fsync=true \
		--log-level=warn
	local etcd_pid=$LAUNCHED_PID
	wait_for "$dir" etcd "$etcd_pid" "etcd /health" \
		bash -c "curl -fsS --max-time 2 '$etcd_url/health' | grep -q '\"health\":\"true\"'"

	# ---- kube-apiserver ----
	launch "$dir" kube-apiserver "$bin/kube-apiserver" \
		--etcd-servers="$etcd_url" \
		--bind-address=127.0.0.1 \
		--advertise-address=127.0.0.1 \
		--endpoint-reconciler-type=none \
		--secure-port="$api_port" \
		--tls-cert-file="$pki/apiserver.crt" \
		--tls-private-key-file="$pki/apiserver.key" \
		--token-auth-file="$dir/tokens.csv" \
		--authorization-mode=Node,RBAC \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$pki/sa.pub" \
		--service-account-signing-key-file="$pki/sa.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--allow-privileged=true \
		--enable-priority-and-fairness=false \
		--profiling=false \
		--cert-dir="$dir/apiserver-certs"
	local api_pid=$LAUNCHED_PID
	local curl_api=(curl -fsS --max-time 3 --cacert "$pki/ca.crt" -H "Authorization: Bearer $admin_token")
	wait_for "$dir" kube-apiserver "$api_pid" "kube-apiserver /readyz" \
		bash -c "$(printf '%q ' "${curl_api[@]}") '$server/readyz' | grep -qx ok"

	# ---- kubeconfigs ----
	local ca_data
	ca_data="$(base64 -w0 <"$pki/ca.crt")"
	write_kubeconfig "$dir/kubeconfig" "$server" "$ca_data" silverline-admin "$admin_token"
	write_kubeconfig "$dir/kube-controller-manager.kubeconfig" "$server" "$ca_data" \
		system:kube-controller-manager "$kcm_token"
	cat >"$dir/env" <<EOF
export KUBECONFIG=$(printf %q "$dir/kubeconfig")
export SILVERLINE_CP_DIR=$(printf %q "$dir")
export SILVERLINE_CP_SERVER=$server
export SILVERLINE_CP_TOKEN=$admin_token
export SILVERLINE_CP_CACERT=$(printf %q "$pki/ca.crt")
export SILVERLINE_CP_ETCD=$etcd_url
EOF

	# ---- kube-controller-manager ----
	launch "$dir" kube-controller-manager "$bin/kube-controller-manager" \
		--kubeconfig="$dir/kube-controller-manager.kubeconfig" \
		--secure-port=0 \
		--leader-elect=false \
		--controllers="$CONTROLLERS" \
		--use-service-account-credentials=true \
		--service-account-private-key-file="$pki/sa.key" \
		--root-ca-file="$pki/ca.crt" \
		--profiling=false
	local kcm_pid=$LAUNCHED_PID
	if [[ ",$CONTROLLERS," == *",serviceaccount-controller,"* || ",$CONTROLLERS," == *",serviceaccount,"* ]]; then
		# The "default" ServiceAccount appears once kcm is up, authenticated and its
		# controllers run; pods cannot be admitted before it exists.
		wait_for "$dir" kube-controller-manager "$kcm_pid" "the default ServiceAccount (kube-controller-manager)" \
			"${curl_api[@]}" "$server/api/v1/namespaces/default/serviceaccounts/default"
	else
		sleep 2
		kill -0 "$kcm_pid" 2>/dev/null || fail_start "$dir" kube-controller-manager "kube-controller-manager exited"
	fi
	log "ready: source $dir/env  (KUBECONFIG=$dir/kubeconfig, server $server)"
}

write_kubeconfig() { # FILE SERVER CA_DATA USER TOKEN
	(
		umask 077
		cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: silverline-test
  cluster:
    server: $2
    certificate-authority-data: $3
users:
- name: $4
  user:
    token: $5
contexts:
- name: silverline-test
  context:
    cluster: silverline-test
    user: $4
    namespace: default
current-context: silverline-test
EOF
	)
}

case "${1:-}" in
build) cmd_build ;;
bindir) echo "$(cache_dir)/bin" ;;
start) cmd_start "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
*)
	sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
