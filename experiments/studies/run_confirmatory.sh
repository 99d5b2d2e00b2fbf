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
# copied back into runs/studies before the studies start (a study keeps a finished run it finds),
# archived every 10 minutes while the studies run, and once more when this script stops, however
# it stops. Only a commit (and push) of $ARCHIVE keeps them when the machine goes away.
ARCHIVE=experiments/studies/results
STUDIES="confirmatory confirmatory_convergence"
shopt -s nullglob

for arg in "$@"; do
  case "$arg" in
    storage_path=*)
      echo "run_confirmatory.sh: storage_path= is not supported here: the archive and the" \
        "resume look for the studies in runs/studies" >&2
      exit 2
      ;;
  esac
done

restore_runs() {
  for study in $STUDIES; do
    for src in "$ARCHIVE/$study/runs"/*/; do
      case "$src" in *.partial/) continue ;; esac
      dst="runs/studies/$study/runs/$(basename "$src")"
      [ -f "$dst/summary.json" ] && [ -f "$dst/test.json" ] && continue
      rm -rf "$dst" && mkdir -p "$dst" && cp -r "$src". "$dst"/
    done
  done
}

archive_runs() {
  for study in $STUDIES; do
    for src in runs/studies/"$study"/runs/*/; do
      src=${src%/}
      # finished: the driver writes summary.json after the worker's test.json; others resume here
      [ -f "$src/summary.json" ] && [ -f "$src/test.json" ] || continue
      dst="$ARCHIVE/$study/runs/$(basename "$src")"
      [ -f "$dst/summary.json" ] && [ -f "$dst/test.json" ] && continue
      tmp="$dst.partial"
      rm -rf "$tmp" && mkdir -p "$tmp"
      (cd "$src" && find . -name .validate_storage_marker -prune -o -path ./tb -prune \
        -o -path ./plots -prune -o -path ./bank -prune -o -name 'checkpoint_*' -prune \
        -o -type f -print) |
        while read -r f; do mkdir -p "$tmp/$(dirname "$f")" && cp "$src/$f" "$tmp/$f"; done
      rm -rf "$dst" && mv "$tmp" "$dst"  # whole runs only, even if stopped while copying
    done
  done
}

if [ "${1:-}" = "--archive" ]; then  # only archive the finished runs (e.g. of a study still running)
  archive_runs
  exit 0
fi

# The `pretrained` runs of every machine must start from the same backbone. Pretraining is not
# bit-reproducible across CPUs (kernels differ), so the backbone itself is archived (45 MB) and
# copied back instead of retrained; its hash is archived too, and a backbone that differs stops the
# script before runs from two backbones could mix.
ARCHIVED_BACKBONE=$ARCHIVE/confirmatory/backbone.pth
if [ ! -f "$BACKBONE" ] && [ -f "$ARCHIVED_BACKBONE" ]; then
  mkdir -p "$(dirname "$BACKBONE")" && cp "$ARCHIVED_BACKBONE" "$BACKBONE"
fi
if [ ! -f "$BACKBONE" ]; then
  $RAYCONTRAST train experiments/pretrain/synthetic.yaml
  $RAYCONTRAST export runs/pretrain_synthetic --backbone --out "$BACKBONE"
fi
SHA=$(sha256sum "$BACKBONE" | cut -d' ' -f1)
if [ -f "$ARCHIVE/confirmatory/backbone.sha256" ]; then
  WANT=$(cat "$ARCHIVE/confirmatory/backbone.sha256")
  if [ "$SHA" != "$WANT" ]; then
    echo "run_confirmatory.sh: $BACKBONE has sha256 $SHA, but the archived runs of the" \
      "pretrained regime used $WANT ($ARCHIVE/confirmatory/backbone.sha256). Restore that" \
      "backbone ($ARCHIVED_BACKBONE), or delete $ARCHIVE/confirmatory/runs/confirmatory_pretrained-*," \
      "the hash file, $ARCHIVED_BACKBONE and runs/studies/confirmatory to rerun that regime" \
      "with this one" >&2
    exit 1
  fi
else
  mkdir -p "$ARCHIVE/confirmatory" && echo "$SHA" > "$ARCHIVE/confirmatory/backbone.sha256"
fi
[ -f "$ARCHIVED_BACKBONE" ] || cp "$BACKBONE" "$ARCHIVED_BACKBONE"
restore_runs
(
  # its sleep too, even one started just before the TERM; and a sleep that outlived it anyway must
  # not hold the script's output open (a caller reading it would wait 10 minutes)
  trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM
  while :; do
    sleep 600 >/dev/null 2>&1 &
    wait $!
    archive_runs || true
  done
) &
ARCHIVER=$!
on_exit() {
  local rc=$?
  set +e
  kill "$ARCHIVER" 2>/dev/null
  wait "$ARCHIVER" 2>/dev/null
  archive_runs
  exit "$rc"
}
trap on_exit EXIT
for study in $STUDIES; do
  if [ -f "runs/studies/$study/tuner.pkl" ]; then
    $RAYCONTRAST study "experiments/studies/$study.yaml" --resume "$@"
  else
    $RAYCONTRAST study "experiments/studies/$study.yaml" "$@"
  fi
done
