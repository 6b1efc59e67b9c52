//! The Helm chart charts/silverline: its CRDs are crdgen's, `helm lint` passes, `helm template` renders what the
//! issue asks for (least-privilege RBAC, cluster-wide or per namespace; a restricted, highly available operator;
//! the optional NetworkPolicy and ServiceMonitor; the workers' ServiceAccounts), the values schema refuses typos
//! and wrong types, the apiserver accepts every rendered object (server-side dry run), operator/deploy/operator.yaml
//! is the chart's rendering, and an installed release runs an EtlRun to Succeeded as the chart's operator identity.
//!
//! Helm comes from `SILVERLINE_HELM` (scripts/test.sh builds it from its pinned Go module); the control plane from
//! `KUBECONFIG`. Without them these tests are ignored, with a hint.

mod support;

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::{ApiResource, Discovery, Scope};
use serde_json::Value;
use silverline_crds::EtlRunPhase;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::helm::{self, RELEASE_NAMESPACE, of_kind};
use support::{Scenario, TestNamespace, create_dataset, create_run, finished, transactions_dataset};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Values that differ from every default the tests check: namespace-scoped, NetworkPolicy and ServiceMonitor on,
/// the workers' ServiceAccount annotated for IRSA.
const SCOPED: &[&str] = &[
    "--set",
    "watchNamespaces={etl-a,etl-b}",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "serviceMonitor.labels.release=prometheus",
    "--set-string",
    "workerServiceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/lake-writer",
    "--set",
    "image.operator.tag=1.2.3",
    "--set",
    "operator.reconcileConcurrency=64",
    "--set",
    "operator.burstLaunchesPerSecond=0",
    "--set",
    "operator.apiTimeoutSeconds=15",
];

fn render(args: &[&str]) -> Vec<Value> {
    helm::template("silverline", RELEASE_NAMESPACE, args).unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind} in the rendering, found {}", found.len());
    found[0]
}

fn names(objects: &[&Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
            format!("{ns}/{}", o["metadata"]["name"].as_str().unwrap_or(""))
        })
        .collect()
}

fn operator_container(objects: &[Value]) -> &Value {
    let deployment = one(objects, "Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "the operator's pod has one container");
    &containers[0]
}

fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("env name").to_owned(), e.clone()))
        .collect()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env_of(container).into_iter().find(|(n, _)| n == name).and_then(|(_, e)| e["value"].as_str().map(str::to_owned))
}

/// Every rule of every Role and ClusterRole: no Secrets, no wildcards, nothing but what the operator uses — each
/// resource with only the verbs its code calls (the control-plane tests run the operator with these rules alone,
/// so a verb missing here fails them; one too many fails this).
fn assert_least_privilege(objects: &[Value]) {
    let allowed: std::collections::BTreeMap<(&str, &str), &[&str]> = [
        (("etl.silverline.dev", "etlruns"), &["list", "watch"][..]),
        (("etl.silverline.dev", "datasets"), &["get", "list", "watch"]),
        (("etl.silverline.dev", "promotions"), &["list", "watch", "create"]),
        (("etl.silverline.dev", "etlruns/status"), &["patch"]),
        (("etl.silverline.dev", "datasets/status"), &["patch"]),
        (("etl.silverline.dev", "promotions/status"), &["patch"]),
        (("batch", "jobs"), &["get", "list", "watch", "create", "delete"]),
        (("", "pods"), &["list", "watch"]),
        (("", "configmaps"), &["get", "create"]),
        (("", "events"), &["list", "watch"]),
        (("events.k8s.io", "events"), &["create", "patch"]),
        (("coordination.k8s.io", "leases"), &["get", "create", "update"]),
    ]
    .into_iter()
    .collect();
    let roles: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole").collect();
    assert!(!roles.is_empty(), "no Role or ClusterRole rendered");
    for role in roles {
        let name = format!("{} {}", role["kind"], role["metadata"]["name"]);
        for rule in role["rules"].as_array().expect("rules") {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default()
            };
            let verbs = strings("verbs");
            assert!(!verbs.iter().any(|v| v == "*"), "{name}: a wildcard verb in {rule}");
            assert!(rule.get("nonResourceURLs").is_none(), "{name}: nonResourceURLs in {rule}");
            assert!(rule.get("resourceNames").is_none() || !verbs.is_empty(), "{name}: {rule}");
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    assert_ne!(resource, "secrets", "{name} grants access to Secrets: {rule}");
                    let Some(used) = allowed.get(&(group.as_str(), resource.as_str())) else {
                        panic!("{name} grants {group}/{resource}, which the operator does not use: {rule}");
                    };
                    for verb in &verbs {
                        assert!(
                            used.contains(&verb.as_str()),
                            "{name} grants {verb} on {group}/{resource}, unused: {rule}"
                        );
                    }
                }
            }
            if name.contains("Role") && strings("resources").iter().any(|r| r == "leases") {
                assert_eq!(verbs, ["get", "create", "update"], "{name}: leases");
            }
        }
    }
}

fn assert_restricted_pod(deployment: &Value) {
    let pod = &deployment["spec"]["template"]["spec"];
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true, "pod securityContext: {security}");
    assert!(security["runAsUser"].as_i64().is_some_and(|uid| uid > 0), "pod runs as a non-root uid: {security}");
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault", "pod securityContext: {security}");
    let container = &pod["containers"][0]["securityContext"];
    assert_eq!(container["readOnlyRootFilesystem"], true, "container securityContext: {container}");
    assert_eq!(container["allowPrivilegeEscalation"], false, "container securityContext: {container}");
    assert_eq!(container["runAsNonRoot"], true, "container securityContext: {container}");
    assert_eq!(container["capabilities"]["drop"], serde_json::json!(["ALL"]), "container securityContext: {container}");
    assert!(container["capabilities"].get("add").is_none(), "no capability added: {container}");
    assert_eq!(container["seccompProfile"]["type"], "RuntimeDefault", "container securityContext: {container}");
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let generated = repo_root().join("crds/generated");
    let charted = repo_root().join("charts/silverline/crds");
    let files = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let fix = "copy them: cp crds/generated/*.yaml charts/silverline/crds/";
    assert_eq!(
        files(&charted),
        files(&generated),
        "charts/silverline/crds/ lists other files than crds/generated/: {fix}"
    );
    for file in files(&generated) {
        let read = |dir: &Path| std::fs::read(dir.join(&file)).expect("CRD file");
        assert!(
            read(&charted) == read(&generated),
            "charts/silverline/crds/{file} differs from crds/generated/{file}: {fix}"
        );
    }
}

#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn helm_lint_passes_with_default_and_non_default_values() {
    let chart = helm::chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    for values in [&[][..], SCOPED] {
        let mut args = vec!["lint", "--strict", chart, "--namespace", RELEASE_NAMESPACE];
        args.extend_from_slice(values);
        let out = helm::run(&args);
        assert!(
            out.status.success(),
            "helm {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn by_default_the_operator_is_cluster_wide_highly_available_restricted_and_least_privileged() {
    let objects = render(&[]);
    // RBAC: one ClusterRole (and its binding) for the watched resources, leader election in a Role of the release
    // namespace only.
    assert_eq!(names(&of_kind(&objects, "ClusterRole")), BTreeSet::from(["/silverline-operator".to_owned()]));
    assert_eq!(names(&of_kind(&objects, "ClusterRoleBinding")), BTreeSet::from(["/silverline-operator".to_owned()]));
    assert_eq!(
        names(&of_kind(&objects, "Role")),
        BTreeSet::from([format!("{RELEASE_NAMESPACE}/silverline-operator-leader")])
    );
    let binding = one(&objects, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "silverline-operator", "namespace": RELEASE_NAMESPACE}])
    );
    assert_least_privilege(&objects);

    // Two ServiceAccounts: the operator's, and the workers' (no token) in the release namespace.
    let accounts = of_kind(&objects, "ServiceAccount");
    assert_eq!(
        names(&accounts),
        BTreeSet::from([
            format!("{RELEASE_NAMESPACE}/silverline-operator"),
            format!("{RELEASE_NAMESPACE}/silverline-worker")
        ])
    );
    let worker = accounts.iter().find(|a| a["metadata"]["name"] == "silverline-worker").expect("worker SA");
    assert_eq!(worker["automountServiceAccountToken"], false, "worker pods need no Kubernetes token: {worker}");

    // The Deployment: 2 replicas electing a leader, probes on the HTTP server's paths, resources, spread.
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "silverline-operator");
    assert_restricted_pod(deployment);
    let container = operator_container(&objects);
    assert_eq!(container["image"], "ghcr.io/silverline-dev/silverline-operator:0.1.0", "tag = appVersion");
    assert_eq!(
        env_value(container, "SILVERLINE_WORKER_IMAGE").as_deref(),
        Some("ghcr.io/silverline-dev/silverline-worker:0.1.0")
    );
    assert_eq!(env_value(container, "SILVERLINE_WORKER_SERVICE_ACCOUNT").as_deref(), Some("silverline-worker"));
    assert_eq!(env_value(container, "SILVERLINE_NAMESPACE"), None, "cluster-wide: no namespace to watch");
    let env = env_of(container);
    let field =
        |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, e)| e["valueFrom"]["fieldRef"]["fieldPath"].clone());
    assert_eq!(field("POD_NAME"), Some(Value::from("metadata.name")), "each replica's identity in the Lease");
    assert_eq!(field("SILVERLINE_LEASE_NAMESPACE"), Some(Value::from("metadata.namespace")), "the Lease's namespace");
    assert_eq!(env_value(container, "SILVERLINE_LEASE_NAME").as_deref(), Some("silverline-operator"));
    // The tuning the chart exposes defaults to the operator's own defaults (measured ones: README.md "Load").
    let command = <silverline_operator::config::Config as clap::CommandFactory>::command();
    for name in
        ["SILVERLINE_RECONCILE_CONCURRENCY", "SILVERLINE_BURST_LAUNCHES_PER_SECOND", "SILVERLINE_API_TIMEOUT_SECONDS"]
    {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env() == Some(std::ffi::OsStr::new(name)))
            .unwrap_or_else(|| panic!("the operator has no option read from {name}"));
        let default: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        assert_eq!(env_value(container, name).as_slice(), default.as_slice(), "{name}: the chart's default");
    }
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert!(container["resources"]["requests"]["cpu"].is_string(), "resources: {}", container["resources"]);
    assert!(container["resources"]["limits"]["memory"].is_string(), "resources: {}", container["resources"]);
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname", "{spread}");
    assert_eq!(spread["labelSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"], "{spread}");

    // The PDB and the Service select the operator's pods.
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"]);
    let service = one(&objects, "Service");
    assert_eq!(&service["spec"]["selector"], &deployment["spec"]["selector"]["matchLabels"]);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");

    // Off by default.
    for kind in ["NetworkPolicy", "ServiceMonitor", "PrometheusRule"] {
        assert!(of_kind(&objects, kind).is_empty(), "a {kind} rendered by default");
    }
    // The CRDs are in it, and no Secret anywhere.
    assert_eq!(of_kind(&objects, "CustomResourceDefinition").len(), 3, "Dataset, EtlRun and Promotion CRDs");
    assert!(of_kind(&objects, "Secret").is_empty(), "the chart renders a Secret");
}

#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn watched_namespaces_get_roles_and_nothing_cluster_wide_and_the_options_render() {
    let objects = render(SCOPED);
    assert!(of_kind(&objects, "ClusterRole").is_empty(), "namespace-scoped mode renders a ClusterRole");
    assert!(of_kind(&objects, "ClusterRoleBinding").is_empty(), "namespace-scoped mode renders a ClusterRoleBinding");
    assert_eq!(
        names(&of_kind(&objects, "Role")),
        BTreeSet::from([
            "etl-a/silverline-operator".to_owned(),
            "etl-b/silverline-operator".to_owned(),
            format!("{RELEASE_NAMESPACE}/silverline-operator-leader"),
        ])
    );
    for binding in of_kind(&objects, "RoleBinding") {
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "silverline-operator", "namespace": RELEASE_NAMESPACE}]),
            "{binding}"
        );
        assert_eq!(binding["roleRef"]["name"], binding["metadata"]["name"], "{binding}");
    }
    assert_least_privilege(&objects);
    // Same rules as the cluster-wide mode, per namespace.
    let cluster_rules = one(&render(&[]), "ClusterRole")["rules"].clone();
    for role in of_kind(&objects, "Role").into_iter().filter(|r| r["metadata"]["name"] == "silverline-operator") {
        assert_eq!(
            role["rules"], cluster_rules,
            "the Role in {} differs from the ClusterRole",
            role["metadata"]["namespace"]
        );
    }

    let container = operator_container(&objects);
    assert_eq!(env_value(container, "SILVERLINE_NAMESPACE").as_deref(), Some("etl-a,etl-b"));
    assert_eq!(container["image"], "ghcr.io/silverline-dev/silverline-operator:1.2.3");
    assert_eq!(env_value(container, "SILVERLINE_RECONCILE_CONCURRENCY").as_deref(), Some("64"));
    assert_eq!(env_value(container, "SILVERLINE_BURST_LAUNCHES_PER_SECOND").as_deref(), Some("0"));
    assert_eq!(env_value(container, "SILVERLINE_API_TIMEOUT_SECONDS").as_deref(), Some("15"));
    assert_restricted_pod(one(&objects, "Deployment"));

    // The workers' ServiceAccount in each watched namespace, annotated for IRSA.
    let workers: Vec<&Value> = of_kind(&objects, "ServiceAccount")
        .into_iter()
        .filter(|a| a["metadata"]["name"] == "silverline-worker")
        .collect();
    assert_eq!(
        names(&workers),
        BTreeSet::from(["etl-a/silverline-worker".to_owned(), "etl-b/silverline-worker".to_owned()])
    );
    for worker in workers {
        assert_eq!(
            worker["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::123456789012:role/lake-writer",
            "{worker}"
        );
    }
    let operator_sa = of_kind(&objects, "ServiceAccount")
        .into_iter()
        .find(|a| a["metadata"]["name"] == "silverline-operator")
        .expect("operator SA");
    assert!(operator_sa["metadata"].get("annotations").is_none(), "the workers' annotations stay off the operator's");

    let policy = one(&objects, "NetworkPolicy");
    let selector = &one(&objects, "Deployment")["spec"]["selector"]["matchLabels"];
    assert_eq!(&policy["spec"]["podSelector"]["matchLabels"], selector);
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert_eq!(policy["spec"]["ingress"][0]["ports"], serde_json::json!([{"port": "http", "protocol": "TCP"}]));
    let egress_ports: BTreeSet<i64> = policy["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|port| port["port"].as_i64())
        .collect();
    assert_eq!(egress_ports, BTreeSet::from([53, 443, 6443]), "DNS, the apiserver and S3 only");

    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(&monitor["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    // The series' own `namespace` (the Dataset's) wins over the target's (the operator pod's): the alerts join on it.
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);
}

/// The NetworkPolicy's egress to the link-local credential endpoints (port 80): none by default, EC2 instance
/// metadata with networkPolicy.instanceMetadata, the EKS Pod Identity agent with networkPolicy.podIdentity; an
/// S3-compatible endpoint's port goes in egressPorts.
#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn the_network_policy_reaches_credential_endpoints_only_when_asked() {
    // (CIDRs, ports) of each egress rule that names destinations.
    let destinations = |args: &[&str]| -> Vec<(BTreeSet<String>, BTreeSet<i64>)> {
        let mut all = vec!["--set", "networkPolicy.enabled=true"];
        all.extend_from_slice(args);
        let objects = render(&all);
        one(&objects, "NetworkPolicy")["spec"]["egress"]
            .as_array()
            .expect("egress")
            .iter()
            .filter(|rule| rule.get("to").is_some())
            .map(|rule| {
                let cidrs = rule["to"]
                    .as_array()
                    .expect("to")
                    .iter()
                    .map(|peer| peer["ipBlock"]["cidr"].as_str().expect("an ipBlock").to_owned())
                    .collect();
                let ports =
                    rule["ports"].as_array().expect("ports").iter().filter_map(|p| p["port"].as_i64()).collect();
                (cidrs, ports)
            })
            .collect()
    };
    let cidrs = |list: &[&str]| list.iter().map(|c| (*c).to_owned()).collect::<BTreeSet<String>>();
    let imds = ["169.254.169.254/32", "fd00:ec2::254/128"];
    let pod_identity = ["169.254.170.23/32", "fd00:ec2::23/128"];
    assert_eq!(destinations(&[]), vec![], "no credential endpoint by default");
    assert_eq!(
        destinations(&["--set", "networkPolicy.instanceMetadata=true"]),
        vec![(cidrs(&imds), BTreeSet::from([80]))]
    );
    assert_eq!(
        destinations(&["--set", "networkPolicy.podIdentity=true"]),
        vec![(cidrs(&pod_identity), BTreeSet::from([80]))]
    );
    let both = [imds, pod_identity].concat();
    assert_eq!(
        destinations(&["--set", "networkPolicy.instanceMetadata=true", "--set", "networkPolicy.podIdentity=true"]),
        vec![(cidrs(&both), BTreeSet::from([80]))]
    );

    // A MinIO lake on port 9000: its port beside the defaults, to any address.
    let objects =
        render(&["--set", "networkPolicy.enabled=true", "--set", "networkPolicy.egressPorts={443,6443,9000}"]);
    let ports: BTreeSet<i64> = one(&objects, "NetworkPolicy")["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .filter(|rule| rule.get("to").is_none())
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|port| port["port"].as_i64())
        .collect();
    assert_eq!(ports, BTreeSet::from([53, 443, 6443, 9000]));
}

/// `image.*.digest`: images pulled by digest, the operator's and every worker Job's.
#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn images_pinned_by_digest_are_pulled_by_it() {
    let operator = format!("sha256:{}", "a".repeat(64));
    let worker = format!("sha256:{}", "b".repeat(64));
    let objects = render(&[
        "--set",
        "image.operator.tag=1.2.3",
        "--set",
        &format!("image.operator.digest={operator}"),
        "--set",
        &format!("image.worker.digest={worker}"),
    ]);
    let container = operator_container(&objects);
    assert_eq!(container["image"], format!("ghcr.io/silverline-dev/silverline-operator:1.2.3@{operator}"));
    let worker_image = env_value(container, "SILVERLINE_WORKER_IMAGE").expect("the worker's image");
    assert!(worker_image.starts_with("ghcr.io/silverline-dev/silverline-worker:"), "{worker_image}");
    assert!(worker_image.ends_with(&format!("@{worker}")), "{worker_image}");
    // Without a digest, by tag only (as before).
    let container = operator_container(&render(&["--set", "image.operator.tag=1.2.3"])).clone();
    assert_eq!(container["image"], "ghcr.io/silverline-dev/silverline-operator:1.2.3");
}

/// `workerServiceAccount.namespaceAnnotations`: one namespace's lake identity, over the common annotations.
#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn a_namespace_gets_its_own_worker_identity_over_the_common_one() {
    let role = "eks\\.amazonaws\\.com/role-arn";
    let common = format!("workerServiceAccount.annotations.{role}=arn:aws:iam::1:role/common");
    let own = format!("workerServiceAccount.namespaceAnnotations.etl-b.{role}=arn:aws:iam::1:role/etl-b");
    let extra = "workerServiceAccount.namespaceAnnotations.etl-b.team=payments";
    let objects = render(&[
        "--set",
        "watchNamespaces={etl-a,etl-b}",
        "--set-string",
        &common,
        "--set-string",
        &own,
        "--set-string",
        extra,
    ]);
    let workers: BTreeMap<String, Value> = of_kind(&objects, "ServiceAccount")
        .into_iter()
        .filter(|sa| sa["metadata"]["name"] == "silverline-worker")
        .map(|sa| {
            let namespace = sa["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
            (namespace, sa["metadata"]["annotations"].clone())
        })
        .collect();
    assert_eq!(
        workers,
        BTreeMap::from([
            ("etl-a".to_owned(), serde_json::json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/common"})),
            (
                "etl-b".to_owned(),
                serde_json::json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/etl-b", "team": "payments"})
            ),
        ])
    );

    // A namespace that gets no workers' ServiceAccount: a typo would leave it on the common role, so it is refused.
    let stray = format!("workerServiceAccount.namespaceAnnotations.etl-c.{role}=arn:aws:iam::1:role/etl-c");
    let args = ["--set", "watchNamespaces={etl-a}", "--set-string", &stray];
    let error = helm::template("silverline", RELEASE_NAMESPACE, &args)
        .expect_err("helm template accepted annotations for a namespace without workers");
    assert!(error.contains("namespace etl-c, which gets no workers' ServiceAccount"), "{error}");
}

/// The pod's prometheus.io scrape annotations are defaults: a user's podAnnotations key replaces the value, once
/// (a second `prometheus.io/scrape:` key would make the Deployment invalid YAML).
#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn pod_annotations_override_the_scrape_annotations() {
    let chart = helm::chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    let out = helm::run(&[
        "template",
        "silverline",
        chart,
        "--namespace",
        RELEASE_NAMESPACE,
        "--show-only",
        "templates/deployment.yaml",
        "--set-string",
        "operator.podAnnotations.prometheus\\.io/scrape=false",
        "--set-string",
        "operator.podAnnotations.team=etl",
    ]);
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("prometheus.io/scrape:").count(), 1, "the scrape annotation once:\n{text}");
    let objects = helm::documents(&text);
    let annotations = &one(&objects, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations,
        &serde_json::json!({
            "prometheus.io/scrape": "false",
            "prometheus.io/port": "8080",
            "prometheus.io/path": "/metrics",
            "team": "etl",
        })
    );
    // Unset, the defaults.
    let objects = render(&[]);
    let defaults = &one(&objects, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(defaults["prometheus.io/scrape"], "true", "{defaults}");
}

/// A PodDisruptionBudget that no eviction can satisfy makes `kubectl drain` wait forever: one replica gets none,
/// and minAvailable at or above the replicas is refused at render time.
#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn no_pod_disruption_budget_blocks_a_node_drain() {
    let single = render(&["--set", "operator.replicas=1"]);
    assert_eq!(one(&single, "Deployment")["spec"]["replicas"], 1);
    assert!(of_kind(&single, "PodDisruptionBudget").is_empty(), "one replica with a PodDisruptionBudget");

    let three = render(&["--set", "operator.replicas=3", "--set", "operator.podDisruptionBudget.minAvailable=2"]);
    assert_eq!(one(&three, "PodDisruptionBudget")["spec"]["minAvailable"], 2);
    let percent = render(&["--set", "operator.podDisruptionBudget.minAvailable=50%"]);
    assert_eq!(one(&percent, "PodDisruptionBudget")["spec"]["minAvailable"], "50%");

    let refused = helm::template(
        "silverline",
        RELEASE_NAMESPACE,
        &["--set", "operator.replicas=2", "--set", "operator.podDisruptionBudget.minAvailable=2"],
    )
    .expect_err("helm template accepted minAvailable 2 with 2 replicas");
    assert!(refused.contains("minAvailable (2) must be below operator.replicas (2)"), "{refused}");
}

/// The operator's configuration as its container's environment gives it: each variable with a value that the
/// operator reads becomes its flag, parsed by the operator's own clap parser (what a pod's start does).
fn parse_operator_config(container: &Value) -> silverline_operator::config::Config {
    let command = <silverline_operator::config::Config as clap::CommandFactory>::command();
    let mut args = vec!["silverline-operator".to_owned()];
    for (name, var) in env_of(container) {
        let Some(value) = var["value"].as_str() else { continue };
        if let Some(arg) = command.get_arguments().find(|a| a.get_env() == Some(std::ffi::OsStr::new(&name))) {
            args.push(format!("--{}={value}", arg.get_long().expect("a long flag")));
        }
    }
    <silverline_operator::config::Config as clap::Parser>::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the operator refuses its rendered environment {args:?}: {e}"))
}

/// Numbers in a values file reach the templates as float64, which Go prints in %g from 1,000,000 up
/// ("2.592e+06", which the operator's integer flags refuse: a crash loop). `--set` gives int64, so only a values
/// file shows it: the numbers here are each at least a million (a uid from OpenShift's range, a 30-day TTL).
#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn large_numbers_from_a_values_file_render_as_integers() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "operator:\n\
        \x20 uid: 1000680000\n\
        \x20 burstLaunchesPerSecond: 4000000\n\
        \x20 leaderElection:\n\
        \x20   leaseDurationSeconds: 1000000\n\
        \x20 probes:\n\
        \x20   periodSeconds: 1000000\n\
        \x20   failureThreshold: 1000001\n\
        worker:\n\
        \x20 uid: 1000680001\n\
        \x20 jobTtlSeconds: 2592000\n\
        \x20 attemptDeadlineSeconds: 1209600\n",
    )
    .expect("write the values file");
    let objects = render(&["-f", values.to_str().expect("a UTF-8 path")]);
    let deployment = one(&objects, "Deployment");
    let security = &deployment["spec"]["template"]["spec"]["securityContext"];
    // A float (1.00068e+09) would not be an i64 here.
    assert_eq!(security["runAsUser"].as_i64(), Some(1_000_680_000), "{security}");
    assert_eq!(security["runAsGroup"].as_i64(), Some(1_000_680_000), "{security}");
    let container = operator_container(&objects);
    for (name, expected) in [
        ("SILVERLINE_WORKER_UID", "1000680001"),
        ("SILVERLINE_JOB_TTL_SECONDS", "2592000"),
        ("SILVERLINE_ATTEMPT_DEADLINE_SECONDS", "1209600"),
        ("SILVERLINE_BURST_LAUNCHES_PER_SECOND", "4000000"),
        ("SILVERLINE_LEASE_DURATION_SECONDS", "1000000"),
    ] {
        assert_eq!(env_value(container, name).as_deref(), Some(expected), "{name}");
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["periodSeconds"].as_i64(), Some(1_000_000), "{probe}: {}", container[probe]);
        assert_eq!(container[probe]["failureThreshold"].as_i64(), Some(1_000_001), "{probe}: {}", container[probe]);
    }
    let config = parse_operator_config(container);
    assert_eq!(config.job_ttl_seconds, 2_592_000);
    assert_eq!(config.worker_uid, 1_000_680_001);
    assert_eq!(config.burst_launches_per_second, 4_000_000);
}

/// operator.allowedLakes, operator.allowedEndpoints and operator.allowedInputs from a values file become the
/// operator's lake policy (parsed by its own flags); by default nothing is rendered: the operator allows no lake and
/// restricts no input.
#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn allowed_lakes_and_endpoints_become_the_operators_lake_policy() {
    use silverline_crds::StorageSpec;
    let storage = |uri: &str, endpoint: Option<&str>| StorageSpec {
        lake_uri: uri.into(),
        endpoint: endpoint.map(str::to_owned),
        region: None,
        credentials_secret: None,
    };
    let default = parse_operator_config(operator_container(&render(&[])));
    assert_eq!(default.lake_policy(), silverline_operator::lake::LakePolicy::default(), "no grant by default");
    assert!(default.lake_policy().check("etl", &storage("s3://lake/etl", None)).is_err(), "nothing by default");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "operator:\n\
        \x20 allowedLakes:\n\
        \x20   - namespace: etl\n\
        \x20     lake: s3://datalake-prod/etl\n\
        \x20   - namespace: \"*\"\n\
        \x20     lake: /data/shared-lakes\n\
        \x20 allowedEndpoints:\n\
        \x20   - http://minio.storage:9000\n\
        \x20 allowedInputs:\n\
        \x20   - namespace: etl\n\
        \x20     prefix: s3://bronze/etl\n",
    )
    .expect("write the values file");
    let objects = render(&["-f", values.to_str().expect("a UTF-8 path")]);
    let container = operator_container(&objects);
    assert_eq!(
        env_value(container, "SILVERLINE_ALLOWED_LAKES").as_deref(),
        Some("etl=s3://datalake-prod/etl,*=/data/shared-lakes")
    );
    assert_eq!(env_value(container, "SILVERLINE_ALLOWED_INPUTS").as_deref(), Some("etl=s3://bronze/etl"));
    let policy = parse_operator_config(container).lake_policy();
    assert!(policy.check_input("etl", "s3://bronze/etl/2024/01.csv").is_ok());
    assert!(policy.check_input("team-b", "s3://bronze/etl/2024/01.csv").is_err(), "granted to etl only");
    assert!(default.lake_policy().check_input("team-b", "s3://bronze/etl/x.csv").is_ok(), "unrestricted by default");
    for (namespace, uri, endpoint, allowed) in [
        ("etl", "s3://datalake-prod/etl/orders", None, true),
        ("etl", "s3://datalake-prod/etl/orders", Some("http://minio.storage:9000/"), true),
        ("etl", "s3://datalake-prod/etl/orders", Some("http://169.254.169.254"), false),
        ("team-b", "s3://datalake-prod/etl/orders", None, false),
        ("team-b", "/data/shared-lakes/b", None, true),
        ("etl", "s3://datalake-prod/etl-b", None, false),
    ] {
        assert_eq!(
            policy.check(namespace, &storage(uri, endpoint)).is_ok(),
            allowed,
            "{uri} {endpoint:?} in {namespace}"
        );
    }
}

/// worker.env from a values file reaches the operator as one variable, a line per entry, which its own flags
/// parse into the variables every worker pod gets; a value of two lines is refused by the schema (it would be two
/// entries). None by default.
#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn worker_env_reaches_the_operator_one_line_per_variable() {
    let default = operator_container(&render(&[])).clone();
    assert_eq!(env_value(&default, "SILVERLINE_WORKER_ENV"), None);
    assert!(parse_operator_config(&default).job_settings().expect("settings").env.0.is_empty());

    let dir = tempfile::tempdir().expect("a temporary directory");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "worker:\n\
        \x20 env:\n\
        \x20   HTTPS_PROXY: http://proxy.corp:3128\n\
        \x20   NO_PROXY: .svc,.cluster.local,10.0.0.0/8\n",
    )
    .expect("write the values file");
    let objects = render(&["-f", values.to_str().expect("a UTF-8 path")]);
    let container = operator_container(&objects);
    assert_eq!(
        env_value(container, "SILVERLINE_WORKER_ENV").as_deref(),
        Some("HTTPS_PROXY=http://proxy.corp:3128\nNO_PROXY=.svc,.cluster.local,10.0.0.0/8")
    );
    let env = parse_operator_config(container).job_settings().expect("settings").env;
    let pair = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    assert_eq!(
        env.0,
        [pair("HTTPS_PROXY", "http://proxy.corp:3128"), pair("NO_PROXY", ".svc,.cluster.local,10.0.0.0/8")]
    );

    std::fs::write(&values, "worker:\n  env:\n    TZ: \"UTC\\nAWS_REGION=eu-west-1\"\n")
        .expect("write the values file");
    let smuggled = helm::template("silverline", RELEASE_NAMESPACE, &["-f", values.to_str().expect("a UTF-8 path")]);
    let error = smuggled.expect_err("a value of two lines is refused");
    assert!(error.contains("schema") && error.contains("/env/TZ"), "{error}");
}

#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn the_values_schema_refuses_a_typo_and_a_wrong_type() {
    let chart = helm::chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    for (set, expected) in [
        ("operator.replica=3", "replica"),
        ("watchNamespace={etl}", "watchNamespace"),
        ("operator.replicas=two", "replicas"),
        ("networkPolicy.enabled=yes", "enabled"),
        ("networkPolicy.instanceMetadata=yes", "instanceMetadata"),
        ("image.worker.pullPolicy=Sometimes", "pullPolicy"),
        ("operator.reconcileConcurrency=-1", "reconcileConcurrency"),
        ("operator.burstLaunchesPerSecond=1.5", "burstLaunchesPerSecond"),
        ("operator.apiTimeoutSeconds=0", "apiTimeoutSeconds"),
        // Larger than the operator's (and the API's) 32-bit fields: it would not start.
        ("worker.jobTtlSeconds=2147483648", "jobTtlSeconds"),
        ("operator.leaderElection.leaseDurationSeconds=2147483648", "leaseDurationSeconds"),
        // The apiserver refuses a binding with both ("must not contain both Deny and Warn").
        ("approvalPolicy.validationActions={Deny,Warn}", "validationActions"),
        ("approvalPolicy.validationActions={Warn,Audit,Deny}", "validationActions"),
        // A lake root the operator would refuse at start (relative), or one without its namespace.
        ("operator.allowedLakes[0].namespace=etl,operator.allowedLakes[0].lake=relative/lake", "lake"),
        ("operator.allowedLakes[0].lake=s3://lake/etl", "namespace"),
        ("operator.allowedLakes[0].namespace=etl,operator.allowedLakes[0].lake=s3://lake/etl/../other", "lake"),
        ("operator.allowedLakes[0].namespace=Etl,operator.allowedLakes[0].lake=s3://lake/etl", "namespace"),
        ("operator.allowedEndpoints={minio.storage:9000}", "allowedEndpoints"),
        ("operator.allowedInputs[0].namespace=etl,operator.allowedInputs[0].prefix=bronze/etl", "prefix"),
        // The lake client's settings come from the Dataset and the operator's grants; the worker's own from its flags.
        ("worker.env.AWS_ENDPOINT_URL=http://elsewhere:9000", "AWS_ENDPOINT_URL"),
        ("worker.env.aws_access_key_id=x", "aws_access_key_id"),
        ("worker.env.SILVERLINE_IO_RETRY_SECONDS=1", "SILVERLINE_IO_RETRY_SECONDS"),
        ("worker.env.HTTPS-PROXY=http://p:3128", "HTTPS-PROXY"),
    ] {
        let rendered = helm::template("silverline", RELEASE_NAMESPACE, &["--set", set]);
        let error = rendered.err().unwrap_or_else(|| panic!("helm template accepted --set {set}"));
        assert!(
            error.contains("schema") && error.contains(expected),
            "helm template --set {set} failed, but not naming {expected}: {error}"
        );
        let out = helm::run(&["lint", chart, "--set", set]);
        assert!(!out.status.success(), "helm lint accepted --set {set}");
    }
    // What the apiserver takes: enforce, or observe before enforcing.
    for set in ["approvalPolicy.validationActions={Warn,Audit}", "approvalPolicy.validationActions={Deny,Audit}"] {
        let objects = helm::template("silverline", RELEASE_NAMESPACE, &["--set", set])
            .unwrap_or_else(|e| panic!("helm template refused --set {set}: {e}"));
        let binding = one(&objects, "ValidatingAdmissionPolicyBinding");
        assert_eq!(binding["spec"]["validationActions"].as_array().map(Vec::len), Some(2), "{binding}");
    }
}

#[test]
#[ignore = "needs helm (SILVERLINE_HELM): run ./scripts/test.sh"]
fn the_deploy_manifest_is_the_charts_rendering() {
    for (file, expected) in [("operator.yaml", deploy_manifest()), ("approval-policy.yaml", approval_policy_manifest())]
    {
        let path = repo_root().join("operator/deploy").join(file);
        if std::env::var_os("SILVERLINE_BLESS").is_some() {
            std::fs::write(&path, &expected).unwrap_or_else(|e| panic!("write operator/deploy/{file}: {e}"));
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("operator/deploy/{file}: {e}"));
        assert!(
            committed == expected,
            "operator/deploy/{file} is not the chart's rendering: regenerate it with \
             `SILVERLINE_BLESS=1 cargo test -p silverline-operator --test chart the_deploy_manifest -- --include-ignored`"
        );
    }
}

/// operator/deploy/approval-policy.yaml: the chart's approval policy (four eyes on Promotions), default values,
/// for the same `kubectl apply` install.
fn approval_policy_manifest() -> String {
    let chart = helm::chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    let args = [
        "template",
        "silverline",
        chart,
        "--namespace",
        RELEASE_NAMESPACE,
        "--show-only",
        "templates/approval-policy.yaml",
    ];
    let out = helm::run(&args);
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    format!(
        "# Generated from charts/silverline (default values, release `silverline` in {RELEASE_NAMESPACE}) by\n\
         # `SILVERLINE_BLESS=1 cargo test -p silverline-operator --test chart the_deploy_manifest -- --include-ignored`;\n\
         # do not edit. Four eyes on Promotions, enforced by the apiserver (docs/approval.md), for the `kubectl apply`\n\
         # install of operator.yaml: kubectl apply -f operator/deploy/approval-policy.yaml\n{}",
        String::from_utf8_lossy(&out.stdout)
    )
}

/// operator/deploy/operator.yaml: the chart's operator objects, default values, for `kubectl apply` without Helm.
fn deploy_manifest() -> String {
    let chart = helm::chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    let mut args = vec!["template", "silverline", chart, "--namespace", RELEASE_NAMESPACE];
    // The operator's own templates only: the approval policy and the alerts are the chart's, installed with Helm.
    for template in [
        "templates/serviceaccounts.yaml",
        "templates/rbac.yaml",
        "templates/deployment.yaml",
        "templates/service.yaml",
        "templates/poddisruptionbudget.yaml",
    ] {
        args.extend(["--show-only", template]);
    }
    let out = helm::run(&args);
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    format!(
        "# Generated from charts/silverline (default values, release `silverline` in {RELEASE_NAMESPACE}) by\n\
         # `SILVERLINE_BLESS=1 cargo test -p silverline-operator --test chart the_deploy_manifest -- --include-ignored`;\n\
         # do not edit. The chart is the way to install (README.md, \"Install with Helm\"); this is the same operator for\n\
         # `kubectl apply` without Helm: apply the CRDs first (kubectl apply -f crds/generated/).\n\
         # It holds no approval policy: without approval-policy.yaml beside it, four eyes on Promotions are NOT\n\
         # enforced (anyone who may patch a Promotion can approve their own): apply both (docs/approval.md).\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {RELEASE_NAMESPACE}\n{}",
        String::from_utf8_lossy(&out.stdout)
    )
}

/// The API resource of an object's apiVersion and kind, from the apiserver's discovery.
fn api_resource(discovery: &Discovery, object: &Value) -> Option<(ApiResource, bool)> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    discovery.groups().find(|g| g.name() == group).and_then(|g| {
        g.versioned_resources(version)
            .into_iter()
            .find(|(resource, _)| resource.kind == kind)
            .map(|(resource, caps)| (resource, caps.scope == Scope::Namespaced))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn the_apiserver_accepts_every_rendered_object_in_a_server_side_dry_run() {
    let client = support::client().await;
    let release_ns = TestNamespace::create(&client, "chart-rel").await;
    let watched = TestNamespace::create(&client, "chart-etl").await;
    let set_watched = format!("watchNamespaces={{{}}}", watched.name);
    let discovery = Discovery::new(client.clone()).run().await.expect("API discovery");
    let renderings = [
        ("default values", helm::template("silverline", &release_ns.name, &[])),
        (
            "namespace-scoped values",
            helm::template(
                "silverline",
                &release_ns.name,
                &[
                    "--set",
                    &set_watched,
                    "--set",
                    "networkPolicy.enabled=true",
                    "--set",
                    "networkPolicy.instanceMetadata=true",
                    "--set",
                    "networkPolicy.podIdentity=true",
                    "--set-string",
                    "workerServiceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/x",
                ],
            ),
        ),
    ];
    let mut applied = 0;
    let mut unserved = Vec::new();
    for (what, rendered) in renderings {
        let objects = rendered.unwrap_or_else(|e| panic!("helm template ({what}) failed: {e}"));
        for object in &objects {
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let Some((resource, namespaced)) = api_resource(&discovery, object) else {
                unserved.push(format!("{} {kind}", object["apiVersion"]));
                continue;
            };
            let api: Api<DynamicObject> = if namespaced {
                let ns = object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{kind} {name} has no namespace"));
                Api::namespaced_with(client.clone(), ns, &resource)
            } else {
                Api::all_with(client.clone(), &resource)
            };
            let dynamic: DynamicObject = serde_json::from_value(object.clone()).expect("an object");
            api.patch(&name, &PatchParams::apply("silverline-chart-test").dry_run().force(), &Patch::Apply(&dynamic))
                .await
                .unwrap_or_else(|e| {
                    panic!("the apiserver refused {kind} {name} ({what}) in a server-side dry run: {e}")
                });
            applied += 1;
        }
    }
    assert!(applied >= 20, "only {applied} objects were applied");
    assert!(unserved.is_empty(), "kinds the test apiserver does not serve: {unserved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn an_installed_release_runs_an_etlrun_to_succeeded_as_the_charts_operator_identity() {
    let s = Scenario::new("chart-run").await;
    let release_ns = TestNamespace::create(&s.client, "chart-sys").await;
    let release = format!("sl-{}", release_ns.name.rsplit('-').nth(1).unwrap_or("x"));
    let operator_sa = format!("{release}-silverline-operator");
    let chart = helm::chart_dir();
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let set_watched = format!("watchNamespaces={{{}}}", s.ns.name);
    // Namespace-scoped: the control plane is shared with other tests, whose EtlRuns a cluster-wide operator would
    // take. The approval policy is cluster-wide too (it would judge other tests' Promotions): its own tests cover it.
    let out = helm::run(&[
        "install",
        &release,
        chart.to_str().expect("UTF-8 path"),
        "--kubeconfig",
        &kubeconfig,
        "--namespace",
        &release_ns.name,
        "--set",
        &set_watched,
        "--set",
        "approvalPolicy.enabled=false",
    ]);
    assert!(
        out.status.success(),
        "helm install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest =
        helm::run(&["get", "manifest", &release, "--kubeconfig", &kubeconfig, "--namespace", &release_ns.name]);
    assert!(manifest.status.success(), "helm get manifest: {}", String::from_utf8_lossy(&manifest.stderr));
    let objects = helm::documents(&String::from_utf8_lossy(&manifest.stdout));

    // The operator runs out of cluster (there are no nodes), as its ServiceAccount, with its Deployment's environment.
    let container = operator_container(&objects);
    let identity = "chart-replica-a";
    let mut env: Vec<(String, String)> = Vec::new();
    for (name, var) in env_of(container) {
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => identity.to_owned(),
            Some("metadata.namespace") => release_ns.name.clone(),
            Some(other) => panic!("the Deployment sets {name} from an unexpected field {other}"),
            None => var["value"].as_str().unwrap_or_else(|| panic!("env {name} has no value")).to_owned(),
        };
        env.push((name, value));
    }
    // RBAC enforces the release's new Roles a moment after helm created them: wait for what the operator needs first.
    let user = format!("system:serviceaccount:{}:{operator_sa}", release_ns.name);
    for (group, resource, verb, namespace) in [
        ("etl.silverline.dev", "etlruns", "watch", &s.ns.name),
        ("batch", "jobs", "create", &s.ns.name),
        ("coordination.k8s.io", "leases", "get", &release_ns.name),
    ] {
        let access = support::Access { group, resource, verb };
        support::wait_until_allowed(&s.client, &user, Some(namespace.as_str()), access).await;
    }
    let kubeconfig = support::service_account_kubeconfig(
        &s.client,
        &release_ns.name,
        &operator_sa,
        &s.dir.path().join("chart-operator.kubeconfig"),
    )
    .await;
    let op = support::Operator::start(support::OperatorOptions {
        namespace: &s.ns.name,
        identity,
        log_dir: s.dir.path(),
        kubeconfig: Some(&kubeconfig),
        env,
    })
    .await;

    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let input = s.input("tx.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-chart", &input).await;
    let run = finished(&s.client, &s.ns.name, "tx-chart", Duration::from_secs(90)).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));

    // It led through the Lease in the release namespace (the chart's leader Role), and its workers ran as the
    // chart's worker ServiceAccount in the watched namespace.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(s.client.clone(), &release_ns.name);
    let lease = leases.get("silverline-operator").await.expect("the Lease in the release namespace");
    assert_eq!(lease.spec.and_then(|spec| spec.holder_identity).as_deref(), Some(identity));
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    let job = jobs.get("tx-chart-a1").await.expect("the attempt's Job");
    let pod_spec = job.spec.and_then(|spec| spec.template.spec).expect("pod spec");
    assert_eq!(pod_spec.service_account_name.as_deref(), Some("silverline-worker"));

    let admin = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let out = helm::run(&["uninstall", &release, "--kubeconfig", &admin, "--namespace", &release_ns.name]);
    assert!(out.status.success(), "helm uninstall failed: {}", String::from_utf8_lossy(&out.stderr));
}
