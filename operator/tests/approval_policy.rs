//! The chart's four-eyes approval policy (`charts/silverline/templates/approval-policy.yaml`), rendered by helm
//! and enforced by the test apiserver, with real identities: ServiceAccount tokens from the TokenRequest API and
//! the control plane's static admin token (a user in system:masters). An approver holding the RBAC verb `approve`
//! succeeds; a user without the verb, the creator, a forged name and an untrusted service account are each refused
//! with a message that says why; a name with surrounding whitespace (which the operator would read trimmed) is
//! refused for everyone; a trusted applier records the Git reviewer's name; `created-by` is set by the
//! apiserver and cannot be changed; a rejection follows the same rules; where no MutatingAdmissionPolicy is served
//! the creator must name themselves; and the operator's own flows (a Promotion asked for by `requestOnSuccess`, its
//! status, the promote Job) work with the policy installed, while the operator itself can approve nothing.
//!
//! Each test installs the rendered policy under names of its own, bound to its own namespace only (a namespace
//! label selector on the bindings), so it never governs the Promotions of the other tests.

mod support;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use silverline_crds::promotion::{
    ANNOTATION_APPROVAL_REASON, ANNOTATION_APPROVED_BY, ANNOTATION_REJECTED_BY, ANNOTATION_REJECTION_REASON,
    ANNOTATION_REQUESTED_BY,
};
use silverline_crds::{EtlRunPhase, Promotion, PromotionPhase, PromotionSpec};
use std::path::Path;
use std::time::Duration;
use support::{Scenario, TestNamespace, create_dataset, eventually, finished, helm, transactions_dataset};

/// Recorded by the apiserver (the chart's MutatingAdmissionPolicy) at create time.
const CREATED_BY: &str = silverline_crds::promotion::ANNOTATION_CREATED_BY;
/// Namespace label the test bindings select on (value: the namespace's name).
const SCOPE_LABEL: &str = "approval-policy.silverline.dev/test";
const FIELD_MANAGER: &str = "silverline-approval-policy-test";
const MAP_API_VERSION: &str = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy";
const POLICY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the chart's MutatingAdmissionPolicy records `created-by`, or only the validating policy is installed
/// (clusters that do not serve MutatingAdmissionPolicy: the creator sets `created-by` to their own name).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    WithMutatingPolicy,
    ValidatingOnly,
}

/// `helm template` of the approval policy, as `helm install` renders it against this apiserver (its version, and
/// MutatingAdmissionPolicy among its API versions when `mode` says so), released in `namespace`: the operator it
/// knows is the ServiceAccount `silverline-operator` there (`Scenario::operator_service_account`).
async fn render_policy(
    client: &Client,
    namespace: &str,
    mode: Mode,
    trusted_appliers: &[String],
) -> Vec<serde_json::Value> {
    let version = client.apiserver_version().await.expect("the apiserver's version").git_version;
    let chart = helm::chart_dir();
    let trusted = format!("approvalPolicy.trustedAppliers={}", serde_json::json!(trusted_appliers));
    let mut args = vec!["template", "silverline", chart.to_str().expect("a UTF-8 chart path")];
    args.extend(["--namespace", namespace, "--kube-version", version.as_str()]);
    args.extend(["--show-only", "templates/approval-policy.yaml", "--set-json", trusted.as_str()]);
    if mode == Mode::WithMutatingPolicy {
        args.extend(["--api-versions", MAP_API_VERSION]);
    }
    let out = helm::run(&args);
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    let docs = helm::documents(&String::from_utf8_lossy(&out.stdout));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().expect("kind")).collect();
    let expected: &[&str] = match mode {
        Mode::WithMutatingPolicy => &[
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ],
        Mode::ValidatingOnly => &["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"],
    };
    assert_eq!(kinds, expected, "the approval policy's objects as rendered for {mode:?}");
    docs
}

fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "MutatingAdmissionPolicy" => ApiResource::erase::<MutatingAdmissionPolicy>(&()),
        "MutatingAdmissionPolicyBinding" => ApiResource::erase::<MutatingAdmissionPolicyBinding>(&()),
        "ValidatingAdmissionPolicy" => ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
        "ValidatingAdmissionPolicyBinding" => ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&()),
        other => panic!("the approval policy template rendered an unexpected kind {other}"),
    }
}

/// Who the apiserver says the client is (a SelfSubjectReview).
async fn whoami(client: &Client) -> String {
    let review: SelfSubjectReview = Api::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("a SelfSubjectReview");
    review.status.and_then(|s| s.user_info).and_then(|u| u.username).expect("a username in the SelfSubjectReview")
}

/// The chart's approval policy, installed for one namespace. A failing test leaves its objects behind: they are
/// bound to that test's namespace only, which is deleted, so they judge nothing else.
struct InstalledPolicy {
    admin: Client,
    objects: Vec<(ApiResource, String)>,
}

impl InstalledPolicy {
    /// Renders the policy, renames its objects after `namespace`, binds them to that namespace only, applies them
    /// and waits until the apiserver enforces them (a dry-run probe, not a sleep).
    async fn install(admin: &Client, namespace: &str, mode: Mode, trusted_appliers: &[String]) -> InstalledPolicy {
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let label = serde_json::json!({"metadata": {"labels": {SCOPE_LABEL: namespace}}});
        namespaces.patch(namespace, &PatchParams::default(), &Patch::Merge(&label)).await.expect("label namespace");
        let mut objects = Vec::new();
        for mut doc in render_policy(admin, namespace, mode, trusted_appliers).await {
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            let name = format!("{}-{namespace}", doc["metadata"]["name"].as_str().expect("metadata.name"));
            doc["metadata"]["name"] = name.clone().into();
            if kind.ends_with("Binding") {
                let policy = doc["spec"]["policyName"].as_str().expect("spec.policyName");
                doc["spec"]["policyName"] = format!("{policy}-{namespace}").into();
                doc["spec"]["matchResources"] =
                    serde_json::json!({"namespaceSelector": {"matchLabels": {SCOPE_LABEL: namespace}}});
            }
            let resource = api_resource(&kind);
            let object: DynamicObject = serde_json::from_value(doc).expect("a rendered object");
            let api: Api<DynamicObject> = Api::all_with(admin.clone(), &resource);
            api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("the apiserver refused the rendered {kind} {name}: {e}"));
            objects.push((resource, name));
        }
        let installed = InstalledPolicy { admin: admin.clone(), objects };
        installed.wait_until_enforced(namespace, mode).await;
        installed
    }

    /// A dry-run create by the admin that names someone else as approver is refused by the own-name rule once the
    /// validating policy is in force, and (with the mutating policy) only once `created-by` was recorded, since
    /// the created-by rule comes first. With the mutating policy, a dry-run create must also come back with the
    /// admin recorded as creator.
    async fn wait_until_enforced(&self, namespace: &str, mode: Mode) {
        let admin_name = whoami(&self.admin).await;
        let api: Api<Promotion> = Api::namespaced(self.admin.clone(), namespace);
        let dry_run = PostParams { dry_run: true, ..PostParams::default() };
        eventually("the approval policy to be enforced", POLICY_TIMEOUT, || async {
            let mut annotations = vec![(ANNOTATION_APPROVED_BY, "policy-probe")];
            if mode == Mode::ValidatingOnly {
                annotations.push((CREATED_BY, admin_name.as_str()));
            }
            match api.create(&dry_run, &promotion("policy-probe", &annotations)).await {
                Err(kube::Error::Api(s)) if s.message.contains("denied request: own name:") => {}
                _ => return None,
            }
            if mode == Mode::WithMutatingPolicy {
                let created = api.create(&dry_run, &promotion("policy-probe", &[])).await.ok()?;
                (annotation(&created, CREATED_BY) == Some(admin_name.as_str())).then_some(())
            } else {
                Some(())
            }
        })
        .await;
    }

    async fn remove(self) {
        for (resource, name) in self.objects.iter().rev() {
            let api: Api<DynamicObject> = Api::all_with(self.admin.clone(), resource);
            api.delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("cannot delete the test's {} {name}: {e}", resource.kind));
        }
    }
}

/// A real identity: a ServiceAccount's token from the TokenRequest API.
struct Identity {
    username: String,
    client: Client,
}

impl Identity {
    async fn service_account(admin: &Client, namespace: &str, name: &str) -> Identity {
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        let account: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ServiceAccount");
        accounts.create(&PostParams::default(), &account).await.expect("create ServiceAccount");
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() }),
            ..TokenRequest::default()
        };
        let issued: TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("no token for ServiceAccount {name}: {e}"));
        let token = issued.status.and_then(|s| s.token).expect("a token in the TokenRequest's status");
        let mut config = kube::Config::infer().await.expect("the test kubeconfig");
        config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..kube::config::AuthInfo::default() };
        let client = silverline_operator::apiserver::client_from(config, support::API_TIMEOUT)
            .expect("a client with the ServiceAccount's token");
        let username = whoami(&client).await;
        assert_eq!(username, format!("system:serviceaccount:{namespace}:{name}"), "the token's identity");
        Identity { username, client }
    }

    /// The operator's identity from a kubeconfig file.
    async fn from_kubeconfig(path: &Path) -> Identity {
        let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("a config from the kubeconfig");
        let client = silverline_operator::apiserver::client_from(config, support::API_TIMEOUT).expect("a client");
        let username = whoami(&client).await;
        Identity { username, client }
    }

    async fn create(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> kube::Result<Promotion> {
        let api: Api<Promotion> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), &promotion(name, annotations)).await
    }

    /// Sets (`Some`) or removes (`None`) annotations with a merge patch, as `kubectl annotate` does.
    async fn annotate(&self, namespace: &str, name: &str, changes: &[(&str, Option<&str>)]) -> kube::Result<Promotion> {
        let api: Api<Promotion> = Api::namespaced(self.client.clone(), namespace);
        let map: serde_json::Map<String, serde_json::Value> =
            changes.iter().map(|(k, v)| ((*k).to_owned(), serde_json::json!(v))).collect();
        let patch = serde_json::json!({"metadata": {"annotations": map}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await
    }

    async fn approve(&self, namespace: &str, name: &str, approved_by: &str) -> kube::Result<Promotion> {
        let changes =
            [(ANNOTATION_APPROVED_BY, Some(approved_by)), (ANNOTATION_APPROVAL_REASON, Some("counts checked"))];
        self.annotate(namespace, name, &changes).await
    }

    async fn reject(&self, namespace: &str, name: &str, rejected_by: &str) -> kube::Result<Promotion> {
        let changes = [(ANNOTATION_REJECTED_BY, Some(rejected_by)), (ANNOTATION_REJECTION_REASON, Some("wrong month"))];
        self.annotate(namespace, name, &changes).await
    }
}

fn promotion(name: &str, annotations: &[(&str, &str)]) -> Promotion {
    let mut p = Promotion::new(
        name,
        PromotionSpec {
            dataset: "transactions".into(),
            run_ids: Some(vec!["20240101T000000Z-abc-a1".into()]),
            restore_version: None,
            mode: None,
            reason: "monthly load".into(),
        },
    );
    p.metadata.annotations = Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    p
}

/// Creates an EtlRun of the transactions dataset as `client`'s user, with `annotations`.
async fn create_run_as(
    client: &Client,
    namespace: &str,
    name: &str,
    input: &Path,
    annotations: &[(&str, &str)],
) -> kube::Result<silverline_crds::EtlRun> {
    let spec = silverline_crds::EtlRunSpec {
        dataset: "transactions".into(),
        input: input.display().to_string(),
        resources: None,
        deadline_seconds: None,
    };
    let mut run = silverline_crds::EtlRun::new(name, spec);
    run.metadata.annotations = Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    Api::namespaced(client.clone(), namespace).create(&PostParams::default(), &run).await
}

fn annotation<'a>(promotion: &'a Promotion, key: &str) -> Option<&'a str> {
    promotion.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Asserts that the approval policy refused the request (403 from the ValidatingAdmissionPolicy) with a message
/// holding each of `says`; returns the message.
fn refused<T: std::fmt::Debug>(result: kube::Result<T>, says: &[&str]) -> String {
    let status = match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected the approval policy to refuse, got {other:?}"),
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(status.message.contains("ValidatingAdmissionPolicy"), "not refused by the policy: {}", status.message);
    for part in says {
        assert!(status.message.contains(part), "the refusal does not say {part:?}: {}", status.message);
    }
    status.message
}

/// A Role in `namespace` with `verbs` on promotions, bound to `subjects` (ServiceAccounts of that namespace).
async fn grant(admin: &Client, namespace: &str, role: &str, verbs: &[&str], subjects: &[&str]) {
    grant_on(admin, namespace, "promotions", role, verbs, subjects).await;
}

/// A Role in `namespace` with `verbs` on `resource` (of etl.silverline.dev), bound to `subjects`.
async fn grant_on(admin: &Client, namespace: &str, resource: &str, role: &str, verbs: &[&str], subjects: &[&str]) {
    let pp = PostParams::default();
    let rules = serde_json::json!([{"apiGroups": ["etl.silverline.dev"], "resources": [resource], "verbs": verbs}]);
    let r: Role =
        serde_json::from_value(serde_json::json!({"metadata": {"name": role}, "rules": rules})).expect("Role");
    Api::<Role>::namespaced(admin.clone(), namespace).create(&pp, &r).await.expect("create Role");
    let bound: Vec<serde_json::Value> = subjects
        .iter()
        .map(|s| serde_json::json!({"kind": "ServiceAccount", "name": s, "namespace": namespace}))
        .collect();
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": bound,
    }))
    .expect("RoleBinding");
    Api::<RoleBinding>::namespaced(admin.clone(), namespace).create(&pp, &binding).await.expect("create RoleBinding");
    // The apiserver's RBAC authorizer learns of a new binding from its informers, a moment after the create
    // returns; the policy's `authorizer` check would refuse until then. Wait until it answers yes for every verb.
    for subject in subjects {
        for verb in verbs {
            let user = format!("system:serviceaccount:{namespace}:{subject}");
            let access = support::Access { group: "etl.silverline.dev", resource, verb };
            support::wait_until_allowed(admin, &user, Some(namespace), access).await;
        }
    }
}

/// Approvers hold `approve` (and patch, to annotate); requesters create and may patch, but not approve.
const APPROVER_VERBS: &[&str] = &["get", "list", "watch", "patch", "update", "approve"];
const REQUESTER_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "update"];

/// A namespace with the policy and the cast: alice requests (and holds `approve` too), bob approves, carol only
/// requests, `argocd-application-controller` is the trusted GitOps applier (holding `approve`), `ci-bot` holds
/// `approve` but is not trusted; `admin` is the control plane's static admin token (system:masters).
struct Cast {
    ns: TestNamespace,
    policy: InstalledPolicy,
    admin: Identity,
    alice: Identity,
    bob: Identity,
    carol: Identity,
    gitops: Identity,
    ci_bot: Identity,
}

impl Cast {
    async fn new(prefix: &str, mode: Mode) -> Cast {
        let admin = support::client().await;
        support::install_crds(&admin).await;
        let ns = TestNamespace::create(&admin, prefix).await;
        let n = ns.name.clone();
        let trusted = vec![format!("system:serviceaccount:{n}:argocd-application-controller")];
        let policy = InstalledPolicy::install(&admin, &n, mode, &trusted).await;
        let alice = Identity::service_account(&admin, &n, "alice").await;
        let bob = Identity::service_account(&admin, &n, "bob").await;
        let carol = Identity::service_account(&admin, &n, "carol").await;
        let gitops = Identity::service_account(&admin, &n, "argocd-application-controller").await;
        let ci_bot = Identity::service_account(&admin, &n, "ci-bot").await;
        assert_eq!(gitops.username, trusted[0]);
        grant(&admin, &n, "promotion-requester", REQUESTER_VERBS, &["alice", "carol", "argocd-application-controller"])
            .await;
        grant(
            &admin,
            &n,
            "promotion-approver",
            APPROVER_VERBS,
            &["alice", "bob", "argocd-application-controller", "ci-bot"],
        )
        .await;
        let admin = Identity { username: whoami(&admin).await, client: admin };
        Cast { ns, policy, admin, alice, bob, carol, gitops, ci_bot }
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }

    /// A Promotion alice created (with the mutating policy, the apiserver records her as creator).
    async fn requested_by_alice(&self, name: &str, mode: Mode) -> Promotion {
        let own = [(CREATED_BY, self.alice.username.as_str())];
        let annotations: &[(&str, &str)] = if mode == Mode::ValidatingOnly { &own } else { &[] };
        let created = self.alice.create(self.ns(), name, annotations).await.expect("alice creates a Promotion");
        assert_eq!(annotation(&created, CREATED_BY), Some(self.alice.username.as_str()));
        created
    }

    async fn current(&self, name: &str) -> Promotion {
        Api::<Promotion>::namespaced(self.admin.client.clone(), self.ns()).get(name).await.expect("get Promotion")
    }

    async fn finish(self) {
        self.policy.remove().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn an_approver_holding_the_verb_approves_a_promotion_someone_else_created() {
    let cast = Cast::new("policy-approve", Mode::WithMutatingPolicy).await;
    cast.requested_by_alice("tx-jan", Mode::WithMutatingPolicy).await;
    let approved = cast.bob.approve(cast.ns(), "tx-jan", &cast.bob.username).await.expect("bob approves");
    assert_eq!(annotation(&approved, ANNOTATION_APPROVED_BY), Some(cast.bob.username.as_str()));
    assert_eq!(annotation(&approved, CREATED_BY), Some(cast.alice.username.as_str()), "the creator stays recorded");
    // Changing other things (here a label) needs no approval rights.
    let api: Api<Promotion> = Api::namespaced(cast.carol.client.clone(), cast.ns());
    let label = serde_json::json!({"metadata": {"labels": {"team": "finance"}}});
    api.patch("tx-jan", &PatchParams::default(), &Patch::Merge(&label)).await.expect("carol labels it");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn approving_is_refused_without_the_verb_by_the_creator_with_a_forged_name_and_by_an_untrusted_service_account() {
    let cast = Cast::new("policy-refuse", Mode::WithMutatingPolicy).await;
    let ns = cast.ns().to_owned();
    cast.requested_by_alice("tx-jan", Mode::WithMutatingPolicy).await;

    let carol = cast.carol.username.as_str();
    refused(cast.carol.approve(&ns, "tx-jan", carol).await, &["approve verb:", carol, "RBAC verb approve"]);

    let alice = cast.alice.username.as_str();
    refused(cast.alice.approve(&ns, "tx-jan", alice).await, &["four eyes:", alice, "may not also approve it"]);

    let admin = cast.admin.username.as_str();
    let forged = refused(cast.admin.approve(&ns, "tx-jan", "jane.doe").await, &["own name:", admin, "'jane.doe'"]);
    assert!(!forged.contains("service account"), "the admin is a user, not a service account: {forged}");

    let bot = cast.ci_bot.username.as_str();
    refused(
        cast.ci_bot.approve(&ns, "tx-jan", "jane.doe").await,
        &["own name:", format!("service account {bot}").as_str(), "not one", "'jane.doe'"],
    );
    // A user without the verb cannot remove someone else's approval either.
    cast.bob.approve(&ns, "tx-jan", &cast.bob.username).await.expect("bob approves");
    refused(cast.carol.annotate(&ns, "tx-jan", &[(ANNOTATION_APPROVED_BY, None)]).await, &["approve verb:", carol]);

    let now = cast.current("tx-jan").await;
    assert_eq!(annotation(&now, ANNOTATION_APPROVED_BY), Some(cast.bob.username.as_str()), "only bob's approval");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn a_trusted_applier_records_the_git_reviewer_but_never_the_creator() {
    let cast = Cast::new("policy-gitops", Mode::WithMutatingPolicy).await;
    let ns = cast.ns().to_owned();
    // Reviewed in Git: Argo CD creates the Promotion already approved by the reviewer.
    let from_git = [(ANNOTATION_APPROVED_BY, "jane.doe@example.com"), (ANNOTATION_APPROVAL_REASON, "PR #42")];
    let created = cast.gitops.create(&ns, "tx-git", &from_git).await.expect("the trusted applier creates it approved");
    assert_eq!(annotation(&created, CREATED_BY), Some(cast.gitops.username.as_str()));
    assert_eq!(annotation(&created, ANNOTATION_APPROVED_BY), Some("jane.doe@example.com"));

    // Or approves a Promotion someone created in the cluster.
    cast.requested_by_alice("tx-jan", Mode::WithMutatingPolicy).await;
    let approved = cast.gitops.approve(&ns, "tx-jan", "jane.doe@example.com").await.expect("trusted applier approves");
    assert_eq!(annotation(&approved, ANNOTATION_APPROVED_BY), Some("jane.doe@example.com"));

    // Never in the creator's name.
    cast.requested_by_alice("tx-feb", Mode::WithMutatingPolicy).await;
    let alice = cast.alice.username.as_str();
    refused(cast.gitops.approve(&ns, "tx-feb", alice).await, &["four eyes:", alice]);
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn a_name_with_surrounding_whitespace_is_refused_because_the_operator_reads_it_trimmed() {
    let cast = Cast::new("policy-space", Mode::WithMutatingPolicy).await;
    let ns = cast.ns().to_owned();
    let requested = cast.requested_by_alice("tx-jan", Mode::WithMutatingPolicy).await;
    let alice = cast.alice.username.as_str();
    // What the operator would read: the creator, as the approver of their own Promotion.
    let mut padded = requested.clone();
    let padded_alice = format!("{alice} ");
    padded.annotations_mut().insert(ANNOTATION_APPROVED_BY.to_owned(), padded_alice.clone());
    assert_eq!(padded.approval().map(|(by, _)| by), Some(alice), "the operator trims approved-by");

    // The trusted applier may name someone else, but not the creator with a trailing space.
    let gitops = cast.gitops.username.as_str();
    refused(
        cast.gitops.approve(&ns, "tx-jan", &padded_alice).await,
        &["whitespace:", ANNOTATION_APPROVED_BY, gitops, &format!("\"{padded_alice}\"")],
    );
    refused(cast.gitops.approve(&ns, "tx-jan", " jane.doe@example.com").await, &["whitespace:", gitops]);
    refused(
        cast.gitops.reject(&ns, "tx-jan", "jane.doe@example.com\t").await,
        &["whitespace:", ANNOTATION_REJECTED_BY],
    );
    let bob = cast.bob.username.as_str();
    refused(cast.bob.approve(&ns, "tx-jan", &format!("{bob}\n")).await, &["whitespace:", &format!("\"{bob}\\n\"")]);
    // A trusted applier creating a Promotion already approved, with a padded name, is refused too.
    let from_git = [(ANNOTATION_APPROVED_BY, " jane.doe@example.com ")];
    refused(cast.gitops.create(&ns, "tx-git", &from_git).await, &["whitespace:", gitops]);

    let now = cast.current("tx-jan").await;
    assert_eq!(annotation(&now, ANNOTATION_APPROVED_BY), None, "no padded approval was recorded: {now:?}");
    assert_eq!(annotation(&now, ANNOTATION_REJECTED_BY), None, "no padded rejection was recorded: {now:?}");
    cast.bob.approve(&ns, "tx-jan", bob).await.expect("bob approves in his exact name");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn created_by_is_the_creating_user_and_cannot_be_changed() {
    let cast = Cast::new("policy-creator", Mode::WithMutatingPolicy).await;
    let ns = cast.ns().to_owned();
    // A creator naming someone else is corrected by the apiserver.
    let claimed = [(CREATED_BY, cast.bob.username.as_str())];
    let created = cast.alice.create(&ns, "tx-jan", &claimed).await.expect("alice creates it");
    assert_eq!(annotation(&created, CREATED_BY), Some(cast.alice.username.as_str()));

    let bob = cast.bob.username.as_str();
    refused(
        cast.bob.annotate(&ns, "tx-jan", &[(CREATED_BY, Some(bob))]).await,
        &["created-by is immutable:", bob, cast.alice.username.as_str()],
    );
    let admin = cast.admin.username.as_str();
    refused(cast.admin.annotate(&ns, "tx-jan", &[(CREATED_BY, None)]).await, &["created-by is immutable:", admin]);
    // Then bob, who could not pose as the creator, approves.
    cast.bob.approve(&ns, "tx-jan", bob).await.expect("bob approves");
    assert_eq!(annotation(&cast.current("tx-jan").await, CREATED_BY), Some(cast.alice.username.as_str()));
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn a_rejection_follows_the_same_rules() {
    let cast = Cast::new("policy-reject", Mode::WithMutatingPolicy).await;
    let ns = cast.ns().to_owned();
    cast.requested_by_alice("tx-jan", Mode::WithMutatingPolicy).await;
    let carol = cast.carol.username.as_str();
    refused(cast.carol.reject(&ns, "tx-jan", carol).await, &["approve verb:", carol, "rejected-by"]);
    let alice = cast.alice.username.as_str();
    refused(cast.alice.reject(&ns, "tx-jan", alice).await, &["four eyes:", alice, "may not also reject it"]);
    let bot = cast.ci_bot.username.as_str();
    refused(cast.ci_bot.reject(&ns, "tx-jan", "jane.doe").await, &["own name:", bot, "rejected-by"]);
    let rejected = cast.bob.reject(&ns, "tx-jan", &cast.bob.username).await.expect("bob rejects");
    assert_eq!(annotation(&rejected, ANNOTATION_REJECTED_BY), Some(cast.bob.username.as_str()));
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn without_a_mutating_policy_the_creator_must_name_themselves_in_created_by() {
    let cast = Cast::new("policy-vap-only", Mode::ValidatingOnly).await;
    let ns = cast.ns().to_owned();
    let alice = cast.alice.username.as_str();
    refused(cast.alice.create(&ns, "tx-jan", &[]).await, &["created-by:", alice, "missing"]);
    let bob = cast.bob.username.as_str();
    refused(
        cast.alice.create(&ns, "tx-jan", &[(CREATED_BY, bob)]).await,
        &["created-by:", alice, format!("not {bob}").as_str()],
    );
    cast.requested_by_alice("tx-jan", Mode::ValidatingOnly).await;
    refused(cast.alice.approve(&ns, "tx-jan", alice).await, &["four eyes:", alice]);
    cast.bob.approve(&ns, "tx-jan", bob).await.expect("bob approves");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn the_operator_requests_and_promotes_under_the_policy_but_cannot_approve() {
    operator_under_the_policy("policy-operator", Mode::WithMutatingPolicy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG) and helm (SILVERLINE_HELM): run ./scripts/test.sh"]
async fn without_a_mutating_policy_the_operator_names_itself_on_the_promotions_it_requests() {
    // As installed from operator/deploy/, or by the chart before Kubernetes 1.36: the validating half alone.
    operator_under_the_policy("policy-op-vap", Mode::ValidatingOnly).await;
}

async fn operator_under_the_policy(prefix: &str, mode: Mode) {
    let s = Scenario::new(prefix).await;
    let ns = s.ns.name.clone();
    let policy = InstalledPolicy::install(&s.client, &ns, mode, &[]).await;
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.promotion.request_on_success = true;
    create_dataset(&s.client, &ns, &dataset).await;
    let kubeconfig = s.operator_service_account().await;
    let operator = Identity::from_kubeconfig(&kubeconfig).await;
    let op = support::Operator::start(support::OperatorOptions {
        namespace: &ns,
        identity: "replica-a",
        log_dir: s.dir.path(),
        kubeconfig: Some(&kubeconfig),
        env: vec![],
    })
    .await;
    // alice runs the data: she creates the EtlRun (recorded as its creator: by the apiserver, or in her own name
    // where no mutating policy does it), and holds the approve verb on Promotions too.
    let alice = Identity::service_account(&s.client, &ns, "alice").await;
    grant_on(&s.client, &ns, "etlruns", "run-creator", &["get", "list", "watch", "create", "patch"], &["alice"]).await;
    grant(&s.client, &ns, "alice-approver", APPROVER_VERBS, &["alice"]).await;
    let input = s.input("tx-pol.csv", support::TRANSACTIONS_CSV);
    let bob_name = format!("system:serviceaccount:{ns}:bob");
    let claims_bob = [(CREATED_BY, bob_name.as_str())];
    if mode == Mode::ValidatingOnly {
        // Naming someone else as the run's creator is refused (left out, the creator is unknown).
        let refusal = create_run_as(&alice.client, &ns, "tx-forged-run", &input, &claims_bob).await;
        refused(refusal, &["created-by:", alice.username.as_str(), format!("not {bob_name}").as_str()]);
    }
    let own = [(CREATED_BY, alice.username.as_str())];
    let annotations: &[(&str, &str)] = if mode == Mode::ValidatingOnly { &own } else { &claims_bob };
    let created =
        create_run_as(&alice.client, &ns, "tx-pol", &input, annotations).await.expect("alice creates the run");
    assert_eq!(created.annotations().get(CREATED_BY), Some(&alice.username), "the run's creator is recorded");
    let runs: Api<silverline_crds::EtlRun> = Api::namespaced(s.client.clone(), &ns);
    let change = serde_json::json!({"metadata": {"annotations": {CREATED_BY: bob_name}}});
    let changed = runs.patch("tx-pol", &PatchParams::default(), &Patch::Merge(&change)).await;
    refused(changed, &["created-by is immutable:", alice.username.as_str()]);
    let run = finished(&s.client, &ns, "tx-pol", Duration::from_secs(120)).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));

    // requestOnSuccess: the operator created the Promotion (recorded as its creator) and wrote its status.
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &ns);
    let requested = eventually("the operator's Promotion awaiting approval", Duration::from_secs(30), || async {
        let p = api.get("tx-pol-promo").await.ok()?;
        (p.phase() == Some(PromotionPhase::AwaitingApproval)).then_some(p)
    })
    .await;
    assert_eq!(annotation(&requested, CREATED_BY), Some(operator.username.as_str()));
    // status.createdBy is the apiserver's record of the creator, not the free-text requested-by.
    let created_by = requested.status.as_ref().and_then(|st| st.created_by.as_deref());
    assert_eq!(created_by, Some(operator.username.as_str()));
    // The run's creator asked for it, and may neither approve it nor take her name off it.
    assert_eq!(annotation(&requested, ANNOTATION_REQUESTED_BY), Some(alice.username.as_str()));
    refused(
        alice.approve(&ns, "tx-pol-promo", &alice.username).await,
        &["four eyes:", alice.username.as_str(), "created the EtlRun", "may not also approve it"],
    );
    refused(
        alice.annotate(&ns, "tx-pol-promo", &[(ANNOTATION_REQUESTED_BY, Some("someone-else"))]).await,
        &["requested-by is immutable", alice.username.as_str()],
    );

    // The operator can create Promotions, but not approved ones, and cannot approve its own.
    // (Naming itself as creator, as it must where no mutating policy does it.)
    let forged = [(ANNOTATION_APPROVED_BY, "jane"), (CREATED_BY, operator.username.as_str())];
    refused(operator.create(&ns, "tx-forged", &forged).await, &["approve verb:"]);
    let own = operator.approve(&ns, "tx-pol-promo", &operator.username).await;
    assert!(matches!(&own, Err(kube::Error::Api(s)) if s.code == 403), "the operator approved: {own:?}");

    let approver = Identity::service_account(&s.client, &ns, "bob").await;
    grant(&s.client, &ns, "promotion-approver", APPROVER_VERBS, &["bob"]).await;
    approver.approve(&ns, "tx-pol-promo", &approver.username).await.expect("bob approves");
    let promoted = eventually("the approved Promotion promoted", Duration::from_secs(90), || async {
        let p = api.get("tx-pol-promo").await.ok()?;
        p.phase().is_some_and(PromotionPhase::is_terminal).then_some(p)
    })
    .await;
    let status = promoted.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.approved_by.as_deref(), Some(approver.username.as_str()));
    assert!(s.lake().join("silver/transactions/_LATEST.json").exists(), "no _LATEST.json after the promotion");
    assert!(!op.logs().contains("denied request"), "the policy refused the operator something:\n{}", op.logs());
    policy.remove().await;
}
