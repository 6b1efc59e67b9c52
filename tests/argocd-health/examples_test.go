// The manifests under examples/ (what GitOps repositories copy, and what the Argo CD Applications sync): each
// document has a fixed, valid name — never generateName, which Argo CD and `kubectl apply` cannot track — and
// each one the test apiserver can serve passes a server-side dry run of its create (schema, CEL rules, strict
// field validation). The dry run needs the test control plane: scripts/test.sh starts it and sets
// SILVERLINE_REQUIRE_CP=1, so there a missing control plane fails instead of skipping.
package argocdhealth

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// manifest is one YAML document of a file under examples/.
type manifest struct {
	file   string
	index  int
	object map[string]any
}

func (m manifest) String() string {
	return fmt.Sprintf("%s (document %d, %v %q)", m.file, m.index+1, m.object["kind"], m.name())
}

func (m manifest) meta(key string) string {
	meta, _ := m.object["metadata"].(map[string]any)
	value, _ := meta[key].(string)
	return value
}

func (m manifest) name() string { return m.meta("name") }

var documentSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// examples reads every YAML document under examples/ that is a Kubernetes object (has a kind).
func examples(t *testing.T) []manifest {
	t.Helper()
	var out []manifest
	root := filepath.Join(repoRoot, "examples")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, path)
		for i, doc := range documentSeparator.Split(string(data), -1) {
			var object map[string]any
			if err := yaml.Unmarshal([]byte(doc), &object); err != nil {
				return fmt.Errorf("%s document %d is not YAML: %w", rel, i+1, err)
			}
			if object == nil || object["kind"] == nil {
				continue
			}
			out = append(out, manifest{file: rel, index: i, object: object})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading examples/: %v", err)
	}
	if len(out) == 0 {
		t.Fatal("no manifests under examples/")
	}
	return out
}

var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	// The longest names the CRDs accept (the operator derives Job and ConfigMap names from them).
	maxName = map[string]int{"Dataset": 63, "EtlRun": 50, "Promotion": 56}
)

func TestExampleManifestsUseFixedValidNames(t *testing.T) {
	kinds := map[string]int{}
	for _, m := range examples(t) {
		kind, _ := m.object["kind"].(string)
		kinds[kind]++
		if m.meta("generateName") != "" {
			t.Errorf("%s uses generateName: give it a fixed name (GitOps tools and kubectl apply track objects by name)", m)
		}
		name := m.name()
		switch {
		case name == "":
			t.Errorf("%s has no metadata.name", m)
		case maxName[kind] > 0 && (!dnsLabel.MatchString(name) || len(name) > maxName[kind]):
			t.Errorf("%s: the name must be a DNS label of at most %d characters", m, maxName[kind])
		case !dnsSubdomain.MatchString(name):
			t.Errorf("%s: the name is not a DNS subdomain", m)
		}
		if ns := m.meta("namespace"); ns != "" && !dnsLabel.MatchString(ns) {
			t.Errorf("%s: namespace %q is not a DNS label", m, ns)
		}
	}
	for kind := range maxName {
		if kinds[kind] == 0 {
			t.Errorf("no example manifest of kind %s", kind)
		}
	}
}

// Where a kind is created, and whether it is namespaced. A kind missing here fails the dry-run test until added.
var resources = map[string]struct {
	path       string
	namespaced bool
}{
	"Namespace":   {"/api/v1/namespaces", false},
	"ConfigMap":   {"/api/v1/configmaps", true},
	"Service":     {"/api/v1/services", true},
	"Deployment":  {"/apis/apps/v1/deployments", true},
	"Role":        {"/apis/rbac.authorization.k8s.io/v1/roles", true},
	"RoleBinding": {"/apis/rbac.authorization.k8s.io/v1/rolebindings", true},
	"Dataset":     {"/apis/etl.silverline.dev/v1alpha1/datasets", true},
	"EtlRun":      {"/apis/etl.silverline.dev/v1alpha1/etlruns", true},
	"Promotion":   {"/apis/etl.silverline.dev/v1alpha1/promotions", true},
}

// Kinds whose CRDs the test apiserver does not have (their names are still checked above).
var notServed = map[string]string{"Application": "argoproj.io (Argo CD's CRD)"}

// The namespace of examples that name none (they are applied with `kubectl -n NS`).
const defaultNamespace = "silverline-examples"

// apiserver talks to the test control plane with the admin token of scripts/controlplane.sh.
type apiserver struct {
	t      *testing.T
	server string
	token  string
	client *http.Client
}

func testAPIServer(t *testing.T) *apiserver {
	t.Helper()
	server, token, caFile := os.Getenv("SILVERLINE_CP_SERVER"), os.Getenv("SILVERLINE_CP_TOKEN"), os.Getenv("SILVERLINE_CP_CACERT")
	if server == "" || token == "" || caFile == "" {
		if os.Getenv("SILVERLINE_REQUIRE_CP") == "1" {
			t.Fatal("SILVERLINE_CP_SERVER, SILVERLINE_CP_TOKEN and SILVERLINE_CP_CACERT are not set: source the control plane's env")
		}
		t.Skip("needs the test control plane (SILVERLINE_CP_*): run ./scripts/test.sh")
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatalf("cannot read the control plane's CA %s: %v", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("%s holds no PEM certificate", caFile)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return &apiserver{t: t, server: strings.TrimRight(server, "/"), token: token, client: client}
}

// do sends one request and returns the status code and body.
func (a *apiserver) do(method, path, contentType string, body []byte) (int, string) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.server+path, bytes.NewReader(body))
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(text)
}

// installCRDs applies the committed CRDs (server-side apply, as the operator's tests do) and waits until served.
func (a *apiserver) installCRDs() {
	a.t.Helper()
	for _, file := range kinds {
		data := readFile(a.t, file)
		var crd struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		if err := yaml.Unmarshal(data, &crd); err != nil || crd.Metadata.Name == "" {
			a.t.Fatalf("%s is not a named CRD: %v", file, err)
		}
		path := "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/" + crd.Metadata.Name + "?fieldManager=silverline-tests&force=true"
		if code, body := a.do(http.MethodPatch, path, "application/apply-patch+yaml", data); code != http.StatusOK && code != http.StatusCreated {
			a.t.Fatalf("the apiserver refused %s: %d %s", file, code, body)
		}
	}
	for _, kind := range []string{"Dataset", "EtlRun", "Promotion"} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, body := a.do(http.MethodGet, resources[kind].path, "", nil)
			if code == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				a.t.Fatalf("%s are not served 30 s after the CRD was applied: %d %s", kind, code, body)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// ensureNamespace creates a namespace unless it exists.
func (a *apiserver) ensureNamespace(name string) {
	a.t.Helper()
	body, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name}})
	if code, text := a.do(http.MethodPost, "/api/v1/namespaces", "application/json", body); code != http.StatusCreated && code != http.StatusConflict {
		a.t.Fatalf("cannot create namespace %s: %d %s", name, code, text)
	}
}

// createPath is where a dry-run create of the object goes.
func createPath(kind, namespace string) string {
	r := resources[kind]
	if !r.namespaced {
		return r.path
	}
	group, plural := r.path[:strings.LastIndex(r.path, "/")], r.path[strings.LastIndex(r.path, "/")+1:]
	return group + "/namespaces/" + url.PathEscape(namespace) + "/" + plural
}

func TestExampleManifestsPassAServerSideDryRun(t *testing.T) {
	api := testAPIServer(t)
	api.installCRDs()
	for _, m := range examples(t) {
		kind, _ := m.object["kind"].(string)
		t.Run(fmt.Sprintf("%s#%d", m.file, m.index+1), func(t *testing.T) {
			api.t = t
			if why, ok := notServed[kind]; ok {
				t.Skipf("%s: the test apiserver does not serve %s", m, why)
			}
			r, ok := resources[kind]
			if !ok {
				t.Fatalf("%s: kind %s is not in this test's table of resources: add it", m, kind)
			}
			namespace := ""
			if r.namespaced {
				namespace = m.meta("namespace")
				if namespace == "" {
					namespace = defaultNamespace
				}
				api.ensureNamespace(namespace)
			}
			body, err := json.Marshal(m.object)
			if err != nil {
				t.Fatalf("%s: %v", m, err)
			}
			code, text := api.do(http.MethodPost, createPath(kind, namespace)+"?dryRun=All&fieldValidation=Strict", "application/json", body)
			// A Namespace that an earlier example needed already exists: its create answers 409, which is fine.
			if code != http.StatusCreated && !(kind == "Namespace" && code == http.StatusConflict) {
				t.Errorf("%s: the apiserver refused a dry-run create: %d %s", m, code, text)
			}
		})
	}
}
