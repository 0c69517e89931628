#!/usr/bin/env bash
# One command for a GPU machine without network (torch+CUDA, lightning, transformers, peft present):
# installs the pure-Python packages it lacks from wheels carried in .gpu-check/ (git-ignored), runs
# tests/gpu and the training benchmark, and writes one JSON. Within 8 minutes on one H200.
#
#   scripts/gpu_check.sh --download          # here, with network: fill .gpu-check/ (wheels + GSM8K train)
#   scripts/gpu_check.sh [--out FILE]        # on the GPU machine, with .gpu-check/ carried along
#   scripts/gpu_check.sh --dry-run [--out FILE]  # any CPU machine: the install plan and a tiny benchmark
#
# wandb and vllm are not carried (runs use logger=csv and generator=hf); antlr4-python3-runtime 4.9.3
# exists only as a source archive, so --download builds its wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CARRY=$ROOT/.gpu-check
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
MODE=check
OUT=${OUT:-$ROOT/outputs}/gpu_check.json
while [ $# -gt 0 ]; do
  case $1 in
    --download) MODE=download ;;
    --dry-run) MODE=dry-run ;;
    --out) OUT=$2; shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
# distribution==version; the versions are those this project is tested with.
PACKAGES=(hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  xxhash==4.1.0 fsspec==2026.9.0 math-verify==0.9.0 latex2sympy2_extended==1.11.0 trl==1.16.0
  submitit==1.5.4 hydra-submitit-launcher==1.2.0)
ANTLR=antlr4-python3-runtime==4.9.3

if [ "$MODE" = download ]; then
  rm -rf "$CARRY/wheels" && mkdir -p "$CARRY/wheels" "$CARRY/data/train/gsm8k"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$CARRY/wheels" "${PACKAGES[@]}"
  "$PYTHON" -m pip wheel --quiet --no-deps -w "$CARRY/wheels" "$ANTLR"
  cp ../shared/data/train/gsm8k/train.jsonl "$CARRY/data/train/gsm8k/"
  du -sh "$CARRY"
  exit 0
fi

mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The install plan: each package missing from this Python, and the wheel that provides it.
"$PYTHON" - "$CARRY/wheels" "$WORK/plan.json" "${PACKAGES[@]}" "$ANTLR" <<'PY'
import json, sys
from importlib import metadata
from pathlib import Path
wheels, out, wanted = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
plan = {}
for spec in wanted:
    name = spec.split("==")[0]
    try:
        plan[name] = {"installed": metadata.version(name)}
    except metadata.PackageNotFoundError:
        stem = name.replace("-", "_").lower()
        found = sorted(str(p) for p in wheels.glob("*.whl") if p.name.lower().startswith(stem + "-"))
        plan[name] = {"install": found[0] if found else None}
json.dump(plan, open(out, "w"), indent=2)
missing = [name for name, step in plan.items() if "install" in step and step["install"] is None]
print("install plan:", json.dumps(plan, indent=1))
if missing:
    print("no wheel for:", ", ".join(missing), "(run scripts/gpu_check.sh --download with network)")
PY
if [ "$MODE" = dry-run ]; then
  "$PYTHON" scripts/bench_train.py --dry-run --out "$WORK/bench_train.json" > "$WORK/bench_train.log"
  "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider --junitxml="$WORK/tests.xml" > "$WORK/tests.log" || true
else
  INSTALL=$("$PYTHON" -c "import json,sys; print(' '.join(s['install'] for s in json.load(open(sys.argv[1])).values() if s.get('install')))" "$WORK/plan.json")
  if [ -n "$INSTALL" ]; then "$PYTHON" -m pip install --quiet --no-index --no-deps $INSTALL; fi
  export MINDGAP_DATA_ROOT=${MINDGAP_DATA_ROOT:-$CARRY/data} HF_HUB_OFFLINE=1 WANDB_MODE=disabled
  timeout 330 "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider --junitxml="$WORK/tests.xml" -s \
    > "$WORK/tests.log" 2>&1 || true
  timeout 120 "$PYTHON" scripts/bench_train.py --out "$WORK/bench_train.json" > "$WORK/bench_train.log" 2>&1 || true
fi
"$PYTHON" - "$WORK" "$OUT" "$MODE" <<'PY'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path
work, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
report = {"mode": mode, "install_plan": json.loads((work / "plan.json").read_text())}
if (work / "tests.xml").exists():
    suite = ET.parse(work / "tests.xml").getroot().find("testsuite")
    report["tests"] = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    report["tests"]["cases"] = {
        case.get("name"): next((child.tag for child in case), "passed") for case in suite.iter("testcase")
    }
report["tests_log_tail"] = (work / "tests.log").read_text()[-3000:] if (work / "tests.log").exists() else None
bench = work / "bench_train.json"
report["bench_train"] = json.loads(bench.read_text()) if bench.exists() else None
if report["bench_train"] is None and (work / "bench_train.log").exists():
    report["bench_train_log_tail"] = (work / "bench_train.log").read_text()[-3000:]
out.write_text(json.dumps(report, indent=2))
print(f"gpu_check: {mode} report in {out}")
ok = report["bench_train"] is not None and report.get("tests", {}).get("failures", 1) == 0 and report["tests"]["errors"] == 0
sys.exit(0 if ok else 1)
PY
