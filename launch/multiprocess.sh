#!/usr/bin/env bash
# N processes on this machine joined by jax.distributed: a multi-host job without the hosts.
#
#   launch/multiprocess.sh -n 2 -d 4 --config configs/lm/tiny.py:smoke --workdir /tmp/mp
#
# Every process runs `python -m launch.train` with the arguments given here, plus the variables that
# superpose.train.mesh.maybe_initialize_distributed reads (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
# JAX_PROCESS_ID) and `--config.distributed=true`, so that a config saying 'false' cannot quietly turn
# the job into N independent runs writing one workdir. On CPU (the default) each process gets D fake
# devices (--xla_force_host_platform_device_count) and cross-process collectives go through gloo
# (JAX_CPU_COLLECTIVES_IMPLEMENTATION); with --gpus (used by launch/gpu.sh) each process gets its
# share of the listed GPUs through CUDA_VISIBLE_DEVICES.
#
# SIGTERM and SIGINT are forwarded to every process as SIGTERM, which the train loop turns into a
# checkpoint at a step all processes agree on; a second signal kills them. When one process fails the
# others are stopped too (they would otherwise wait in a collective until the coordinator's heartbeat
# timeout), SIGKILLed after --grace seconds. The exit status is 0 when every process exited 0, else
# the first failure's status. Logs: WORKDIR/logs/process_<i>.log; process 0's is also followed here.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT=multiprocess.sh
source "$REPO/launch/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/multiprocess.sh [options] --workdir DIR [TRAIN ARGS...] [-- MORE TRAIN ARGS...]

Starts N local processes joined by jax.distributed, each running `python -m launch.train`.

Options:
  -n, --processes N   number of processes (default 2)
  -d, --devices D     devices per process: fake CPU devices, or GPUs with --gpus (default 4 on CPU)
  --gpus LIST         comma-separated GPU ids to split between the processes (GPU mode, no fake devices)
  --workdir DIR       run directory, passed on to the program; logs go to DIR/logs/process_<i>.log
  --port P            coordinator port on localhost (default: a free port)
  --module M          python module to run (default launch.train)
  --python PY         interpreter (default: $PYTHON, else the repo's .venv/bin/python, else python3)
  --grace S           seconds between SIGTERM and SIGKILL when stopping the others (default 60)
  --quiet             do not follow process 0's log on this terminal
  --dry-run           print every command, one per line, and run nothing
  -h, --help          this text

Any other argument goes to the program. Example:
  launch/multiprocess.sh -n 2 -d 4 --config configs/lm/tiny.py:smoke --workdir /tmp/mp \
      --config.train.steps=20
EOF
}

PROCESSES=2
DEVICES=""
GPUS=""
WORKDIR=""
PORT=""
MODULE="launch.train"
PYTHON="${PYTHON:-}"
GRACE=60
QUIET=0
DRY_RUN=0
ARGS=()


while (($#)); do
  case "$1" in
    -n|--processes) need_value "$1" $#; PROCESSES=$2; shift 2 ;;
    --processes=*) PROCESSES=${1#*=}; shift ;;
    -d|--devices) need_value "$1" $#; DEVICES=$2; shift 2 ;;
    --devices=*) DEVICES=${1#*=}; shift ;;
    --gpus) need_value "$1" $#; GPUS=$2; shift 2 ;;
    --gpus=*) GPUS=${1#*=}; shift ;;
    --workdir) need_value "$1" $#; WORKDIR=$2; shift 2 ;;
    --workdir=*) WORKDIR=${1#*=}; shift ;;
    --port) need_value "$1" $#; PORT=$2; shift 2 ;;
    --port=*) PORT=${1#*=}; shift ;;
    --module) need_value "$1" $#; MODULE=$2; shift 2 ;;
    --module=*) MODULE=${1#*=}; shift ;;
    --python) need_value "$1" $#; PYTHON=$2; shift 2 ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --grace) need_value "$1" $#; GRACE=$2; shift 2 ;;
    --grace=*) GRACE=${1#*=}; shift ;;
    --quiet) QUIET=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; ARGS+=("$@"); break ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

[[ -n $WORKDIR ]] || die "--workdir is required (logs go to WORKDIR/logs)"
is_count "$PROCESSES" || die "--processes must be a positive integer, got '$PROCESSES'"
is_count "$GRACE" || die "--grace must be a positive integer, got '$GRACE'"
if [[ -n $GPUS ]]; then
  IFS=, read -r -a GPU_LIST <<<"$GPUS"
  ((${#GPU_LIST[@]} % PROCESSES == 0)) || die "${#GPU_LIST[@]} GPUs ($GPUS) cannot be split evenly between $PROCESSES processes"
  PER_PROCESS=$((${#GPU_LIST[@]} / PROCESSES))
  [[ -z $DEVICES || $DEVICES == "$PER_PROCESS" ]] || die "--devices $DEVICES disagrees with --gpus $GPUS split $PROCESSES ways"
else
  DEVICES=${DEVICES:-4}
  is_count "$DEVICES" || die "--devices must be a positive integer, got '$DEVICES'"
fi
if [[ -z $PYTHON ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z $PORT ]]; then
  # Bind port 0 and let the kernel choose; the coordinator (process 0) binds it again a moment later.
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
is_count "$PORT" || die "--port must be a positive integer, got '$PORT'"

LOGS="$WORKDIR/logs"
COORDINATOR="127.0.0.1:$PORT"
# launch/, projects/ and configs/ run from the checkout (the installed distribution is the library only).
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PROGRAM=("$PYTHON" -m "$MODULE" "${ARGS[@]}" "--workdir=$WORKDIR")
if [[ $MODULE == launch.train ]]; then
  PROGRAM+=(--config.distributed=true)
fi

# Keep the caller's XLA flags, except a device count of its own (pytest's conftest sets 8).
XLA_BASE=""
for flag in ${XLA_FLAGS:-}; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || XLA_BASE+="$flag "
done


# The command of process $1, as an argument vector in CMD.
command_of() {
  local i=$1 env_vars=(PYTHONUNBUFFERED=1)  # logs appear as they are written
  if [[ -n $GPUS ]]; then
    local mine=("${GPU_LIST[@]:i*PER_PROCESS:PER_PROCESS}")
    env_vars+=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${mine[*]}")")  # XLA_FLAGS: inherited as they are
  else
    # gloo is jax's default for cross-process CPU collectives today; named so that it stays so.
    env_vars+=(JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
               "XLA_FLAGS=${XLA_BASE}--xla_force_host_platform_device_count=$DEVICES")
  fi
  env_vars+=("JAX_COORDINATOR_ADDRESS=$COORDINATOR" "JAX_NUM_PROCESSES=$PROCESSES" "JAX_PROCESS_ID=$i")
  CMD=(env "${env_vars[@]}" "${PROGRAM[@]}")
}

if ((DRY_RUN)); then
  quoted mkdir -p "$LOGS"
  for ((i = 0; i < PROCESSES; i++)); do
    command_of "$i"
    echo "$(quoted "${CMD[@]}") > $(quoted "$LOGS/process_$i.log") 2>&1 &"
  done
  ((QUIET)) || echo "$(quoted tail -n +1 -f "$LOGS/process_0.log") &"
  echo "wait"
  exit 0
fi

mkdir -p "$LOGS"
declare -A RANK=()     # pid -> process index, for the processes still running
PIDS=()
for ((i = 0; i < PROCESSES; i++)); do
  command_of "$i"
  "${CMD[@]}" >"$LOGS/process_$i.log" 2>&1 &
  RANK[$!]=$i
  PIDS+=($!)
done
TAIL=""
if ((!QUIET)); then
  tail -n +1 -f "$LOGS/process_0.log" &
  TAIL=$!
fi
echo "multiprocess.sh: $PROCESSES processes (pids ${PIDS[*]}), coordinator $COORDINATOR, logs in $LOGS" >&2

signal_others() {  # signal name; to every process still running
  local pid
  for pid in "${!RANK[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}

KILL_AT=""  # when set: the time ($SECONDS) at which whoever is still running gets SIGKILL
stop_others() {
  signal_others TERM
  [[ -n $KILL_AT ]] || KILL_AT=$((SECONDS + GRACE))
}

SIGNALS=0
on_signal() {
  SIGNALS=$((SIGNALS + 1))
  if ((SIGNALS == 1)); then
    echo "multiprocess.sh: SIG$1: asking all processes to stop (SIGTERM; again to kill)" >&2
    stop_others
  else
    signal_others KILL
  fi
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

# Poll rather than `wait -n`: when several processes end together, `wait -n` reports one of them and
# bash may forget the others' jobs, while `wait PID` still finds the status of a known, ended child.
STATUS=0
while ((${#RANK[@]})); do
  for pid in "${!RANK[@]}"; do
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    i=${RANK[$pid]}
    unset "RANK[$pid]"
    ((rc == 0)) && continue
    echo "multiprocess.sh: process $i exited with status $rc (log: $LOGS/process_$i.log)" >&2
    if ((STATUS == 0)); then
      STATUS=$rc
      tail -n 20 "$LOGS/process_$i.log" | sed "s/^/  [process $i] /" >&2
      if ((${#RANK[@]})) && [[ -z $KILL_AT ]]; then
        echo "multiprocess.sh: stopping the other processes" >&2
        stop_others
      fi
    fi
  done
  if [[ -n $KILL_AT ]] && ((SECONDS >= KILL_AT && ${#RANK[@]})); then
    echo "multiprocess.sh: processes still running ${GRACE}s after SIGTERM; killing them" >&2
    signal_others KILL
    KILL_AT=$((SECONDS + 3600))
  fi
  ((${#RANK[@]})) && sleep 0.2
done

if [[ -n $TAIL ]]; then
  sleep 0.2  # let tail print the last lines of process 0's log
  kill "$TAIL" 2>/dev/null || true
fi
echo "multiprocess.sh: $PROCESSES processes finished, status $STATUS" >&2
exit "$STATUS"
