#!/usr/bin/env bash
# Cloud TPU VMs for this repo: create (or queue) a TPU, copy the working tree to every worker, install
# it, and run launch.train on every worker at once (the big_vision / MaxText pattern).
#
#   launch/tpu.sh --accelerator v4-32 all -- --config configs/lm/tiny.py --workdir /mnt/shared/lm_tiny
#   launch/tpu.sh --queued --slices 2 --accelerator v5litepod-16 all -- --config ... --workdir ...
#   launch/tpu.sh delete
#
# Every ssh and scp goes to --worker=all: a multi-host program started on some workers only waits
# forever for the others (jax-ml/jax#22436). The workers find each other themselves (jax.distributed
# reads the TPU metadata), so `run` passes no process ids. Several slices (--slices N, which needs a
# queued resource) are joined over the data-centre network: every worker of slice i gets
# MEGASCALE_NUM_SLICES=N, MEGASCALE_SLICE_ID=i and slice 0's first worker as the coordinator, and the
# train command gets --config.mesh.dcn="(N,1,1)" (data parallelism across slices) unless it sets
# config.mesh.dcn itself. WORKDIR must be a filesystem that every worker sees (a gcsfuse or NFS
# mount): orbax writes one checkpoint from all hosts together.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT=tpu.sh
source "$REPO/launch/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh [options] COMMAND [-- TRAIN ARGS...]

Commands:
  create    create the TPU VM (or queued resource with --queued; waits until it is ACTIVE)
  delete    delete it
  copy      copy this working tree (without .git, venvs, workdirs, caches) to every worker
  install   make a Python venv on every worker and pip install -e ".[tpu]" with the pinned constraints
  run       python -m launch.train TRAIN ARGS on every worker (and every slice) at once
  all       create, copy, install, run
  status    describe the TPU VM or queued resource

Options (environment variable in brackets):
  --name NAME           TPU VM / queued resource name   [TPU_NAME, default superpose-$USER]
  --zone ZONE           [TPU_ZONE, default us-central2-b]
  --project PROJECT     [TPU_PROJECT, default: gcloud's configured project]
  --accelerator TYPE    e.g. v4-8, v5litepod-16, v5p-32, v6e-8   [TPU_ACCELERATOR, default v4-8]
  --runtime VERSION     TPU software version [TPU_RUNTIME, default: the usual one for the generation]
  --queued              use a queued resource (gcloud compute tpus queued-resources)
  --slices N            N slices joined over DCN (multislice; implies --queued)   [TPU_SLICES, default 1]
  --spot                Spot capacity (cheaper, preemptible: the train loop checkpoints on SIGTERM)
  --python X.Y          Python on the workers; picks constraints/pyXY.txt   [TPU_PYTHON, default 3.11]
  --remote-dir DIR      where the tree goes, relative to the remote home   [default superpose]
  --env KEY=VALUE       extra environment for `run` (repeatable)
  --dry-run             print every command, one per line, and run nothing
  -h, --help            this text
EOF
}

NAME=${TPU_NAME:-superpose-${USER:-user}}
ZONE=${TPU_ZONE:-us-central2-b}
PROJECT=${TPU_PROJECT:-}
ACCELERATOR=${TPU_ACCELERATOR:-v4-8}
RUNTIME=${TPU_RUNTIME:-}
SLICES=${TPU_SLICES:-1}
PYVER=${TPU_PYTHON:-3.11}
REMOTE_DIR=superpose
QUEUED=0
SPOT=0
DRY_RUN=0
EXTRA_ENV=()
COMMAND=""
TRAIN_ARGS=()
MEGASCALE_PORT=8080


while (($#)); do
  case "$1" in
    --name) need_value "$1" $#; NAME=$2; shift 2 ;;
    --zone) need_value "$1" $#; ZONE=$2; shift 2 ;;
    --project) need_value "$1" $#; PROJECT=$2; shift 2 ;;
    --accelerator) need_value "$1" $#; ACCELERATOR=$2; shift 2 ;;
    --runtime) need_value "$1" $#; RUNTIME=$2; shift 2 ;;
    --slices) need_value "$1" $#; SLICES=$2; shift 2 ;;
    --python) need_value "$1" $#; PYVER=$2; shift 2 ;;
    --remote-dir) need_value "$1" $#; REMOTE_DIR=$2; shift 2 ;;
    --env) need_value "$1" $#; EXTRA_ENV+=("$2"); shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    create|delete|copy|install|run|all|status)
      [[ -z $COMMAND ]] || die "one command at a time (got '$COMMAND' and '$1')"
      COMMAND=$1; shift ;;
    *) die "unknown argument '$1' (train arguments go after --; see --help)" ;;
  esac
done

[[ -n $COMMAND ]] || { usage >&2; exit 2; }
[[ $SLICES =~ ^[1-9][0-9]*$ ]] || die "--slices must be a positive integer, got '$SLICES'"
((SLICES == 1)) || QUEUED=1  # multislice exists only as a queued resource
[[ $PYVER =~ ^3\.[0-9]+$ ]] || die "--python must look like 3.11, got '$PYVER'"
CONSTRAINTS="constraints/py${PYVER/./}.txt"
[[ -f $REPO/$CONSTRAINTS ]] || die "no $CONSTRAINTS for Python $PYVER (have: $(cd "$REPO" && echo constraints/*.txt))"
for kv in "${EXTRA_ENV[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes KEY=VALUE, got '$kv'"
done

if [[ -z $RUNTIME ]]; then
  case "$ACCELERATOR" in  # the TPU software versions Cloud TPU documents per generation
    v2-*|v3-*|v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) die "no default runtime for accelerator '$ACCELERATOR'; pass --runtime" ;;
  esac
fi


# Print a command (dry run) or run it.
run() {
  if ((DRY_RUN)); then quoted "$@"; else "$@"; fi
}

WHERE=(--zone="$ZONE")
[[ -n $PROJECT ]] && WHERE+=(--project="$PROJECT")
VM=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)

# ssh/scp to every worker: a single TPU VM by name; several slices through their queued resource.
remote() {  # remote shell command
  if ((SLICES > 1)); then
    run "${QR[@]}" ssh "$NAME" "${WHERE[@]}" --node=all --worker=all --command="$1"
  else
    run "${VM[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"
  fi
}
upload() {  # local file, remote path
  if ((SLICES > 1)); then
    run "${QR[@]}" scp "$1" "$NAME:$2" "${WHERE[@]}" --node=all --worker=all
  else
    run "${VM[@]}" scp "$1" "$NAME:$2" "${WHERE[@]}" --worker=all
  fi
}

do_create() {
  local extra=()
  ((SPOT)) && extra+=(--spot)
  if ((!QUEUED)); then
    run "${VM[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${extra[@]}"
    return
  fi
  if ((SLICES > 1)); then
    extra+=(--node-count="$SLICES" --node-prefix="$NAME")  # nodes NAME-0 ... NAME-(N-1)
  else
    extra+=(--node-id="$NAME")
  fi
  run "${QR[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" \
    "${extra[@]}"
  # A queued resource is granted later; copy and run need its nodes.
  local describe=("${QR[@]}" describe "$NAME" "${WHERE[@]}" --format="value(state.state)")
  if ((DRY_RUN)); then
    quoted "${describe[@]}"
    return
  fi
  local state=""
  while [[ $state != ACTIVE ]]; do
    state=$("${describe[@]}")
    case "$state" in
      FAILED|SUSPENDED) die "queued resource $NAME is $state" ;;
      ACTIVE) ;;
      *) echo "tpu.sh: queued resource $NAME is ${state:-not listed yet}; waiting" >&2; sleep 30 ;;
    esac
  done
}

do_delete() {
  if ((QUEUED)); then
    run "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet  # --force deletes its nodes too
  else
    run "${VM[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
}

do_copy() {
  local tarball="${TMPDIR:-/tmp}/$NAME-tree.tgz"
  # The tree as it is on disk (uncommitted edits included), without what .gitignore keeps out.
  run tar -czf "$tarball" -C "$REPO" --exclude=./.git --exclude='./.venv*' --exclude=./workdirs \
    --exclude=./.jax_cache --exclude=./tmp --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache .
  upload "$tarball" "$REMOTE_DIR.tgz"
  remote "mkdir -p $(quoted "$REMOTE_DIR") && tar -xzf $(quoted "$REMOTE_DIR.tgz") -C $(quoted "$REMOTE_DIR") && rm $(quoted "$REMOTE_DIR.tgz")"
}

do_install() {
  local py="python$PYVER"
  # TPU images ship their distribution's Python (3.10 on Ubuntu 22.04); add python3.11 when missing.
  remote "set -e; command -v $py >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq $py $py-venv; }; cd $(quoted "$REMOTE_DIR"); $py -m venv .venv; .venv/bin/pip install -q --upgrade pip; .venv/bin/pip install -q -e '.[tpu]' -c $CONSTRAINTS"
}

do_run() {
  local args=("${TRAIN_ARGS[@]}") arg has_dcn=0
  for arg in "${args[@]}"; do [[ $arg == --config.mesh.dcn* ]] && has_dcn=1; done
  ((SLICES > 1 && !has_dcn)) && args+=("--config.mesh.dcn=($SLICES,1,1)")
  if ((SLICES == 1)); then
    remote "$(program "${EXTRA_ENV[@]}")"
    return
  fi
  # One ssh per slice, all at once: each slice needs its own MEGASCALE_SLICE_ID.
  local describe=("${VM[@]}" describe "$NAME-0" "${WHERE[@]}" --format="value(networkEndpoints[0].ipAddress)")
  local coordinator
  if ((DRY_RUN)); then
    echo "COORDINATOR_IP=\$($(quoted "${describe[@]}"))"
    coordinator='$COORDINATOR_IP'
  else
    coordinator=$("${describe[@]}")
  fi
  local pids=() i status=0
  for ((i = 0; i < SLICES; i++)); do
    local megascale=("MEGASCALE_COORDINATOR_ADDRESS=$coordinator:$MEGASCALE_PORT" "MEGASCALE_PORT=$MEGASCALE_PORT"
                     "MEGASCALE_NUM_SLICES=$SLICES" "MEGASCALE_SLICE_ID=$i")
    local cmd=("${QR[@]}" ssh "$NAME" "${WHERE[@]}" --node="$i" --worker=all
               --command="$(program "${megascale[@]}" "${EXTRA_ENV[@]}")")
    if ((DRY_RUN)); then
      echo "$(quoted "${cmd[@]}") &"
    else
      "${cmd[@]}" &
      pids+=($!)
    fi
  done
  if ((DRY_RUN)); then
    echo "wait"
    return
  fi
  # Ctrl-C ends every slice's ssh session (and with it the program on that slice).
  trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
  for i in "${pids[@]}"; do wait "$i" || status=$?; done
  trap - INT TERM
  return "$status"
}

# The remote shell command that trains, with environment KEY=VALUE arguments (uses args of do_run).
program() {
  local launch=(.venv/bin/python -m launch.train "${args[@]}")
  (($#)) && launch=(env "$@" "${launch[@]}")
  echo "cd $(quoted "$REMOTE_DIR") && $(quoted "${launch[@]}")"
}

do_status() {
  if ((QUEUED)); then
    run "${QR[@]}" describe "$NAME" "${WHERE[@]}"
  else
    run "${VM[@]}" describe "$NAME" "${WHERE[@]}"
  fi
}

case "$COMMAND" in
  create) do_create ;;
  delete) do_delete ;;
  copy) do_copy ;;
  install) do_install ;;
  run) do_run ;;
  status) do_status ;;
  all) do_create; do_copy; do_install; do_run ;;
esac
