#!/usr/bin/env bash
# scripts/build-static.sh — builds the static binaries silverline-worker and silverline-operator that go into the
# container images (docker/Dockerfile runs this same script), checks that they are static, and copies them to an
# output folder.
#
# Usage:
#   scripts/build-static.sh [--quick] [--out DIR]
#
#   (default)  the release profile (what the images ship): target/x86_64-unknown-linux-gnu/release/
#   --quick    the dev profile, for the test script's check that the static build links and runs: the same
#              target, flags and C dependencies, without the release profile's optimisation and LTO, which
#              cost several minutes on 2 cores (CI's image job builds the release profile)
#   --out DIR  copy the two binaries there
#
# The binaries link glibc statically (the Rust target x86_64-unknown-linux-gnu with `-C target-feature=+crt-static`,
# so a static-pie executable): the same C library, allocator and memcpy as the host build the benchmarks measure.
# A musl build (x86_64-unknown-linux-musl) was what the images shipped until 2026-11-29, and it took 1.57x the CPU
# of the glibc build on the bench input — musl's allocator and its plain memcpy (bench/README, "What these figures
# are of"). glibc warns at link time that a static getaddrinfo wants its shared NSS modules at run time; with glibc
# 2.36 (Debian 12, the build image's) it did without them for `files` and `dns`: a static getaddrinfo in an empty
# root answered from /etc/hosts and from resolv.conf's nameserver, with or without an nsswitch.conf, and
# scripts/test.sh runs the static worker in an empty root against the S3 server by a name /etc/hosts gives. Needs glibc's static library (Debian's libc6-dev, installed with gcc) and a C
# compiler for the C parts (aws-lc, ring, zstd). SILVERLINE_GIT_SHA, when set, is the commit the worker records in
# `_SUCCESS` (the image build passes it: there is no .git in the build context). Prints the binaries' paths on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
BINARIES=(silverline-worker silverline-operator)

die() { echo "build-static: error: $*" >&2; exit 1; }

profile=release out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) profile=dev ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a folder"; out="$2"; shift ;;
    *) die "unknown argument '$1' (usage: scripts/build-static.sh [--quick] [--out DIR])" ;;
  esac
  shift
done

# Only for the target's own artifacts: with an explicit --target, cargo builds build scripts and proc macros
# (which cannot be static) for the host without these flags.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="${CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS:-} -C target-feature=+crt-static"

packages=()
for bin in "${BINARIES[@]}"; do packages+=(-p "$bin"); done
cargo_profile=(--release) dir=release
[[ "$profile" == dev ]] && cargo_profile=() dir=debug
start=$SECONDS
cargo build --locked --target "$TARGET" "${cargo_profile[@]}" "${packages[@]}" >&2
echo "build-static: $profile profile built in $((SECONDS - start)) s" >&2

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"
for bin in "${BINARIES[@]}"; do
  path="$target_dir/$TARGET/$dir/$bin"
  [[ -x "$path" ]] || die "cargo built no $path"
  # A static executable has no program interpreter (PT_INTERP) and needs no shared library.
  if LC_ALL=C readelf -lW "$path" | grep -q 'INTERP'; then
    die "$path is dynamically linked (it has a program interpreter): the image has no libc to load it with"
  fi
  if LC_ALL=C readelf -dW "$path" | grep -q '(NEEDED)'; then
    die "$path needs shared libraries: $(LC_ALL=C readelf -dW "$path" | grep '(NEEDED)' | tr -s ' ' | tr '\n' ';')"
  fi
  if [[ -n "$out" ]]; then
    mkdir -p "$out"
    cp "$path" "$out/$bin"
    path="$out/$bin"
  fi
  echo "$path"
done
