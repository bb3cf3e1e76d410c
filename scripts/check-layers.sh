#!/usr/bin/env bash
# Fails when a module reaches up the data flow (DESIGN.md, STYLE.md §2):
#   oci ← registry ← ctrd ← format ← image ← cache ← fs ← convert ← commit ← snapshot ← service ← main   (config: anyone)
# A module may name `crate::X` only for X to its left.
set -euo pipefail
cd "$(dirname "$0")/.."
order=(oci registry ctrd format image cache fs convert commit snapshot service)
allowed() { # $1 = module, $2 = used module
  [ "$2" = config ] && return 0
  [ "$2" = metrics ] && return 0
  local i j
  for i in "${!order[@]}"; do [ "${order[$i]}" = "$1" ] && break; done
  for j in "${!order[@]}"; do [ "${order[$j]}" = "$2" ] && break; done
  [ "$j" -le "$i" ]
}
bad=0
for m in "${order[@]}"; do
  while IFS= read -r line; do
    file=${line%%:*}
    for used in $(grep -oE 'crate::[a-z_]+' <<<"$line" | sed 's/crate:://' | sort -u); do
      if ! allowed "$m" "$used"; then
        echo "layering: $file uses crate::$used, which is above $m in the data flow" >&2
        bad=1
      fi
    done
  done < <(grep -rnE 'crate::[a-z_]+' "src/$m" || true)
done
[ "$bad" = 0 ] && echo "layering: ok (${order[*]})"
exit $bad
