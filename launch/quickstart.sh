#!/usr/bin/env bash
# The main job on the bundled real Sentinel-2 subset (data/quickstart):
# prep -> verify -> MAE pretraining (DeepSpeed) -> export -> linear probe + fine-tuning.
# Everything goes to runs/quickstart/ (replaced on every run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source .venv/bin/activate
export PYTHONWARNINGS=ignore
OUT=runs/quickstart
rm -rf "$OUT"
start=$(date +%s)
echo; echo "== 1/5 shard preparation: data/quickstart -> $OUT/data"
eofm-prep run configs/prep/quickstart.yaml
echo; echo "== 2/5 verify shards against the manifest"
eofm-prep verify "$OUT/data" --quiet
echo; echo "== 3/5 MAE pretraining (DeepSpeed, ZeRO-1, CPU) -> $OUT/pretrain"
eofm-pretrain configs/pretrain/quickstart.yaml
echo; echo "== 4/5 export the encoder -> $OUT/export"
eofm-export "$OUT/pretrain" "$OUT/export"
echo; echo "== 5/5 linear probe and fine-tuning -> $OUT/finetune"
eofm-finetune configs/finetune/quickstart.yaml
echo
echo "done in $(( $(date +%s) - start ))s (after setup). Outputs:"
echo "  shards + manifest : $OUT/data/manifest.json"
echo "  training curves   : $OUT/pretrain/training.png  (metrics: $OUT/pretrain/metrics.jsonl)"
echo "  reconstructions   : $OUT/pretrain/reconstructions.png"
echo "  exported encoder  : $OUT/export/{model.safetensors,config.json,README.md}"
echo "  downstream metrics: $OUT/finetune/metrics.json"
