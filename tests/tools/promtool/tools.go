//go:build tools

// Package tools pins promtool, which checks the alert rules (`promtool check rules`), runs their unit tests
// (`promtool test rules tests/alerts/*.test.yaml`) and lints the operator's /metrics output in the test script.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
