#!/usr/bin/env bash
# The main job on the bundled real data: prep of the Sentinel-2 subset (data/quickstart) -> verify
# -> contrastive pretraining (DeepSpeed) -> export -> linear probe, k-NN and fine-tuning on 80 real
# labelled EuroSAT_MS tiles (data/eurosat_dev), each next to a random-init twin and an
# input-statistics baseline.
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
echo; echo "== 3/5 contrastive pretraining (DeepSpeed, ZeRO-1, CPU) -> $OUT/pretrain"
eofm-pretrain configs/pretrain/quickstart.yaml
echo; echo "== 4/5 export the encoder -> $OUT/export"
eofm-export "$OUT/pretrain" "$OUT/export"
echo; echo "== 5/5 EuroSAT_MS dev tiles: linear probe, k-NN, fine-tuning vs random init vs input statistics -> $OUT/finetune"
eofm-finetune configs/finetune/quickstart.yaml
echo
echo "done in $(( $(date +%s) - start ))s (after setup). Outputs:"
echo "  shards + manifest : $OUT/data/manifest.json"
echo "  training curves   : $OUT/pretrain/training.png  (metrics: $OUT/pretrain/metrics.jsonl)"
echo "  exported encoder  : $OUT/export/{model.safetensors,config.json,README.md}"
echo "  downstream metrics: $OUT/finetune/metrics.json"
