#!/bin/bash
# Runs on the device machine (repo root): unpack the library, GPU throughput, calibrate the
# training rate of three concurrent runs, then train each to fit the time left; results to $OUT.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
END=${END:-540}; DEV=${DEV:-cuda}; TP=${TP:---batch 16 64 256 1024 --passes 1 2}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
S=$(mktemp -d); W=$S/w; L=$OUT/l; mkdir -p $W $S/cal $L   # S: scratch on the device machine
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; grep -m1 "model name" /proc/cpuinfo;
  python3 -c "import torch,numpy,scipy,h5py;print(torch.__version__,numpy.__version__,scipy.__version__,h5py.__version__,torch.cuda.is_available())"; } 2>&1 | tee $L/env.txt
python3 dev/gpu_session/library_transfer.py unpack .gpu/lib $S/lib 16 || { echo "unpack failed"; exit 1; }
echo "unpacked at $(el) s"
timeout 100 python3 benchmarks/fcunet_throughput.py --devices $DEV --scan 32 32 $TP > $L/throughput.log 2>&1
grep -v Warn $L/throughput.log | tail -8
cp benchmarks/RESULTS.md $OUT/RESULTS.md; cp benchmarks/data/fcunet_throughput_$DEV.json $OUT/
echo "throughput done at $(el) s"
CFG=src/distill4d/ml/configs/fcunet_gpu_continue.toml
V4=src/distill4d/weights/fcunet.pt
declare -A ARGS
ARGS[A]="--init $V4"
ARGS[B]="--init $V4 --batch-size 128 --lr 0.001"
ARGS[C]="--init .gpu/fcunet_eq2.pt --equivariant --lr 0.001"
# the equivariant warm start is scratch data that may be gone: then C trains it from random weights
[ -f .gpu/fcunet_eq2.pt ] || ARGS[C]="--equivariant --lr 0.001"
for r in A B C; do
  python3 -m distill4d.cli train fcunet --library $S/lib ${ARGS[$r]} --out $S/cal/$r.pt --config $CFG --minutes 0.6 --device $DEV > $L/cal_$r.log 2>&1 &
done
wait
LEFT=$(( END - $(el) ))
for r in A B C; do
  S=$(python3 - $S/cal/$r.pt.partial/log.jsonl $LEFT <<'PY'
import json, os, sys, torch
p = sys.argv[1]
rows = [json.loads(l) for l in open(p) if '"train"' in l] if os.path.exists(p) else []
if not rows:  # fewer than 50 steps: the checkpoint's step count and seconds
    st = json.loads(torch.load(p.replace("log.jsonl", "checkpoint.pt"), weights_only=True)["state"])
    rows = [{"step": st["step"], "seconds": st["seconds"]}]
rate = rows[-1]["step"] / rows[-1]["seconds"]
if len(rows) >= 2:  # steady rate, loader start-up excluded
    rate = (rows[-1]["step"] - rows[0]["step"]) / max(rows[-1]["seconds"] - rows[0]["seconds"], 1e-3)
left = float(sys.argv[2]) - 30.0  # start-up, validations, the final validation and threshold tuning
print(max(200, int(0.9 * rate * left)))
PY
) || S=0
  echo "$r: calibrated rate -> $S steps in $LEFT s" | tee -a $L/env.txt; tail -2 $L/cal_$r.log
  [ "$S" -gt 0 ] && python3 -m distill4d.cli train fcunet --library $S/lib ${ARGS[$r]} --out $W/fcunet_$r.pt --config $CFG --steps $S --minutes $(python3 -c "print(round(($LEFT - 12) / 60, 2))") --device $DEV > $L/train_$r.log 2>&1 &
done
wait
echo "training ended at $(el) s"
cd $W && for r in A B C; do tail -3 $L/train_$r.log; [ -d fcunet_$r.pt.partial ] && cp fcunet_$r.pt.partial/checkpoint.pt ckpt_$r.pt; done
tar czf $OUT/weights.tgz fcunet_*.pt fcunet_*.json ckpt_*.pt 2>/dev/null; cd - >/dev/null
tar czf $OUT/logs.tgz -C $L . && rm -rf $L
ls -la $OUT $W; echo "all done at $(el) s"
