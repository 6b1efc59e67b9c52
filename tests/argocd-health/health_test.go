// Package argocdhealth runs Silverline's Argo CD health checks (examples/argocd/argocd-cm-health.yaml) the way
// Argo CD runs them — gopher-lua at Argo CD's version, only the base, package and table libraries, the object as
// the global `obj`, the returned table read as {status, message} — on sample objects in every phase
// (testdata/*.yaml). The phases come from the committed CRDs, so a new phase fails here until it has a case.
package argocdhealth

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

const (
	repoRoot    = "../.."
	healthFile  = "examples/argocd/argocd-cm-health.yaml"
	healthKey   = "resource.customizations.health.etl.silverline.dev_"
	scriptLimit = time.Second // Argo CD gives a health script one second
)

// The kinds that must have a health check, and the CRD file that lists each one's phases.
var kinds = map[string]string{
	"EtlRun":    "crds/generated/etlrun.yaml",
	"Promotion": "crds/generated/promotion.yaml",
	"Dataset":   "crds/generated/dataset.yaml",
}

// The statuses Argo CD accepts from a health script; anything else becomes Unknown with an error message.
var argoStatuses = []string{"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

// health is what Argo CD reads from the table a script returns.
type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// sample is one case of testdata/*.yaml: an object and the health it must get.
type sample struct {
	Name   string         `json:"name"`
	Object map[string]any `json:"object"`
	Want   struct {
		Status string `json:"status"`
		// Each must appear in the message.
		Message []string `json:"message"`
	} `json:"want"`
}

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatalf("cannot read %s: %v", rel, err)
	}
	return data
}

// scripts returns the health scripts of argocd-cm-health.yaml by kind.
func scripts(t *testing.T) map[string]string {
	t.Helper()
	var cm struct {
		Kind     string                `json:"kind"`
		Metadata struct{ Name string } `json:"metadata"`
		Data     map[string]string     `json:"data"`
	}
	if err := yaml.Unmarshal(readFile(t, healthFile), &cm); err != nil {
		t.Fatalf("%s is not YAML: %v", healthFile, err)
	}
	if cm.Kind != "ConfigMap" || cm.Metadata.Name != "argocd-cm" {
		t.Fatalf("%s must be the ConfigMap argocd-cm (a merge patch of it), got %s %q", healthFile, cm.Kind, cm.Metadata.Name)
	}
	out := map[string]string{}
	for key, script := range cm.Data {
		kind, ok := strings.CutPrefix(key, healthKey)
		if !ok {
			t.Fatalf("%s: key %q is not a health check of group etl.silverline.dev", healthFile, key)
		}
		out[kind] = script
	}
	return out
}

// toLua converts a decoded JSON/YAML value to Lua the way Argo CD hands an object to its scripts.
func toLua(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		table := L.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(L, item))
		}
		return table
	case map[string]any:
		table := L.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(L, item))
		}
		return table
	}
	panic(fmt.Sprintf("a YAML value of type %T", value))
}

// run executes a health script on obj in an interpreter with Argo CD's libraries only.
func run(script string, obj map[string]any) (health, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			return health{}, fmt.Errorf("opening the %s library: %w", lib.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptLimit)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return health{}, fmt.Errorf("the script failed: %w", err)
	}
	table, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return health{}, fmt.Errorf("the script returned a %s, not a table", L.Get(-1).Type())
	}
	var h health
	for _, field := range []struct {
		name string
		into *string
	}{{"status", &h.Status}, {"message", &h.Message}} {
		value, ok := table.RawGetString(field.name).(lua.LString)
		if !ok {
			return health{}, fmt.Errorf("the returned table's %s is a %s, not a string", field.name, table.RawGetString(field.name).Type())
		}
		*field.into = string(value)
	}
	if !slices.Contains(argoStatuses, h.Status) {
		return health{}, fmt.Errorf("status %q is not one Argo CD knows (%v)", h.Status, argoStatuses)
	}
	return h, nil
}

// phases reads the enum of status.phase from a committed CRD.
func phases(t *testing.T, crdFile string) []string {
	t.Helper()
	var crd struct {
		Spec struct {
			Versions []struct {
				Schema struct {
					OpenAPIV3Schema struct {
						Properties map[string]struct {
							Properties map[string]struct {
								Enum []string `json:"enum"`
							} `json:"properties"`
						} `json:"properties"`
					} `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, crdFile), &crd); err != nil {
		t.Fatalf("%s is not YAML: %v", crdFile, err)
	}
	if len(crd.Spec.Versions) == 0 {
		t.Fatalf("%s has no versions", crdFile)
	}
	return crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["status"].Properties["phase"].Enum
}

func samples(t *testing.T, kind string) []sample {
	t.Helper()
	file := "tests/argocd-health/testdata/" + strings.ToLower(kind) + ".yaml"
	var cases []sample
	if err := yaml.UnmarshalStrict(readFile(t, file), &cases); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if len(cases) == 0 {
		t.Fatalf("%s has no cases", file)
	}
	return cases
}

func TestEachResourceHasExactlyOneHealthCheck(t *testing.T) {
	got := scripts(t)
	for kind := range kinds {
		if strings.TrimSpace(got[kind]) == "" {
			t.Errorf("%s has no health check for %s (key %s%s)", healthFile, kind, healthKey, kind)
		}
	}
	for kind := range got {
		if _, ok := kinds[kind]; !ok {
			t.Errorf("%s has a health check for %s, which this test does not know: add its samples", healthFile, kind)
		}
	}
}

func TestHealthOfSampleObjectsInEveryPhase(t *testing.T) {
	all := scripts(t)
	for kind, crdFile := range kinds {
		covered := map[string]bool{}
		for _, c := range samples(t, kind) {
			t.Run(kind+"/"+c.Name, func(t *testing.T) {
				if c.Object["kind"] != kind {
					t.Fatalf("the sample is a %v, expected a %s", c.Object["kind"], kind)
				}
				got, err := run(all[kind], c.Object)
				if err != nil {
					t.Fatalf("health check of %s: %v", kind, err)
				}
				if got.Status != c.Want.Status {
					t.Errorf("status %q, want %q (message %q)", got.Status, c.Want.Status, got.Message)
				}
				for _, part := range c.Want.Message {
					if !strings.Contains(got.Message, part) {
						t.Errorf("message %q does not say %q", got.Message, part)
					}
				}
			})
			if status, ok := c.Object["status"].(map[string]any); ok {
				if phase, ok := status["phase"].(string); ok {
					covered[phase] = true
				}
			}
		}
		want := phases(t, crdFile)
		if kind != "Dataset" && len(want) == 0 {
			t.Errorf("%s lists no phases for %s", crdFile, kind)
		}
		for _, phase := range want {
			if !covered[phase] {
				t.Errorf("%s phase %s (from %s) has no sample in testdata", kind, phase, crdFile)
			}
		}
	}
}

// The interpreter must be as strict as Argo CD's, or a script using a library Argo CD lacks would pass here.
func TestTheInterpreterHasOnlyArgoCDsLibraries(t *testing.T) {
	obj := map[string]any{"kind": "EtlRun"}
	if _, err := run(`return {status = string.format("%s", "Healthy"), message = ""}`, obj); err == nil {
		t.Error("a script using the string library ran: Argo CD would fail it")
	}
	if _, err := run(`return {status = "Fine", message = ""}`, obj); err == nil {
		t.Error("a status Argo CD does not know was accepted")
	}
	if _, err := run(`while true do end`, obj); err == nil {
		t.Error("a script that never ends was not stopped")
	}
	got, err := run(`local t = {} table.insert(t, obj.kind) return {status = "Healthy", message = table.concat(t, ",")}`, obj)
	if err != nil || got != (health{Status: "Healthy", Message: "EtlRun"}) {
		t.Errorf("base and table libraries: got %+v, %v", got, err)
	}
}
