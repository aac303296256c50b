#!/usr/bin/env bash
# Install flash-attn-4 (CuTe DSL) on the GPU machine from carried wheels, over two consecutive warm calls.
# The 92 MB nvidia-cutlass-dsl-libs-cu13 wheel exceeds the 64 MiB a call may carry: it travels split in two,
# .fa4a/cu13.part00 (with the small wheels) in one call and .fa4b/cu13.part01 in the next (names carried folders).
# Every call: `bash benchmarks/flash4_install.sh && export PYTHONPATH=.:/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages`
# (pip --target does not run the package's .pth, which adds dsl_packages to sys.path).
set -e
mkdir -p /tmp/fa4
for d in .fa4a .fa4b; do [ -d "$d" ] && cp -n "$d"/* /tmp/fa4/ || true; done
if [ -f /tmp/site/.fa4_installed ]; then echo "flash-attn-4 already installed"; exit 0; fi
if [ ! -f /tmp/fa4/cu13.part00 ] || [ ! -f /tmp/fa4/cu13.part01 ]; then
  echo "flash-attn-4: have $(ls /tmp/fa4 | tr '\n' ' '); carry the other part in the next call"; exit 0
fi
W=/tmp/fa4/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
cat /tmp/fa4/cu13.part00 /tmp/fa4/cu13.part01 > "$W"
echo "$(cat /tmp/fa4/cu13.sha256)  $W" | sha256sum -c -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/fa4/*.whl
touch /tmp/site/.fa4_installed
echo "flash-attn-4 installed in /tmp/site"
