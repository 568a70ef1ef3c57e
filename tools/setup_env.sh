#!/usr/bin/env bash
# Creates .venv/ at the project root and installs everything the project needs.
# Idempotent: a stamp records the hash of the inputs; a second run with nothing changed returns in seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3}"
stamp="$venv/.setup-stamp"
want=$(cat setup.cfg pyproject.toml tools/setup_env.sh tools/build_native.sh pipeline/native/roi_jpeg.c | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python >= 3.10 is required, found " + sys.version.split()[0])'
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip setuptools wheel

# torch first, pinned: pip takes these two from the local wheel cache on the CI image.
"${pip[@]}" install -q torch==2.14.1 torchvision==0.29.1
# The project itself (editable) with its dali and test extras.
"${pip[@]}" install -q -e ".[dali,test]"

# Pillow-SIMD replaces Pillow's PIL with an AVX2 build against libjpeg-turbo. torchvision depends on
# Pillow, so this must come after it: a forced, no-deps install overwrites PIL in place.
simd_ok=1
if ! dpkg -s libjpeg62-turbo-dev zlib1g-dev >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q libjpeg62-turbo-dev zlib1g-dev >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libjpeg62-turbo-dev zlib1g-dev >/dev/null 2>&1; } \
      || simd_ok=0
  else
    simd_ok=0
  fi
fi
if [ "$simd_ok" = 1 ] && ! "$venv/bin/python" -c 'import PIL, sys; sys.exit(0 if ".post" in PIL.__version__ else 1)' 2>/dev/null; then
  CC="${CC:-cc} -mavx2" "${pip[@]}" install -q --force-reinstall --no-deps --no-cache-dir --no-binary pillow-simd \
    "pillow-simd>=9.5" >"$venv/pillow-simd-build.log" 2>&1 || simd_ok=0
fi
if [ "$simd_ok" = 0 ]; then
  # Keep (or restore) stock Pillow: the project works with either, only slower.
  "${pip[@]}" install -q --force-reinstall --no-deps "$("$venv/bin/python" -c 'import importlib.metadata as m; print("pillow==" + m.version("pillow"))' 2>/dev/null || echo pillow)" >/dev/null 2>&1 || true
  echo "warning: Pillow-SIMD could not be built (log: .venv/pillow-simd-build.log); using stock Pillow, JPEG decode in the torch backend will be slower" >&2
fi

# Slurm and MUNGE for tests/test_slurm.py, which starts a one-node Slurm on localhost (Debian's packages; root only).
slurm_missing() {
  local name
  for name in sbatch slurmctld slurmd munged; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$name" >/dev/null || return 0
  done
  return 1
}
if slurm_missing && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  slurm_install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
                 slurmctld slurmd slurm-client munge)
  "${slurm_install[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && "${slurm_install[@]}" >/dev/null 2>&1; } || true
fi
if slurm_missing; then
  echo "warning: Slurm could not be installed (apt-get install slurmctld slurmd slurm-client munge, as root); the Slurm tests will skip" >&2
fi

# The torch backend's region-of-interest JPEG decoder (pipeline/roi_jpeg.py). Without it the backend decodes whole
# images with Pillow, only slower.
if ! why=$(bash tools/build_native.sh "$venv/roi-jpeg-build.log" 2>&1); then
  echo "warning: the ROI JPEG decoder was not built: $why; the torch backend will decode whole images with Pillow, slower" >&2
fi

"$venv/bin/python" -m pipeline.info
echo "$want" > "$stamp"
