#!/usr/bin/env bash
# tests/controlplane/smoke.sh DIR — checks a control plane started with
# `scripts/controlplane.sh start DIR`, through the REST API only (curl + jq):
#   * the admin token works (GET /api/v1/namespaces)
#   * the Job controller creates Pods for a Job (they stay Pending: no scheduler/kubelet)
#   * a "test kubelet" status patch (phase Succeeded) on an unscheduled pod completes
#     the Job, ttl-after-finished deletes it and the garbage collector removes its pod
#   * deleting a Job (propagationPolicy Background) garbage-collects its pending pods
#   * deleting an owner ConfigMap garbage-collects a dependent ConfigMap
#   * the serviceaccount-token controller fills a service-account-token Secret
#   * a pod bound (pods/binding) to a node with no Node object is deleted only gracefully
# Prints "N passed, M failed" and exits non-zero on any failure.
set -euo pipefail

DIR=${1:?usage: $0 DIR}
# shellcheck disable=SC1091
source "$DIR/env"
S=$SILVERLINE_CP_SERVER
NS="smoke-$(date +%s)-$RANDOM"
passed=0
failed=0

api() { # METHOD PATH [BODY]
	local args=(-sS --max-time 10 --cacert "$SILVERLINE_CP_CACERT" -H "Authorization: Bearer $SILVERLINE_CP_TOKEN"
		-H 'Content-Type: application/json' -X "$1" "$S$2")
	[[ $# -ge 3 ]] && args+=(-d "$3")
	curl "${args[@]}"
}
code() { # METHOD PATH -> HTTP status
	curl -sS --max-time 10 -o /dev/null -w '%{http_code}' --cacert "$SILVERLINE_CP_CACERT" \
		-H "Authorization: Bearer $SILVERLINE_CP_TOKEN" -X "$1" "$S$2"
}
ok() { echo "ok   - $*"; passed=$((passed + 1)); }
bad() { echo "FAIL - $*"; failed=$((failed + 1)); }
# eventually SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.25s.
eventually() {
	local limit=$1 what=$2
	shift 2
	local deadline=$((SECONDS + limit))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			bad "$what (not within ${limit}s)"
			return 1
		fi
		sleep 0.25
	done
	ok "$what"
}
job_pods() { api GET "/api/v1/namespaces/$NS/pods?labelSelector=batch.kubernetes.io/job-name=$1"; }
has_pods() { [[ "$(job_pods "$1" | jq '.items | length')" -ge 1 ]]; }
no_pods() { [[ "$(job_pods "$1" | jq '.items | length')" -eq 0 ]]; }
gone() { [[ "$(code GET "$1")" == 404 ]]; }
job_complete() {
	api GET "/apis/batch/v1/namespaces/$NS/jobs/$1" |
		jq -e '.status.conditions[]? | select(.type == "Complete" and .status == "True")'
}
sa_exists() { [[ "$(code GET "/api/v1/namespaces/$NS/serviceaccounts/default")" == 200 ]]; }
token_filled() { api GET "/api/v1/namespaces/$NS/secrets/tok" | jq -e '.data.token | length > 0'; }

job() { # NAME EXTRA_SPEC_JSON
	cat <<EOF
{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"$1"},
 "spec":{"backoffLimit":0 $2,
   "template":{"spec":{"restartPolicy":"Never","containers":[{"name":"c","image":"busybox"}]}}}}
EOF
}

[[ "$(code GET /api/v1/namespaces)" == 200 ]] && ok "GET /api/v1/namespaces with the admin token" ||
	bad "GET /api/v1/namespaces with the admin token"
[[ "$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$SILVERLINE_CP_CACERT" "$S/api/v1/namespaces")" == 403 ]] &&
	ok "anonymous request is forbidden" || bad "anonymous request is forbidden"

api POST /api/v1/namespaces "{\"metadata\":{\"name\":\"$NS\"}}" >/dev/null
eventually 30 "serviceaccount controller creates $NS/default" sa_exists

# Job -> Pod, test-kubelet status patch -> Complete -> TTL delete -> GC of the pod.
api POST "/apis/batch/v1/namespaces/$NS/jobs" "$(job done ',"ttlSecondsAfterFinished":1')" >/dev/null
if eventually 30 "job controller creates a pod for Job done" has_pods done; then
	pod="$(job_pods done | jq -r '.items[0].metadata.name')"
	job_pods done | jq -e '.items[0] | .status.phase == "Pending" and (.spec.nodeName // "") == ""
		and .metadata.ownerReferences[0].kind == "Job"' >/dev/null &&
		ok "pod $pod is Pending, unscheduled, owned by the Job" || bad "pod $pod state"
	now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	curl -sS --max-time 10 --cacert "$SILVERLINE_CP_CACERT" -H "Authorization: Bearer $SILVERLINE_CP_TOKEN" \
		-H 'Content-Type: application/merge-patch+json' -X PATCH \
		"$S/api/v1/namespaces/$NS/pods/$pod/status" \
		-d "{\"status\":{\"phase\":\"Succeeded\",\"containerStatuses\":[{\"name\":\"c\",\"image\":\"busybox\",\"imageID\":\"\",\"ready\":false,\"restartCount\":0,\"state\":{\"terminated\":{\"exitCode\":0,\"reason\":\"Completed\",\"startedAt\":\"$now\",\"finishedAt\":\"$now\"}}}]}}" |
		jq -e '.status.phase == "Succeeded"' >/dev/null && ok "status patch to Succeeded accepted" ||
		bad "status patch to Succeeded"
	eventually 30 "Job done becomes Complete" job_complete done
	eventually 30 "ttl-after-finished deletes Job done" gone "/apis/batch/v1/namespaces/$NS/jobs/done"
	eventually 30 "garbage collector deletes its pod" no_pods done
fi

# Deleting a Job with pending pods garbage-collects them (job-tracking finalizer removed).
api POST "/apis/batch/v1/namespaces/$NS/jobs" "$(job pending '')" >/dev/null
if eventually 30 "job controller creates a pod for Job pending" has_pods pending; then
	api DELETE "/apis/batch/v1/namespaces/$NS/jobs/pending" '{"propagationPolicy":"Background"}' >/dev/null
	eventually 30 "Job pending is deleted" gone "/apis/batch/v1/namespaces/$NS/jobs/pending"
	eventually 30 "its pending pod is garbage-collected" no_pods pending
fi

# Plain owner/dependent garbage collection.
owner_uid="$(api POST "/api/v1/namespaces/$NS/configmaps" '{"metadata":{"name":"owner"}}' | jq -r .metadata.uid)"
api POST "/api/v1/namespaces/$NS/configmaps" "{\"metadata\":{\"name\":\"dependent\",\"ownerReferences\":[{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"name\":\"owner\",\"uid\":\"$owner_uid\"}]}}" >/dev/null
api DELETE "/api/v1/namespaces/$NS/configmaps/owner" >/dev/null
eventually 30 "deleting owner ConfigMap garbage-collects the dependent" gone "/api/v1/namespaces/$NS/configmaps/dependent"

# Legacy service-account token secret.
api POST "/api/v1/namespaces/$NS/secrets" '{"metadata":{"name":"tok","annotations":{"kubernetes.io/service-account.name":"default"}},"type":"kubernetes.io/service-account-token"}' >/dev/null
eventually 30 "serviceaccount-token controller fills a token Secret" token_filled

# Binding to a node that has no Node object; graceful deletion then needs grace 0.
api POST "/api/v1/namespaces/$NS/pods" '{"metadata":{"name":"bound"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}' >/dev/null
api POST "/api/v1/namespaces/$NS/pods/bound/binding" '{"apiVersion":"v1","kind":"Binding","metadata":{"name":"bound"},"target":{"kind":"Node","name":"no-such-node"}}' >/dev/null
api GET "/api/v1/namespaces/$NS/pods/bound" | jq -e '.spec.nodeName == "no-such-node"' >/dev/null &&
	ok "pods/binding to a node without a Node object" || bad "pods/binding to a node without a Node object"
api DELETE "/api/v1/namespaces/$NS/pods/bound" >/dev/null
[[ "$(code GET "/api/v1/namespaces/$NS/pods/bound")" == 200 ]] &&
	ok "bound pod is only marked for graceful deletion" || bad "bound pod graceful deletion"
api DELETE "/api/v1/namespaces/$NS/pods/bound" '{"gracePeriodSeconds":0}' >/dev/null
eventually 10 "delete with gracePeriodSeconds=0 removes it" gone "/api/v1/namespaces/$NS/pods/bound"

# Namespace deletion (namespace controller).
api DELETE "/api/v1/namespaces/$NS" >/dev/null
eventually 60 "namespace $NS is deleted" gone "/api/v1/namespaces/$NS"

echo "$passed passed, $failed failed"
((failed == 0))
