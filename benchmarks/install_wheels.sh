#!/usr/bin/env bash
# Install wheels offline from a folder: every wheel's sha256 is checked against the folder's SHA256SUMS first
# (lines "<sha256>  <file name>", as `sha256sum *.whl > SHA256SUMS` writes them), then pip installs them without an
# index and without dependency resolution (the folder must hold every wheel needed).
#
#   bash benchmarks/install_wheels.sh WHEEL_DIR [--target DIR]
#
# For flash-attn-4 (anchor's flash backend) on a machine without a package index, download on a machine with one:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d WHEEL_DIR flash-attn-4==4.0.0b36 \
#     nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 \
#     nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels apache-tvm-ffi torch-c-dlpack-ext einops
#   (cd WHEEL_DIR && sha256sum *.whl > SHA256SUMS)
# With --target, also add DIR/nvidia_cutlass_dsl/dsl_packages to PYTHONPATH (pip --target does not run the .pth
# file that nvidia-cutlass-dsl installs for that).
set -euo pipefail
dir=${1:?usage: install_wheels.sh WHEEL_DIR [--target DIR]}
shift
[ -f "$dir/SHA256SUMS" ] || { echo "install_wheels: $dir/SHA256SUMS is missing (cd $dir && sha256sum *.whl > SHA256SUMS)" >&2; exit 2; }
(cd "$dir" && sha256sum --check --strict SHA256SUMS) || { echo "install_wheels: a wheel in $dir does not match SHA256SUMS" >&2; exit 1; }
for whl in "$dir"/*.whl; do
  grep -q "  $(basename "$whl")\$" "$dir/SHA256SUMS" || { echo "install_wheels: $(basename "$whl") is not listed in SHA256SUMS" >&2; exit 1; }
done
python3 -m pip install --no-index --no-deps --no-cache-dir "$@" "$dir"/*.whl
