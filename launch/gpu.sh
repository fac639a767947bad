#!/usr/bin/env bash
# Train on the GPUs of this machine: one process over all of them (the default), or several processes
# joined by jax.distributed, each with its share of the GPUs (--processes N / --per-gpu; through
# launch/multiprocess.sh, which forwards signals and collects logs).
#
#   launch/gpu.sh --gpus 0,1,2,3 --config configs/lm/tiny.py --workdir workdirs/gpu4
#   launch/gpu.sh --gpus 8 --per-gpu --config configs/lm/tiny.py --workdir workdirs/gpu8 --config.mesh.ici="(1,-1,1)"
#
# Needs `pip install -e ".[cuda]"`. Exports an XLA_FLAGS preset (below, each flag with its reason;
# --xla-preset none to leave XLA_FLAGS alone) in front of whatever XLA_FLAGS the caller set, so that
# the caller's flags win. The flags and their defaults change between XLA releases: the test suite
# checks that each one is known to the installed jaxlib.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT=gpu.sh
source "$REPO/launch/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [options] TRAIN ARGS...   (TRAIN ARGS go to python -m launch.train)

Options:
  --gpus LIST|N        GPU ids (0,1,2,3) or a count (4 = 0..3); default: every GPU nvidia-smi lists
  --processes N        N processes joined by jax.distributed, each with #GPUs/N GPUs (default 1)
  --per-gpu            one process per GPU (--processes = number of GPUs)
  --xla-preset NAME    perf (default) | deterministic (perf + bitwise-reproducible ops) | none
  --mem-fraction F     XLA_PYTHON_CLIENT_MEM_FRACTION, the share of GPU memory JAX reserves (default 0.90)
  --python PY          interpreter (default: $PYTHON, else the repo's .venv/bin/python, else python3)
  --dry-run            print every command, one per line, and run nothing
  -h, --help           this text
EOF
}

# --- The XLA_FLAGS preset ("perf"): MaxText's A3 GPU recipes and the JAX / NVIDIA JAX-Toolbox GPU
# performance guides agree on these for transformer training.
PERF_FLAGS=(
  # Schedule asynchronous collectives to overlap with independent compute instead of running them in
  # program order (on by default in NVIDIA's JAX containers).
  --xla_gpu_enable_latency_hiding_scheduler=true
  # Matmuls through cuBLAS(Lt) instead of Triton GEMM fusions: shorter compiles (no Triton
  # autotuning), and cuBLAS is the faster choice for plain transformer matmuls.
  --xla_gpu_enable_triton_gemm=false
  # Merge the many small per-parameter collectives (data-parallel gradient all-reduces, FSDP
  # all-gathers and reduce-scatters) into a few large NCCL calls, up to these sizes in bytes.
  --xla_gpu_all_reduce_combine_threshold_bytes=67108864
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864
  # In the scanned layer loop (model.scan_layers), issue layer i+1's collectives during layer i's
  # compute: FSDP weight gathers and gradient reductions are hidden behind the matmuls.
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  # Unroll that loop by two so that the pipelined collectives have an iteration to overlap with.
  --xla_gpu_enable_while_loop_double_buffering=true
)
DETERMINISTIC_FLAGS=(
  # Deterministic reductions and scatters (atomics-free kernels): bitwise-equal reruns, a little slower.
  --xla_gpu_deterministic_ops=true
)

GPUS=""
PROCESSES=1
PER_GPU=0
PRESET=perf
MEM_FRACTION=0.90
PYTHON="${PYTHON:-}"
DRY_RUN=0
ARGS=()


while (($#)); do
  case "$1" in
    --gpus) need_value "$1" $#; GPUS=$2; shift 2 ;;
    --gpus=*) GPUS=${1#*=}; shift ;;
    --processes) need_value "$1" $#; PROCESSES=$2; shift 2 ;;
    --processes=*) PROCESSES=${1#*=}; shift ;;
    --per-gpu) PER_GPU=1; shift ;;
    --xla-preset) need_value "$1" $#; PRESET=$2; shift 2 ;;
    --xla-preset=*) PRESET=${1#*=}; shift ;;
    --mem-fraction) need_value "$1" $#; MEM_FRACTION=$2; shift 2 ;;
    --mem-fraction=*) MEM_FRACTION=${1#*=}; shift ;;
    --python) need_value "$1" $#; PYTHON=$2; shift 2 ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; ARGS+=("$@"); break ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

if [[ -z $GPUS ]]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found; pass --gpus"
  GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
  [[ -n $GPUS ]] || die "nvidia-smi lists no GPUs"
elif [[ $GPUS =~ ^[1-9][0-9]*$ ]]; then
  GPUS=$(seq -s, 0 $((GPUS - 1)))
fi
[[ $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus takes a count or a comma-separated id list, got '$GPUS'"
IFS=, read -r -a GPU_LIST <<<"$GPUS"
((PER_GPU)) && PROCESSES=${#GPU_LIST[@]}
[[ $PROCESSES =~ ^[1-9][0-9]*$ ]] || die "--processes must be a positive integer, got '$PROCESSES'"
((${#GPU_LIST[@]} % PROCESSES == 0)) || die "${#GPU_LIST[@]} GPUs cannot be split evenly between $PROCESSES processes"

case "$PRESET" in
  perf) PRESET_FLAGS=("${PERF_FLAGS[@]}") ;;
  deterministic) PRESET_FLAGS=("${PERF_FLAGS[@]}" "${DETERMINISTIC_FLAGS[@]}") ;;
  none) PRESET_FLAGS=() ;;
  *) die "--xla-preset is perf, deterministic or none, got '$PRESET'" ;;
esac
XLA="${PRESET_FLAGS[*]} ${XLA_FLAGS:-}"
XLA="${XLA# }"
XLA="${XLA% }"

if [[ -z $PYTHON ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi


if ((DRY_RUN)); then
  [[ -n $XLA ]] && echo "export XLA_FLAGS=$(quoted "$XLA")"
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$(quoted "$MEM_FRACTION")"
else
  if [[ -n $XLA ]]; then export XLA_FLAGS="$XLA"; fi
  export XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION"
fi

if ((PROCESSES == 1)); then
  CMD=(env "CUDA_VISIBLE_DEVICES=$GPUS" "$PYTHON" -m launch.train "${ARGS[@]}")
  if ((DRY_RUN)); then
    quoted "${CMD[@]}"
    exit 0
  fi
  exec "${CMD[@]}"
fi

# Several processes: multiprocess.sh gives process i the i-th block of GPUs (CUDA_VISIBLE_DEVICES),
# the jax.distributed variables, --config.distributed=true and a log file in WORKDIR/logs.
MP=("$REPO/launch/multiprocess.sh" --gpus "$GPUS" --processes "$PROCESSES" --python "$PYTHON")
((DRY_RUN)) && MP+=(--dry-run)
exec "${MP[@]}" "${ARGS[@]}"
