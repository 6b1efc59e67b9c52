#!/usr/bin/env bash
# scripts/build-static.sh — builds the static (musl) binaries silverline-worker and silverline-operator that go
# into the container images (docker/Dockerfile runs this same script), checks that they are static, and copies
# them to an output folder.
#
# Usage:
#   scripts/build-static.sh [--quick] [--out DIR]
#
#   (default)  the release profile (what the images ship): target/x86_64-unknown-linux-musl/release/
#   --quick    the dev profile, for the test script's check that the static build links and runs: the same
#              target, linker and C dependencies, without the release profile's optimisation and LTO, which
#              cost several minutes on 2 cores (CI's image job builds the release profile)
#   --out DIR  copy the two binaries there
#
# Needs the Rust target x86_64-unknown-linux-musl and musl-gcc (Debian's musl-tools) for the C parts (aws-lc,
# ring, zstd): both are installed when missing (rustup; apt-get as root). SILVERLINE_GIT_SHA, when set, is the
# commit the worker records in `_SUCCESS` (the image build passes it: there is no .git in the build context).
# Prints the binaries' paths on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
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

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  command -v rustup >/dev/null 2>&1 || die "the Rust target $TARGET is missing and there is no rustup to add it"
  rustup target add "$TARGET" >&2
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  [[ "$(id -u)" == 0 ]] || die "musl-gcc is missing: install Debian's musl-tools (apt-get install musl-tools)"
  echo "build-static: installing musl-tools (musl-gcc, for the C dependencies)" >&2
  apt-get install -y -qq musl-tools >&2 || { apt-get update -qq >&2 && apt-get install -y -qq musl-tools >&2; } ||
    die "apt-get could not install musl-tools"
fi

# The C dependencies' build scripts (cc crate) compile for the musl target with this; rustc links with the
# musl C runtime the Rust target ships (self-contained), so no linker is configured.
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"

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
