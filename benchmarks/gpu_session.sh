#!/usr/bin/env bash
# The GPU checks of one device session, in one prepared run (see README "Performance"):
#   bash benchmarks/gpu_session.sh            # results under $OUT (default gpu_out/)
# 1. training throughput against HF transformers, eager and both compiled, with MFU;
# 2. benchmarks/gpu_check.py: the kernel each attention pattern gets, FlexAttention against SDPA,
#    bf16 steps of each objective eager and compiled;
# 3. an FSDP fit of each recipe (tiny, bf16, a few steps: gradient clipping goes through FSDP).
# Each part has its own time limit and writes its own file, so a slow part loses only itself.
set -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=".:${PYTHONPATH:-}" LIT_PTM_CACHE=/tmp/lit_ptm_cache
python3 -c "import torch, lightning, transformers; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)" | tee "$OUT/device.txt"

for model in "--model gpt2 --batch 8 --seq 1024" "--model bert-base --batch 32 --seq 512"; do
  for compiled in "" "--compile"; do
    echo "== $model $compiled" | tee -a "$OUT/throughput.txt"
    timeout 120 python3 benchmarks/train_throughput.py $model --bf16 --steps 10 --rounds 3 $compiled 2>&1 \
      | grep -E "lit_ptm|hf|ratio|FLOPs|model" | tee -a "$OUT/throughput.txt"
  done
done

timeout 150 python3 benchmarks/gpu_check.py 2>&1 | grep -v Warning | tee "$OUT/gpu_check.txt"
echo "gpu_check exit: $?" | tee -a "$OUT/gpu_check.txt"

for recipe in gpt bert roberta albert; do
  timeout 75 python3 -m lit_ptm fit --config configs/$recipe.yaml --config configs/tiny.yaml --trainer.accelerator gpu \
    --trainer.devices 1 --trainer.strategy fsdp --trainer.precision bf16-mixed --trainer.max_steps 5 \
    --trainer.val_check_interval 5 --trainer.limit_val_batches 2 --trainer.enable_progress_bar false \
    --trainer.default_root_dir /tmp/fsdp-$recipe --data.init_args.num_workers 2 > "/tmp/fsdp-$recipe.log" 2>&1
  echo "fsdp $recipe exit $? $(grep -o 'max_steps=5. reached' /tmp/fsdp-$recipe.log | head -1) $(grep -E 'Error|error:' /tmp/fsdp-$recipe.log | tail -1)" | tee -a "$OUT/fsdp.txt"
done

