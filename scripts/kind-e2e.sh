#!/usr/bin/env bash
# scripts/kind-e2e.sh — Silverline end to end on a kind cluster (kind-config.yaml): a local S3 lake, the chart
# installed with locally built images, the transactions Dataset and one EtlRun of the bundled sample, the
# Promotion the operator requests on success approved by a second person (the chart's four-eyes policy refuses
# a forged approval first), and the lake's `_LATEST.json` checked. CI's end-to-end job runs it; so can you
# (docs/operations.md, "Run it on kind").
#
# Needs: a kind cluster whose current kubectl context it is, with the images loaded:
#   silverline-operator:$TAG, silverline-worker:$TAG (docker/Dockerfile), silverline-e2e-s3:local
#   (docker/s3server.Dockerfile); kubectl, helm (HELM=path, default `helm`), the aws CLI, jq, openssl.
# Environment: SILVERLINE_E2E_TAG (default e2e), SILVERLINE_E2E_TIMEOUT (seconds per wait, default 600).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${SILVERLINE_E2E_TAG:-e2e}"
TIMEOUT="${SILVERLINE_E2E_TIMEOUT:-600}"
HELM="${HELM:-helm}"
RELEASE=silverline
OPERATOR_NS=silverline-system
ETL_NS=etl
LAKE_NS=silverline-lake
APPROVER=jane.doe@example.com
RUN=tx-first-load
PROMOTION="$RUN-promo"
S3_LOCAL_PORT=18333
export AWS_EC2_METADATA_DISABLED=true AWS_DEFAULT_REGION=us-east-1

step() { printf '\n==> %s\n' "$*" >&2; }
diagnose() {
  set +e
  echo "---- diagnostics ----" >&2
  kubectl get pods -A -o wide >&2
  kubectl -n "$ETL_NS" get etl,promo,jobs -o yaml >&2
  kubectl -n "$ETL_NS" get events --sort-by=.lastTimestamp >&2
  kubectl -n "$OPERATOR_NS" logs -l app.kubernetes.io/name=silverline-operator --tail=200 --prefix >&2
  kubectl -n "$LAKE_NS" logs deploy/s3 --tail=50 >&2
}
die() { echo "kind-e2e: error: $*" >&2; diagnose; exit 1; }
for tool in kubectl "$HELM" aws jq openssl; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required"
done

# phase KIND NAME: the object's status.phase, empty when it has none yet.
phase() { kubectl -n "$ETL_NS" get "$1" "$2" -o jsonpath='{.status.phase}' 2>/dev/null || true; }
# await_phase KIND NAME WANT [FAILED_PHASE...]: waits for WANT; a failed phase ends the wait at once.
await_phase() {
  local kind="$1" name="$2" want="$3" deadline=$((SECONDS + TIMEOUT)) now
  shift 3
  while ((SECONDS < deadline)); do
    now="$(phase "$kind" "$name")"
    [[ "$now" == "$want" ]] && { echo "$kind/$name is $want" >&2; return 0; }
    for failed in "$@"; do
      [[ "$now" == "$failed" ]] && die "$kind/$name ended $now, expected $want"
    done
    sleep 3
  done
  die "$kind/$name is '${now:-no phase}' after ${TIMEOUT}s, expected $want"
}

step "local S3 (SeaweedFS) with generated identities: a writer for workers, a reader for the operator"
writer_key="SLW$(openssl rand -hex 8 | tr a-f A-F)" writer_secret="$(openssl rand -hex 20)"
reader_key="SLR$(openssl rand -hex 8 | tr a-f A-F)" reader_secret="$(openssl rand -hex 20)"
kubectl apply -f examples/kind/s3.yaml
jq -n --arg wk "$writer_key" --arg ws "$writer_secret" --arg rk "$reader_key" --arg rs "$reader_secret" '{identities: [
    {name: "lake-writer", credentials: [{accessKey: $wk, secretKey: $ws}], actions: ["Admin", "Read", "Write", "List", "Tagging"]},
    {name: "lake-reader", credentials: [{accessKey: $rk, secretKey: $rs}], actions: ["Read", "List"]}]}' |
  kubectl -n "$LAKE_NS" create secret generic s3-identities --from-file=s3.json=/dev/stdin --dry-run=client -o yaml |
  kubectl apply -f -
kubectl -n "$LAKE_NS" rollout status deploy/s3 --timeout="${TIMEOUT}s"
kubectl -n "$LAKE_NS" port-forward svc/s3 "$S3_LOCAL_PORT:8333" >/dev/null 2>&1 &
port_forward=$!
trap 'kill "$port_forward" 2>/dev/null || true' EXIT
s3() { AWS_ACCESS_KEY_ID="$writer_key" AWS_SECRET_ACCESS_KEY="$writer_secret" aws --endpoint-url "http://127.0.0.1:$S3_LOCAL_PORT" s3 "$@"; }
deadline=$((SECONDS + TIMEOUT))
until s3 ls >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "the local S3 did not answer through the port-forward within ${TIMEOUT}s"
  sleep 2
done
# The S3 gateway answers before the volume server takes writes: retry the first bucket until it is made.
until s3 mb s3://silverline-bronze >/dev/null 2>&1 || s3 ls s3://silverline-bronze >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "could not create bucket silverline-bronze within ${TIMEOUT}s"
  sleep 2
done
s3 mb s3://silverline-lake
s3 cp examples/data/transactions.csv s3://silverline-bronze/transactions/transactions.csv

step "namespaces and credentials: workers write with lake-writer (etl), the operator reads with lake-reader"
kubectl create namespace "$ETL_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl create namespace "$OPERATOR_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ETL_NS" create secret generic lake-writer --from-literal=AWS_ACCESS_KEY_ID="$writer_key" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$writer_secret" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$OPERATOR_NS" create secret generic lake-reader --from-literal=AWS_ACCESS_KEY_ID="$reader_key" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$reader_secret" --dry-run=client -o yaml | kubectl apply -f -

step "helm install $RELEASE charts/silverline (images :$TAG, loaded into kind)"
values="$(mktemp)"
trap 'kill "$port_forward" 2>/dev/null || true; rm -f "$values"' EXIT
cat >"$values" <<YAML
image:
  operator: {repository: silverline-operator, tag: "$TAG", pullPolicy: Never}
  worker: {repository: silverline-worker, tag: "$TAG", pullPolicy: Never}
workerServiceAccount:
  namespaces: [$ETL_NS]
operator:
  allowedLakes:
    - {namespace: $ETL_NS, lake: "s3://silverline-lake"}
  allowedEndpoints: ["http://s3.$LAKE_NS.svc:8333"]
  env:
    - {name: AWS_ENDPOINT_URL, value: "http://s3.$LAKE_NS.svc:8333"}
    - {name: AWS_REGION, value: us-east-1}
    - {name: AWS_EC2_METADATA_DISABLED, value: "true"}
    - name: AWS_ACCESS_KEY_ID
      valueFrom: {secretKeyRef: {name: lake-reader, key: AWS_ACCESS_KEY_ID}}
    - name: AWS_SECRET_ACCESS_KEY
      valueFrom: {secretKeyRef: {name: lake-reader, key: AWS_SECRET_ACCESS_KEY}}
YAML
"$HELM" upgrade --install "$RELEASE" charts/silverline --namespace "$OPERATOR_NS" --values "$values" \
  --wait --timeout "${TIMEOUT}s"

step "the Dataset and the EtlRun $RUN"
kubectl apply -f examples/kind/approver.yaml
kubectl apply -f examples/kind/transactions.yaml
await_phase etl "$RUN" Succeeded Failed QualityGateFailed
kubectl -n "$ETL_NS" get etl "$RUN"

step "the Promotion $PROMOTION awaits approval; a forged approval is refused, the approver's is accepted"
await_phase promo "$PROMOTION" AwaitingApproval Failed Rejected
admin="$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')"
if refusal="$(kubectl -n "$ETL_NS" annotate promo "$PROMOTION" "etl.silverline.dev/approved-by=$APPROVER" 2>&1)"; then
  die "$admin set approved-by=$APPROVER (someone else's name) and the admission policy let it through"
fi
[[ "$refusal" == *"own name"* ]] || die "the forged approval failed, but not for the policy's reason: $refusal"
echo "refused as it should be: $refusal" >&2
kubectl --as "$APPROVER" -n "$ETL_NS" annotate promo "$PROMOTION" "etl.silverline.dev/approved-by=$APPROVER" \
  "etl.silverline.dev/approval-reason=kind end-to-end: counts checked"
await_phase promo "$PROMOTION" Promoted Failed Rejected
kubectl -n "$ETL_NS" get promo "$PROMOTION"

step "_LATEST.json names version 1, this Promotion, the run and the approver"
latest="$(s3 cp s3://silverline-lake/silver/transactions/_LATEST.json -)" || die "no _LATEST.json in the lake"
echo "$latest" | jq . >&2
run_id="$(kubectl -n "$ETL_NS" get etl "$RUN" -o jsonpath='{.status.runId}')"
uid="$(kubectl -n "$ETL_NS" get promo "$PROMOTION" -o jsonpath='{.metadata.uid}')"
echo "$latest" | jq -e --arg run "$run_id" --arg uid "$uid" --arg by "$APPROVER" --arg name "$PROMOTION" '
  .version == 1 and .dataset == "transactions" and .approved_by == $by
  and .promotion.name == $name and .promotion.uid == $uid and (.runs | index($run) != null)' >/dev/null ||
  die "_LATEST.json does not record version 1 of run $run_id approved by $APPROVER for Promotion $PROMOTION ($uid)"
echo "kind-e2e: passed" >&2
