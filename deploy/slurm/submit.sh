#!/bin/bash
# Queues the --full array and, after every task of it succeeded, the merge. Run from the repository root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
array=$(sbatch --parsable "$here/mechinterp-full.sbatch" "$@")
merge=$(sbatch --parsable --dependency="afterok:${array%%;*}" "$here/merge.sbatch")
echo "array job ${array%%;*}, merge job ${merge%%;*} (runs after the array succeeds)"
