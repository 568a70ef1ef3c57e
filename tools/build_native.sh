#!/usr/bin/env bash
# Builds the torch backend's region-of-interest JPEG decoder, pipeline/native/libroijpeg.so (see
# pipeline/roi_jpeg.py): a small C library against the system libjpeg-turbo, loaded with ctypes, so it needs a C
# compiler and the libjpeg headers (Debian/Ubuntu: libjpeg62-turbo-dev or libjpeg-turbo8-dev) but no Python headers.
# Exit status 0 when built; otherwise 1 with the reason on stderr, and the backend decodes with Pillow alone.
#   bash tools/build_native.sh [LOG]
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-/dev/stderr}
native=pipeline/native
cc=${CC:-cc}
rm -f "$native/libroijpeg.so"
if ! command -v "${cc%% *}" >/dev/null 2>&1; then
  echo "no C compiler ($cc)" >&2
  exit 1
fi
if ! printf '#include <stdio.h>\n#include <jpeglib.h>\n' | $cc -E -x c - >/dev/null 2>&1; then
  echo "no libjpeg headers (jpeglib.h)" >&2
  exit 1
fi
if $cc -O2 -fPIC -shared -Wall -o "$native/libroijpeg.so.tmp" "$native/roi_jpeg.c" -ljpeg >"$log" 2>&1; then
  mv "$native/libroijpeg.so.tmp" "$native/libroijpeg.so"
  exit 0
fi
rm -f "$native/libroijpeg.so.tmp"
echo "the compiler failed (log: $log)" >&2
exit 1
