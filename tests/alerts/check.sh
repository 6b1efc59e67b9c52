#!/usr/bin/env bash
# tests/alerts/check.sh — checks Silverline's Prometheus rules with promtool (built once from its Go module pinned in
# tests/tools/promtool): `promtool check rules` on the plain rule file and on the chart's PrometheusRule (rendered
# by helm: SILVERLINE_HELM, else the one pinned in tests/tools/helm), which must hold the same rules, then
# `promtool test rules` on every tests/alerts/*.test.yaml (each alert fires in one case and stays silent in
# another). Prints the promtool binary's path on stdout last, for SILVERLINE_PROMTOOL. Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../.."

rules=charts/silverline/files/prometheus-rules.yaml
promtool="$(scripts/gotool.sh path promtool)"

# `promtool check rules` ends with "SUCCESS: N rules found"; the count of the file and of the chart must agree.
count_rules() { "$promtool" check rules "$1" | sed -n 's/^  SUCCESS: \([0-9]*\) rules found$/\1/p'; }
echo "promtool check rules $rules" >&2
"$promtool" check rules "$rules" >&2
expected="$(count_rules "$rules")"
[[ -n "$expected" && "$expected" -gt 0 ]] || { echo "alerts: no rule found in $rules" >&2; exit 1; }

helm="${SILVERLINE_HELM:-}"
[[ -n "$helm" || ! -f tests/tools/helm/go.mod ]] || helm="$(scripts/gotool.sh path helm)"
if [[ -n "$helm" ]]; then
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/silverline-alerts.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # The PrometheusRule's spec is a rule file: keep what follows `spec:`, one indentation level less.
  "$helm" template silverline charts/silverline --namespace silverline-system \
    --set prometheusRule.enabled=true --set prometheusRule.labels.release=kube-prometheus-stack \
    --show-only templates/prometheusrule.yaml >"$tmp/prometheusrule.yaml"
  grep -q '^kind: PrometheusRule$' "$tmp/prometheusrule.yaml" ||
    { echo "alerts: the chart rendered no PrometheusRule with prometheusRule.enabled=true" >&2; exit 1; }
  grep -q '^    release: kube-prometheus-stack$' "$tmp/prometheusrule.yaml" ||
    { echo "alerts: the PrometheusRule does not carry prometheusRule.labels" >&2; exit 1; }
  sed -n '/^spec:$/,$p' "$tmp/prometheusrule.yaml" | sed '1d; s/^  //' >"$tmp/rendered-rules.yaml"
  echo "promtool check rules (the chart's PrometheusRule)" >&2
  rendered="$(count_rules "$tmp/rendered-rules.yaml")"
  [[ "$rendered" == "$expected" ]] ||
    { echo "alerts: the chart's PrometheusRule holds ${rendered:-no} rules, $rules $expected" >&2; exit 1; }
  if "$helm" template silverline charts/silverline --show-only templates/prometheusrule.yaml >/dev/null 2>&1; then
    echo "alerts: the chart renders a PrometheusRule although prometheusRule.enabled is false by default" >&2
    exit 1
  fi
else
  echo "alerts: no helm pinned (tests/tools/helm): the chart's PrometheusRule is not checked" >&2
fi

# Each test file orders every group of the rule file, the recording rules first: promtool evaluates the groups of
# one instant in random order otherwise, and an alert on a recording rule then passes or fails by chance.
groups="[$(sed -n 's/^  - name: //p' "$rules" | paste -sd, - | sed 's/,/, /g')]"
[[ "$(sed -n 's/^  - name: //p' "$rules" | head -1)" == silverline.recording ]] ||
  { echo "alerts: the first group of $rules must be silverline.recording (the recording rules)" >&2; exit 1; }
for test_file in tests/alerts/*.test.yaml; do
  grep -qxF "group_eval_order: $groups" "$test_file" || {
    echo "alerts: $test_file must say 'group_eval_order: $groups' (every group of $rules, in its order)" >&2
    exit 1
  }
done

echo "promtool test rules tests/alerts/*.test.yaml" >&2
"$promtool" test rules tests/alerts/*.test.yaml >&2
echo "$promtool"
