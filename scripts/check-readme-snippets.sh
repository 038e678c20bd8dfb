#!/usr/bin/env bash
# Fails if a code block README.md quotes from an example differs from the example.
#
# In README.md, a line `<!-- snippet: examples/quickstart.cpp quickstart -->` says that
# the next ```cpp block is the text between the two `// [quickstart]` lines of
# examples/quickstart.cpp, with its common indentation removed.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readme="$repo_root/README.md"

# The lines between the two `// [tag]` markers of a file, dedented.
example_region() {
  awk -v marker="// [$2]" '
    { line = $0; sub(/^[ \t]+/, "", line); sub(/[ \t]+$/, "", line) }
    line == marker { inside = !inside; next }
    inside { print }
  ' "$1" | awk '
    { lines[NR] = $0 }
    /[^ ]/ { match($0, /^ */); if (!seen || RLENGTH < indent) { indent = RLENGTH; seen = 1 } }
    END { for (i = 1; i <= NR; ++i) print substr(lines[i], indent + 1) }
  '
}

# The fenced block after the README's snippet comment for (path, tag).
readme_block() {
  awk -v comment="<!-- snippet: $1 $2 -->" '
    state == 0 && $0 == comment { state = 1; next }
    state == 1 && /^```/ { state = 2; next }
    state == 2 && /^```/ { exit }
    state == 2 { print }
  ' "$readme"
}

snippets=$(sed -n 's/^<!-- snippet: \([^ ]*\) \([^ ]*\) -->$/\1 \2/p' "$readme")
if [[ -z $snippets ]]; then
  echo "check-readme-snippets: no snippet comments in README.md" >&2
  exit 1
fi

status=0
while read -r path tag; do
  expected=$(example_region "$repo_root/$path" "$tag")
  quoted=$(readme_block "$path" "$tag")
  if [[ -z $expected ]]; then
    echo "check-readme-snippets: no '// [$tag]' region in $path" >&2
    status=1
  elif [[ $expected != "$quoted" ]]; then
    echo "check-readme-snippets: README.md's quote of $path [$tag] is out of date:" >&2
    diff -u --label "$path [$tag]" --label "README.md" <(echo "$expected") <(echo "$quoted") >&2 || true
    status=1
  else
    echo "check-readme-snippets: $path [$tag] matches"
  fi
done <<<"$snippets"
exit "$status"
