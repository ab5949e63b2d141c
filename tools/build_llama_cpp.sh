#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-server, llama-quantize, llama-perplexity) from the llama.cpp
# sources vendored in the llama-cpp-python sdist of exactly the installed version, so the peer
# in bench/engine.py runs the same llama.cpp as fmstack does. CPU only, Release, static, into
# build/llama.cpp/bin/. Skips the work when the binaries exist.
#
#   tools/build_llama_cpp.sh [PYTHON]     (PYTHON defaults to .venv/bin/python)
#
# Needs cmake and a C++ compiler, and PyPI for the sdist (only on the first run).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
OUT="$ROOT/build/llama.cpp"
BIN="$OUT/bin"
TOOLS=(llama-server llama-quantize llama-perplexity)
JOBS="${JOBS:-2}"

have_all() {
    for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || return 1; done
}

if have_all; then
    echo "llama.cpp tools already built: $BIN (${TOOLS[*]})"
    exit 0
fi

VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')"
SDIST_DIR="$ROOT/build"
SRC="$SDIST_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
mkdir -p "$SDIST_DIR"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    TARBALL="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
    if [ ! -f "$TARBALL" ]; then
        echo "downloading the llama-cpp-python $VERSION sdist"
        "$PY" -m pip download -q --no-binary :all: --no-deps \
            "llama-cpp-python==$VERSION" -d "$SDIST_DIR"
    fi
    tar -xzf "$TARBALL" -C "$SDIST_DIR"
fi

echo "building ${TOOLS[*]} from $SRC with $JOBS jobs"
start=$(date +%s)
# No UI download (PREBUILT_UI) or npm build: the server runs without its web page, which the
# benchmark does not use. Static so the binaries need no libllama.so beside them.
cmake -S "$SRC" -B "$OUT" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF > "$OUT.cmake.log" 2>&1 || { tail -40 "$OUT.cmake.log"; exit 1; }
cmake --build "$OUT" --config Release -j "$JOBS" --target "${TOOLS[@]}" \
    > "$OUT.build.log" 2>&1 || { tail -40 "$OUT.build.log"; exit 1; }
have_all || { echo "build finished but a tool is missing from $BIN"; exit 1; }
echo "built llama.cpp tools in $(( $(date +%s) - start )) s: $BIN (${TOOLS[*]})"
