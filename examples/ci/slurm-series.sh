#!/usr/bin/env bash
# Audit every checkpoint of a fine-tune on a Slurm cluster: one array task per checkpoint, all
# writing into one shared reports folder, then one job that merges them into a trend page.
#
#   CHECKPOINTS=checkpoints.txt REPORTS=/shared/refusal-reports ./slurm-series.sh
#
# checkpoints.txt lists one model spec per line (blank lines and # comments are skipped), like a
# --models-file (but relative paths are read from the folder you submit in). Run without
# SLURM_ARRAY_TASK_ID, the script submits itself as an array of that many tasks, and the trend job
# after them (afterany: it also runs when an audit failed, which is what the trend page is for).
#SBATCH --job-name=refusal-audit
#SBATCH --gres=gpu:1
#SBATCH --time=01:00:00
#SBATCH --output=refusal-audit-%A_%a.out
set -euo pipefail

CHECKPOINTS=${CHECKPOINTS:-checkpoints.txt}
REPORTS=${REPORTS:-reports}
BASELINE=${BASELINE:-checkpoints/parent}
export CHECKPOINTS REPORTS BASELINE

specs() { grep -v '^[[:space:]]*#' "$CHECKPOINTS" | sed 's/[[:space:]]#.*//' | grep -v '^[[:space:]]*$'; }

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    n=$(specs | wc -l)
    job=$(sbatch --parsable --array=1-"$n" --export=ALL "$0")
    sbatch --dependency=afterany:"$job" --job-name=refusal-trend --export=ALL \
        --wrap "python -m refusal_probe trend '$REPORTS' --report-dir '$REPORTS'"
    echo "submitted $n audits (job $job) and their trend page; reports in $REPORTS"
    exit 0
fi

model=$(specs | sed -n "${SLURM_ARRAY_TASK_ID}p" | xargs)
refusal-probe audit --model "$model" --baseline "$BASELINE" \
    --device cuda --dtype bfloat16 --require-checks all \
    --report-dir "$REPORTS" --junitxml "$REPORTS/junit-$SLURM_ARRAY_TASK_ID.xml"
