#!/usr/bin/env bash
# One prepared run of fastcnn's GPU tests and benchmarks on a machine with a CUDA GPU,
# in at most GPU_CHECK_BUDGET_S seconds (480 unless set), run from anywhere:
#
#     bash benchmarks/gpu_check.sh
#
# Phases, each under `timeout` (limits in seconds, cut further to fit what is left):
#   probe    nvidia-smi, python, torch, triton; without a usable CUDA GPU (or without
#            torch) it prints one line saying so and exits 0, having done nothing else
#   install  pip install --no-build-isolation --no-deps -e . (180; without ninja, or if
#            the C++ extension fails to build: FASTCNN_BUILD_CPP=0, 90, no CPU tests)
#   tests    python -m pytest tests -k cuda (at most 210, and 210 kept for the
#            benchmarks; stops after GPU_CHECK_MAXFAIL failures), then the other tests in
#            what is left but those 210
#   bench    fastcnn bench --device cuda --full --repeats GPU_CHECK_REPEATS (20), one op
#            at a time, then the modules (--modules, all of them in one run: their
#            training steps, NCHW, without torch.compile, which would compile three
#            modules for longer than the phase has), then the models (--models lenet5
#            alexnet googlenet resnet50, and fastcnn.optimize on torchvision's resnet50,
#            googlenet and densenet121 and timm's resnet50 (left out without timm), NCHW,
#            inference and a training step, without torch.compile); each in what is left but what the items after it
#            need (30 for an op, 90 for the modules and for the models; at least an even
#            share, at least 30 or it is skipped); an op that runs out of time is timed
#            again without torch.compile in what is then left to it
# The benchmarks run whether or not the tests passed; their rows, merged, go to
# benchmarks/results/<gpu>.json (e.g. nvidia-h200.json). Logs go to $OUT when it is set
# (the device tool brings back what is written there, so a run cut off from outside still
# returns them), else to a temporary folder; the results file is copied there too.
#
# Exit status: 0 tests passed and every op and the modules were timed; 1 tests failed or
# did not finish; 2 tests passed but some op, or the modules, have no rows.
set -u -o pipefail
cd -P "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

BUDGET=${GPU_CHECK_BUDGET_S:-480}
REPEATS=${GPU_CHECK_REPEATS:-20}
MAXFAIL=${GPU_CHECK_MAXFAIL:-10}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi
fi
MARGIN=15            # kept back for the summary and the copies
INSTALL_LIMIT=180    # the C++ extension builds in about a minute on 16 cores
FALLBACK_LIMIT=90    # the install without it
TESTS_LIMIT=210
BENCH_RESERVE=210    # what the tests leave to the benchmarks: the ops, modules and models
OP_RESERVE=30        # what the items before an op leave to it
MODULES_RESERVE=90   # what the items before the modules (or the models) leave to them
MAIN_LOG=/dev/null   # a file once there is a GPU to check

say() {
  printf 'gpu_check: %s\n' "$*"
  printf 'gpu_check: %s\n' "$*" >>"$MAIN_LOG"
}

left() { echo $((BUDGET - SECONDS - MARGIN)); }

smaller() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# Lines of a log, indented, for a phase that went wrong (into the main log too).
quote() { sed 's/^/    | /' | tee -a "$MAIN_LOG"; }
show_tail() { tail -n "${2:-15}" "$1" | quote; }

# How a command under `timeout` ended.
ended() { case $1 in 124 | 137) echo "out of time" ;; *) echo "exit $1" ;; esac; }

if ! command -v timeout >/dev/null 2>&1; then
  say "needs \`timeout\` (GNU coreutils), which is not on the PATH"
  exit 1
fi

# ---------------------------------------------------------------- probe
phase_start=$SECONDS
smi=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu \
        --format=csv,noheader 2>/dev/null | head -n 1)
say "nvidia-smi: ${smi:-not available}"
probe=$(timeout 60 "$PYTHON" - 2>&1 <<'PY'
import platform
import sys

print(f"python {platform.python_version()} ({sys.executable})")
try:
    import torch
except Exception as error:
    print(f"torch: not importable ({type(error).__name__}: {error})")
    sys.exit(3)
try:
    import triton
    triton_version = triton.__version__
except Exception as error:
    triton_version = f"not importable ({type(error).__name__})"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}")
if not torch.cuda.is_available():
    print("cuda: torch.cuda.is_available() is False")
    sys.exit(4)
print(f"cuda: {torch.cuda.get_device_name(0)}, compute capability "
      f"{'.'.join(map(str, torch.cuda.get_device_capability(0)))}")
PY
)
probe_rc=$?
while IFS= read -r line; do say "$line"; done <<<"$probe"
if [ "$probe_rc" -ne 0 ]; then
  say "no usable CUDA GPU here ($(tail -n 1 <<<"$probe")): no install, tests or benchmarks; exit 0"
  exit 0
fi
probe_s=$((SECONDS - phase_start))

gpu_name=$(sed -n 's/^cuda: \(.*\), compute capability.*/\1/p' <<<"$probe")
slug=$(printf '%s' "$gpu_name" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
slug=${slug:-cuda-gpu}
results_file="benchmarks/results/$slug.json"

if [ -n "${OUT:-}" ] && mkdir -p "$OUT" 2>/dev/null; then
  LOG_DIR=$OUT
else
  LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/fastcnn-gpu-check.XXXXXX") || exit 1
fi
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/fastcnn-gpu-check-work.XXXXXX") || exit 1
MAIN_LOG="$LOG_DIR/gpu_check.log"
printf '%s\n' "nvidia-smi: ${smi:-not available}" "$probe" >"$MAIN_LOG"
commit=$(git describe --always --dirty 2>/dev/null || echo "no git checkout")
say "fastcnn at $(pwd) ($commit); budget ${BUDGET} s; logs in $LOG_DIR"
for variable in TRITON_INTERPRET FASTCNN_BACKEND; do
  if [ -n "${!variable:-}" ]; then
    say "unsetting $variable=${!variable} (the GPU run needs the compiled kernels and the default backends)"
    unset "$variable"
  fi
done
# PIP_BREAK_SYSTEM_PACKAGES: a system Python (PEP 668) would refuse the editable install
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
  PIP_BREAK_SYSTEM_PACKAGES=1
cores=$(nproc 2>/dev/null || echo 4)
# What the build and Triton's launchers need: ninja for a parallel C++ build (without it
# the extension would build serially for minutes), a C compiler and Python's headers
# (Triton compiles a small launcher for each kernel with them).
if "$PYTHON" -c "from torch.utils.cpp_extension import is_ninja_available as a; assert a()" \
     >/dev/null 2>&1; then have_ninja=1; else have_ninja=0; fi
compiler=$(command -v cc || command -v gcc || echo "")
if "$PYTHON" -c "import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" \
     >/dev/null 2>&1; then headers=found; else headers=MISSING; fi
say "build tools: ninja $([ "$have_ninja" -eq 1 ] && echo found || echo missing), C compiler ${compiler:-MISSING}, Python.h $headers"
[ -z "$compiler" ] || [ "$headers" = MISSING ] && say "without a C compiler and Python.h, Triton cannot build its kernel launchers: expect the Triton tests to fail"

# ---------------------------------------------------------------- install
phase_start=$SECONDS
install_log="$LOG_DIR/install.log"
install_state="C++ extension built"
cpp_available=1
if [ "$have_ninja" -eq 1 ]; then
  say "install: pip install --no-build-isolation --no-deps -e . (limit ${INSTALL_LIMIT} s)"
  MAX_JOBS=${MAX_JOBS:-$cores} timeout -k 10 "$INSTALL_LIMIT" \
    "$PYTHON" -m pip install --no-index --no-build-isolation --no-deps -e . >"$install_log" 2>&1
  install_rc=$?
else
  echo "no ninja: the C++ extension is not built" >"$install_log"
  install_rc=-1
fi
if [ "$install_rc" -ne 0 ]; then
  if [ "$install_rc" -gt 0 ]; then
    say "install: FAILED ($(ended "$install_rc") after $((SECONDS - phase_start)) s), last lines of $install_log:"
    show_tail "$install_log"
  fi
  say "install: again without the C++ extension (FASTCNN_BUILD_CPP=0, limit ${FALLBACK_LIMIT} s)"
  echo "=== FASTCNN_BUILD_CPP=0 ===" >>"$install_log"
  FASTCNN_BUILD_CPP=0 timeout -k 10 "$FALLBACK_LIMIT" \
    "$PYTHON" -m pip install --no-index --no-build-isolation --no-deps -e . >>"$install_log" 2>&1
  fallback_rc=$?
  cpp_available=0
  if [ "$fallback_rc" -eq 0 ]; then
    install_state="no C++ extension ($([ "$install_rc" -gt 0 ] && echo "its build FAILED" || echo "no ninja")); installed with FASTCNN_BUILD_CPP=0, CPU tests left out"
  else
    install_state="install FAILED twice ($(ended "$install_rc"), then $(ended "$fallback_rc")); running from the source tree"
  fi
  say "install: $install_state"
fi
timeout 30 "$PYTHON" -m fastcnn info >"$WORK_DIR/info.txt" 2>&1
while IFS= read -r line; do say "  $line"; done <"$WORK_DIR/info.txt"
cat "$WORK_DIR/info.txt" >>"$install_log"
install_s=$((SECONDS - phase_start))

# ---------------------------------------------------------------- tests
# The CUDA tests first (their ids name the device: triton-cuda, reference-cuda), then, in
# what time is left and only with the C++ extension, the CPU tests CI runs anyway.
phase_start=$SECONDS
count_tests() {
  "$PYTHON" - "$1" 2>/dev/null <<'PY'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = {key: sum(int(s.get(key, 0)) for s in suites)
         for key in ("tests", "failures", "errors", "skipped")}
passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
print(f"{passed} passed, {total['failures']} failed, {total['errors']} errors, "
      f"{total['skipped']} skipped")
PY
}
# run_tests NAME LIMIT PYTEST-ARGS...: sets test_rc and test_state
run_tests() {
  local name=$1 limit=$2
  shift 2
  local log="$LOG_DIR/tests-$name.log" xml="$LOG_DIR/tests-$name.xml" counts
  local args=(-m pytest tests -q --maxfail="$MAXFAIL" --junitxml="$xml" -p no:cacheprovider "$@")
  if "$PYTHON" -c "import pytest_timeout" >/dev/null 2>&1; then
    args+=(--timeout=150)  # a hung test fails alone instead of taking the phase
  fi
  say "tests ($name): $PYTHON ${args[*]} (limit ${limit} s)"
  # SIGINT lets pytest stop like Ctrl-C: it still prints its summary and writes the XML.
  timeout -s INT -k 20 "$limit" "$PYTHON" "${args[@]}" >"$log" 2>&1
  test_rc=$?
  counts=$(count_tests "$xml") || counts=$(grep -E '(passed|failed|error)' "$log" | tail -n 1)
  case $test_rc in
    0) test_state="PASSED" ;;
    1) test_state="FAILED" ;;
    124 | 137) test_state="DID NOT FINISH (stopped at its ${limit} s limit)" ;;
    5) test_state="FAILED (no tests collected)" ;;
    *) test_state="FAILED (pytest exit $test_rc)" ;;
  esac
  test_state="$test_state: ${counts:-no counts}"
  say "tests ($name): $test_state"
  if [ "$test_rc" -ne 0 ]; then
    grep -E '^(FAILED|ERROR) ' "$log" | head -n 20 | quote
    show_tail "$log" 8
  fi
}
if ! "$PYTHON" -c "import pytest" >/dev/null 2>&1; then
  tests_rc=1
  tests_state="NOT RUN: pytest is not installed here"
  say "tests: $tests_state"
else
  tests_limit=$(smaller "$TESTS_LIMIT" $(($(left) - BENCH_RESERVE)))
  [ "$tests_limit" -lt 60 ] && tests_limit=60
  run_tests cuda "$tests_limit" -k cuda
  tests_rc=$test_rc
  tests_state="cuda: $test_state"
  rest_limit=$(($(left) - BENCH_RESERVE))
  if [ "$cpp_available" -eq 0 ]; then
    tests_state+="; cpu: not run (no C++ extension)"
  elif [ "$rest_limit" -lt 60 ]; then
    tests_state+="; cpu: not run (${rest_limit} s left for them)"
  else
    run_tests cpu "$rest_limit" -k "not cuda"
    # the CPU tests' time limit is no failure of the GPU check; their failures are
    [ "$test_rc" -ne 0 ] && [ "$test_rc" -ne 124 ] && [ "$test_rc" -ne 137 ] && tests_rc=$test_rc
    tests_state+="; cpu: $test_state"
  fi
fi
tests_s=$((SECONDS - phase_start))

# ---------------------------------------------------------------- bench
phase_start=$SECONDS
bench_log="$LOG_DIR/bench.log"
: >"$bench_log"
mapfile -t ops < <("$PYTHON" -c "from fastcnn import benchmarking; print(*sorted(benchmarking.OPS), sep='\n')" 2>>"$bench_log")
[ "${#ops[@]}" -eq 0 ] && say "bench: could not list the ops (see $bench_log)"
mapfile -t modules < <("$PYTHON" -c "from fastcnn import benchmarking_modules; print(*benchmarking_modules.MODULES, sep='\n')" 2>>"$bench_log")
[ "${#modules[@]}" -eq 0 ] && say "bench: could not list the modules (see $bench_log)"
items=("${ops[@]}")
[ "${#modules[@]}" -gt 0 ] && items+=(modules)
items+=(models)
# reserve ITEM: what the items before ITEM leave to it
reserve() {
  case $1 in modules | models) echo "$MODULES_RESERVE" ;; *) echo "$OP_RESERVE" ;; esac
}
timed=()
without_compile=()
missing=()
for i in "${!items[@]}"; do
  item=${items[$i]}
  after=$((${#items[@]} - i - 1))
  later=0
  for next in "${items[@]:i+1}"; do later=$((later + $(reserve "$next"))); done
  item_json="$WORK_DIR/bench-$item.json"
  done_item=0
  attempts=(with without)
  [ "$item" = modules ] || [ "$item" = models ] && attempts=(without)
  for compile in "${attempts[@]}"; do
    # what the items after it need, or where that leaves less, an even share
    now=$(left)
    limit=$((now - later))
    [ "$limit" -lt $((now / (after + 1))) ] && limit=$((now / (after + 1)))
    if [ "$limit" -lt 30 ]; then
      say "bench: $item skipped, $limit s left for it"
      break
    fi
    if [ "$item" = modules ]; then
      args=(-m fastcnn bench --device cuda --modules "${modules[@]}" --layout nchw
            --mode forward+backward --repeats "$REPEATS" --json "$item_json" -v)
    elif [ "$item" = models ]; then
      args=(-m fastcnn bench --device cuda --models lenet5 alexnet googlenet resnet50
            torchvision.resnet50 torchvision.googlenet torchvision.densenet121 timm.resnet50
            --layout nchw --repeats "$REPEATS" --json "$item_json" -v)
    else
      args=(-m fastcnn bench --device cuda --full --ops "$item" --repeats "$REPEATS"
            --json "$item_json" -v)
    fi
    [ "$compile" = without ] && args+=(--no-compile)
    say "bench: $item, $compile torch.compile (limit ${limit} s)"
    echo "=== $PYTHON ${args[*]} ===" >>"$bench_log"
    item_start=$SECONDS
    timeout -k 10 "$limit" "$PYTHON" "${args[@]}" >>"$bench_log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ] && [ -s "$item_json" ]; then
      say "bench: $item done in $((SECONDS - item_start)) s"
      done_item=1
      [ "$compile" = without ] && [ "$item" != modules ] && [ "$item" != models ] &&
        without_compile+=("$item")
      break
    fi
    say "bench: $item FAILED ($(ended "$rc") after $((SECONDS - item_start)) s)"
    [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && { show_tail "$bench_log" 10; break; }
  done
  if [ "$done_item" -eq 1 ]; then timed+=("$item"); else missing+=("$item"); fi
done

rows=0
if [ "${#timed[@]}" -gt 0 ]; then
  rows=$("$PYTHON" - "$results_file" "$WORK_DIR" "$REPEATS" "$tests_state" \
           "${without_compile[*]}" "${missing[*]}" "${timed[@]}" 2>>"$bench_log" <<'PY'
import json
import pathlib
import sys

from fastcnn import benchmarking, benchmarking_modules

path, work, repeats, tests, without_compile, missing, *timed = sys.argv[1:]
runs = [json.loads((pathlib.Path(work) / f"bench-{item}.json").read_text()) for item in timed]
results = [row for run in runs for row in run["results"]]
modules = [row for run in runs for row in run.get("modules", [])]
models = [row for run in runs for row in run.get("models", [])]
data = {
    "environment": runs[0]["environment"],
    "results": results,
    "modules": modules,
    "models": models,
    "gpu_check": {"repeats": int(repeats), "tests": tests,
                  "ops_without_compile": without_compile.split(),
                  "not_timed": missing.split()},
}
pathlib.Path(path).write_text(json.dumps(data, indent=2) + "\n")
tables = [benchmarking.format_table(results)] if results else []
tables += [benchmarking_modules.format_table(modules)] if modules else []
tables += [benchmarking_modules.format_table(models)] if models else []
(pathlib.Path(work) / "table.txt").write_text("\n\n".join(tables) + "\n")
print(len(results) + len(modules) + len(models))
PY
  ) || rows=0
  case $rows in '' | *[!0-9]*) rows=0 ;; esac
  if [ "$rows" -gt 0 ]; then
    tee -a "$bench_log" <"$WORK_DIR/table.txt"
    cp "$results_file" "$LOG_DIR/"
  else
    say "bench: merging the results FAILED (see $bench_log)"
  fi
fi
bench_s=$((SECONDS - phase_start))

# ---------------------------------------------------------------- summary
status=0
[ "$tests_rc" -ne 0 ] && status=1
[ "$status" -eq 0 ] && { [ "${#missing[@]}" -gt 0 ] || [ "$rows" -eq 0 ]; } && status=2
if [ "$rows" -gt 0 ]; then bench_state="$rows rows in $results_file"; else bench_state="no rows written"; fi
[ "${#without_compile[@]}" -gt 0 ] && bench_state+="; without torch.compile: ${without_compile[*]}"
[ "${#missing[@]}" -gt 0 ] && bench_state+="; NOT timed: ${missing[*]}"
say "summary on ${gpu_name} (fastcnn $commit):"
say "  probe   $(printf '%4d' "$probe_s") s  ${smi:-no nvidia-smi}"
say "  install $(printf '%4d' "$install_s") s  $install_state"
say "  tests   $(printf '%4d' "$tests_s") s  $tests_state"
say "  bench   $(printf '%4d' "$bench_s") s  $bench_state"
say "  total   $(printf '%4d' "$SECONDS") s of a ${BUDGET} s budget; logs: $LOG_DIR"
say "exit $status (0: all passed and timed; 1: tests failed or did not finish; 2: some op, or the modules, not timed)"
exit "$status"
