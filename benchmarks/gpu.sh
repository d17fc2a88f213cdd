#!/usr/bin/env bash
# The GPU checks in one command, for a machine with a CUDA GPU (planned to take under ten minutes on one
# H100 or H200): the GPU tier of the suite and the GPU benchmarks, written to ${OUT:-results/gpu}.
#
#   bash benchmarks/gpu.sh
#
# It uses the python3 that holds a CUDA build of torch. What that environment lacks and cannot download
# (DEAP, on a machine without a registry) it installs from wheels in .whl/ when that folder exists.
# Then: env.txt (versions and the GPU), cuda-tests.log (pytest -m cuda), results_gpu_mlp.json and
# results_gpu_resnet56.json (benchmarks/bench_merge.py --device cuda: every strategy, float32 and
# bfloat16), which `python examples/reproduce.py --only bench-gpu` renders into docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/gpu}"
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mega_deap_site .whl/*.whl \
    && export PYTHONPATH="/tmp/mega_deap_site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
python3 - > "$out/env.txt" <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
cat "$out/env.txt"
status=0
timeout 300 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/cuda-tests.log" \
  || status=1
timeout 150 python3 benchmarks/bench_merge.py --device cuda --models mlp-digits --popsize 2000 --ngen 2 \
  --json "$out/results_gpu_mlp.json" || status=1
timeout 150 python3 benchmarks/bench_merge.py --device cuda --models resnet56-cifar --popsize 20 --ngen 20 \
  --val 5000 --json "$out/results_gpu_resnet56.json" || status=1
exit $status
