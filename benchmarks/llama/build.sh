#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (CPU only) from the vendored copy in llama-cpp-python's PyPI sdist,
# for benchmarks/prefix_cache.py --llama. Only the server target is built; the result is cached.
#   benchmarks/llama/build.sh            # -> $LLAMA_CACHE/bin/llama-server (prints its path)
# Env: LLAMA_CACHE (default ~/.cache/litellm-rllm/llama), LLAMA_CPP_PYTHON_VERSION (0.3.36),
#      LLAMA_SDIST (a local copy of the sdist, skips the download), JOBS (2; the build runs under nice -n 19).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLAMA_CACHE:-$HOME/.cache/litellm-rllm/llama}"
JOBS="${JOBS:-2}"
PY="${PYTHON:-python3}"
BIN="$CACHE/bin/llama-server"
if [[ -x "$BIN" && "$(cat "$CACHE/bin/VERSION" 2>/dev/null)" == "$VERSION" ]]; then
  echo "$BIN"; exit 0
fi
command -v cmake >/dev/null && command -v ninja >/dev/null && command -v c++ >/dev/null || {
  echo "error: needs cmake, ninja and a C++ compiler (apt-get install cmake ninja-build g++)" >&2; exit 2; }
mkdir -p "$CACHE/sdist"
SDIST="${LLAMA_SDIST:-$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz}"
if [[ ! -f "$SDIST" ]]; then
  # --no-binary for this package only: its build dependencies (pip prepares its metadata) come as wheels
  "$PY" -m pip download --no-binary llama-cpp-python --no-deps --dest "$CACHE/sdist" "llama-cpp-python==$VERSION" >&2
fi
SRC="$CACHE/src-$VERSION"
if [[ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]]; then
  rm -rf "$SRC" && mkdir -p "$SRC"
  tar -xzf "$SDIST" -C "$SRC" --strip-components=1
fi
BUILD="$CACHE/build-$VERSION"
start=$(date +%s)
nice -n 19 cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >&2
nice -n 19 cmake --build "$BUILD" --target llama-server -j "$JOBS" >&2
mkdir -p "$CACHE/bin"
cp "$BUILD/bin/llama-server" "$BIN"
echo "$VERSION" > "$CACHE/bin/VERSION"
echo "built llama-server in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
