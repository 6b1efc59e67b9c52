#!/usr/bin/env bash
# scripts/gotool.sh — build (once, cached) a developer tool from its Go module, pinned in tests/tools/NAME/go.mod
# (no prebuilt downloads: only the Go module proxy is used).
#
# Usage:
#   scripts/gotool.sh path NAME     build if needed; print the tool's binary path on stdout
#   scripts/gotool.sh build NAME    the same, printing nothing on stdout
#
# tests/tools/NAME/ holds go.mod, go.sum, tools.go (a blank import of the main package, so `go mod tidy` keeps it)
# and a file `PACKAGE` with one line: the main package to build (e.g. helm.sh/helm/v3/cmd/helm). The binary is
# $SILVERLINE_CACHE/tool-NAME-<hash>/NAME, where <hash> covers go.mod, go.sum, PACKAGE, this recipe and `go version`,
# so a version bump builds a new one and nothing stale is ever used.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${SILVERLINE_CACHE:-$HOME/.cache/silverline}"
RECIPE="v1 CGO_ENABLED=0 -trimpath -buildvcs=false -ldflags=-s -w"

die() { echo "gotool: error: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: scripts/gotool.sh path|build NAME"
cmd="$1" name="$2"
[[ "$name" =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "bad tool name '$name'"
mod="$REPO_ROOT/tests/tools/$name"
[[ -f "$mod/go.mod" && -f "$mod/PACKAGE" ]] || die "no tool '$name': expected $mod/go.mod and $mod/PACKAGE"
command -v go >/dev/null 2>&1 || die "'go' is required to build $name"

go_env() { env -u GOFLAGS GOWORK=off CGO_ENABLED=0 "$@"; }
pkg="$(tr -d '[:space:]' <"$mod/PACKAGE")"
key="$( { cat "$mod/go.mod" "$mod/go.sum" "$mod/PACKAGE"; echo "$RECIPE"; (cd "$mod" && go_env go env GOVERSION GOOS GOARCH); } |
  sha256sum | cut -c1-16)"
dir="$CACHE_ROOT/tool-$name-$key"
bin="$dir/$name"

if [[ ! -x "$bin" ]]; then
  mkdir -p "$CACHE_ROOT"
  # Serialize concurrent builds of the same tool.
  exec 9>"$CACHE_ROOT/.tool-$name.lock"
  flock 9
  if [[ ! -x "$bin" ]]; then
    echo "gotool: building $name from $pkg (once; cached in $dir)" >&2
    tmp="$(mktemp -d "$CACHE_ROOT/.tool-$name.XXXXXX")"
    if ! (cd "$mod" && go_env go build -mod=mod -trimpath -buildvcs=false -ldflags='-s -w' -o "$tmp/$name" "$pkg"); then
      rm -rf "$tmp"
      die "go build of $pkg failed"
    fi
    rm -rf "$dir"
    mv "$tmp" "$dir"
  fi
fi

case "$cmd" in
  path) echo "$bin" ;;
  build) ;;
  *) die "unknown command '$cmd' (path|build)" ;;
esac
