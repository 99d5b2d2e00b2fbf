#!/usr/bin/env bash
# Run, or resume, the whole pre-registered confirmatory study (confirmatory.protocol.md) from the
# repository root: the pretraining of the backbone (skipped once its file exists), its export, then
# confirmatory.yaml and confirmatory_convergence.yaml. Rerunning the same command after an
# interruption resumes: finished runs are kept, unfinished ones continue from their last checkpoint.
# Extra arguments go to `raycontrast study` (e.g. --address, or storage_path=...).
#   experiments/studies/run_confirmatory.sh
#   experiments/studies/run_confirmatory.sh --archive   # only archive the runs finished so far
set -euo pipefail
RAYCONTRAST=${RAYCONTRAST:-raycontrast}
BACKBONE=runs/pretrain_synthetic/backbone.pth

# Finished runs are carried between machines in the repository: their small files (not the
# checkpoints, plots, TensorBoard events or bank snapshots) are kept under $ARCHIVE/<study>/runs,
# copied back into runs/studies before the studies start (a study keeps a finished run it finds)
# and archived again when this script stops, however it stops. Commit $ARCHIVE to keep them.
ARCHIVE=experiments/studies/results
STUDIES="confirmatory confirmatory_convergence"

restore_runs() {
  for study in $STUDIES; do
    [ -d "$ARCHIVE/$study/runs" ] || continue
    for src in "$ARCHIVE/$study/runs"/*/; do
      dst="runs/studies/$study/runs/$(basename "$src")"
      [ -f "$dst/test.json" ] && continue
      mkdir -p "$dst" && cp -r "$src". "$dst"/
    done
  done
}

archive_runs() {
  for study in $STUDIES; do
    for src in runs/studies/"$study"/runs/*/; do
      [ -f "$src/test.json" ] || continue  # unfinished: it resumes from its checkpoint here
      dst="$ARCHIVE/$study/runs/$(basename "$src")"
      mkdir -p "$dst"
      (cd "$src" && find . -name .validate_storage_marker -prune -o -path ./tb -prune -o -path ./plots -prune -o -path ./bank -prune \
        -o -name 'checkpoint_*' -prune -o -type f -print) |
        while read -r f; do mkdir -p "$dst/$(dirname "$f")" && cp "$src/$f" "$dst/$f"; done
    done
  done
}

if [ "${1:-}" = "--archive" ]; then  # only archive the finished runs (e.g. of a study still running)
  archive_runs
  exit 0
fi

if [ ! -f "$BACKBONE" ]; then
  $RAYCONTRAST train experiments/pretrain/synthetic.yaml
  $RAYCONTRAST export runs/pretrain_synthetic --backbone --out "$BACKBONE"
fi
# The `pretrained` runs of every machine must start from the same backbone: its hash is archived
# with the runs, and a backbone that differs stops the script before anything mixes.
SHA=$(sha256sum "$BACKBONE" | cut -d' ' -f1)
if [ -f "$ARCHIVE/confirmatory/backbone.sha256" ]; then
  WANT=$(cat "$ARCHIVE/confirmatory/backbone.sha256")
  if [ "$SHA" != "$WANT" ]; then
    echo "run_confirmatory.sh: $BACKBONE has sha256 $SHA, but the archived runs of the" \
      "pretrained regime used $WANT ($ARCHIVE/confirmatory/backbone.sha256). Restore that" \
      "backbone, or delete $ARCHIVE/confirmatory/runs/confirmatory_pretrained-* and the hash" \
      "file to rerun that regime with this one" >&2
    exit 1
  fi
else
  mkdir -p "$ARCHIVE/confirmatory" && echo "$SHA" > "$ARCHIVE/confirmatory/backbone.sha256"
fi
restore_runs
trap archive_runs EXIT
for study in $STUDIES; do
  if [ -f "runs/studies/$study/tuner.pkl" ]; then
    $RAYCONTRAST study "experiments/studies/$study.yaml" --resume "$@"
  else
    $RAYCONTRAST study "experiments/studies/$study.yaml" "$@"
  fi
done
