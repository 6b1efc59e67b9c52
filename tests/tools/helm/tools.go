//go:build tools

// Package tools pins helm, which lints, renders and installs charts/silverline in the chart tests.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
