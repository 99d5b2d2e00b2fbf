#!/usr/bin/env bash
# Run, or resume, the whole pre-registered confirmatory study (confirmatory.protocol.md) from the
# repository root: the pretraining of the backbone (skipped once its file exists), its export, then
# confirmatory.yaml and confirmatory_convergence.yaml. Rerunning the same command after an
# interruption resumes: finished runs are kept, unfinished ones continue from their last checkpoint.
# Extra arguments go to `raycontrast study` (e.g. --address, or storage_path=...).
#   experiments/studies/run_confirmatory.sh
set -euo pipefail
RAYCONTRAST=${RAYCONTRAST:-raycontrast}
BACKBONE=runs/pretrain_synthetic/backbone.pth

if [ ! -f "$BACKBONE" ]; then
  $RAYCONTRAST train experiments/pretrain/synthetic.yaml
  $RAYCONTRAST export runs/pretrain_synthetic --backbone --out "$BACKBONE"
fi
for study in confirmatory confirmatory_convergence; do
  if [ -f "runs/studies/$study/tuner.pkl" ]; then
    $RAYCONTRAST study "experiments/studies/$study.yaml" --resume "$@"
  else
    $RAYCONTRAST study "experiments/studies/$study.yaml" "$@"
  fi
done
