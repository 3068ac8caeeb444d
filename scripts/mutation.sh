#!/usr/bin/env bash
# Mutation testing of the numeric core with mutmut (configured in pyproject's [tool.mutmut]).
#   scripts/mutation.sh                                   # every mutant of the core (hours)
#   scripts/mutation.sh "ppl_vae.inference.objectives*"   # the mutants of one module
# Then: mutmut results (survivors), mutmut show NAME (a mutant's diff). Needs the dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@"
mutmut results
