#!/usr/bin/env bash
# Print the systemd exposure score of the project's units, and fail when one is above the limit.
#
#   .ci/systemd-security.sh                      both units in systemd/, limit 2.0
#   .ci/systemd-security.sh --max 1.5 UNIT...    other units or another limit
#   .ci/systemd-security.sh -v                   also print systemd's full table (what each setting costs)
#
# Output: systemd-analyze's "→ Overall exposure level for UNIT: SCORE LABEL" line per unit.
# Exit status: 0 all within the limit, 1 a unit is above it, 2 usage or systemd-analyze failed.
# The analysis is offline (--offline=true): it reads the unit files only and needs no running systemd.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
max=2.0
verbose=0
units=()

while (($#)); do
    case $1 in
        --max) max=${2:?--max needs a number}; shift 2 ;;
        -v | --verbose) verbose=1; shift ;;
        -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "systemd-security.sh: unknown option $1" >&2; exit 2 ;;
        *) units+=("$1"); shift ;;
    esac
done
if ((${#units[@]} == 0)); then
    units=("$repo/systemd/l4e-agent@.service" "$repo/systemd/l4e-lookout.service")
fi
command -v systemd-analyze >/dev/null || { echo "systemd-security.sh: systemd-analyze not found (Debian package: systemd)" >&2; exit 2; }

status=0
for unit in "${units[@]}"; do
    if ! report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1); then
        printf '%s\n' "$report" >&2
        exit 2
    fi
    ((verbose)) && printf '%s\n' "$report"
    overall=$(grep 'Overall exposure level' <<<"$report") || { printf '%s\n' "$report" >&2; exit 2; }
    ((verbose)) || printf '%s\n' "$overall"
    # "→ Overall exposure level for l4e-agent@i.service: 1.5 OK 🙂" → 1.5
    score=$(sed -E 's/.*: ([0-9]+(\.[0-9]+)?) .*/\1/' <<<"$overall")
    if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then
        echo "systemd-security.sh: $(basename -- "$unit") exposure $score is above $max" >&2
        status=1
    fi
done
exit "$status"
