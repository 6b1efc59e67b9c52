//go:build tools

// Package s3server pins the SeaweedFS server used by the integration tests.
// It is never compiled into anything; scripts/s3server.sh builds the weed
// binary from this module's dependency graph.
package s3server

import (
	_ "github.com/seaweedfs/seaweedfs/weed"
)
