#!/usr/bin/env bash
# Fails if a C++ block of README.md or docs/*.md is out of date. Every ```cpp block is
# checked one of two ways:
#
# - A quote: a line `<!-- snippet: examples/quickstart.cpp quickstart -->` says that the
#   next ```cpp block is the text between the two `// [quickstart]` lines of
#   examples/quickstart.cpp, with its common indentation removed; the example is built
#   and run by ctest, so the quote is code that works.
# - Any other ```cpp block is compiled (syntax and types, -fsyntax-only) as the body of a
#   function, after every public header (include/diffattn/*.hpp), with $CXX (default
#   c++) and the include directories of Eigen, xsimd and nlohmann-json found under
#   /usr/include. Blocks that declare names a reader would supply (a `block`, an `x`)
#   must therefore declare them.
#
# ctest runs it as `readme_snippets`.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
pages=(README.md docs/*.md)
cxx=${CXX:-c++}

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

# The n-th (1-based) ```cpp block of a page, and whether a snippet comment precedes it:
# prints "quote PATH TAG" or "compile" on the first line, then the block.
cpp_block() {
  awk -v want="$2" '
    /^<!-- snippet: [^ ]+ [^ ]+ -->$/ { pending = $3 " " $4; next }
    state == 0 && /^```cpp$/ {
      ++n
      if (n == want) { print (pending == "" ? "compile" : "quote " pending); state = 1 }
      pending = ""
      next
    }
    state == 1 && /^```/ { exit }
    state == 1 { print; next }
    /[^ \t]/ { pending = "" }
  ' "$1"
}

include_flags=(-I "$repo_root/include")
for dir in /usr/include/eigen3; do
  [[ -d $dir ]] && include_flags+=(-I "$dir")
done

# Compiles one block as a function body; prints the compiler's messages on failure.
compile_block() {
  local source
  source=$(mktemp --suffix=.cpp)
  {
    for header in "$repo_root"/include/diffattn/*.hpp; do
      echo "#include <diffattn/${header##*/}>"
    done
    echo 'void documented_snippet() {'
    cat
    echo '}'
  } >"$source"
  local status=0
  "$cxx" -std=c++17 -fsyntax-only -Wall -Wno-unused-variable "${include_flags[@]}" "$source" >&2 || status=1
  rm -f "$source"
  return "$status"
}

status=0
quotes=0
for page in "${pages[@]}"; do
  [[ -f $page ]] || continue
  count=$(grep -c '^```cpp$' "$page" || true)
  # A snippet comment must be followed by a ```cpp block, or it checks nothing.
  comments=$(grep -c '^<!-- snippet: ' "$page" || true)
  for ((i = 1; i <= count; ++i)); do
    block=$(cpp_block "$page" "$i")
    header=${block%%$'\n'*}
    body=${block#*$'\n'}
    [[ $block == *$'\n'* ]] || body=""
    if [[ $header == quote* ]]; then
      read -r _ path tag <<<"$header"
      quotes=$((quotes + 1))
      expected=$(example_region "$path" "$tag")
      if [[ -z $expected ]]; then
        echo "check-readme-snippets: $page: no '// [$tag]' region in $path" >&2
        status=1
      elif [[ $expected != "$body" ]]; then
        echo "check-readme-snippets: $page's quote of $path [$tag] is out of date:" >&2
        diff -u --label "$path [$tag]" --label "$page" <(echo "$expected") <(echo "$body") >&2 || true
        status=1
      else
        echo "check-readme-snippets: $page: $path [$tag] matches"
      fi
    elif compile_block <<<"$body"; then
      echo "check-readme-snippets: $page: C++ block $i compiles"
    else
      echo "check-readme-snippets: $page: C++ block $i does not compile (above)" >&2
      status=1
    fi
  done
  quoted_here=$(for ((i = 1; i <= count; ++i)); do cpp_block "$page" "$i" | head -n 1; done | grep -c '^quote' || true)
  if ((comments != quoted_here)); then
    echo "check-readme-snippets: $page: $comments snippet comments but $quoted_here quoted blocks" \
      "(a comment must be followed by its \`\`\`cpp block)" >&2
    status=1
  fi
done
if ((quotes == 0)); then
  echo "check-readme-snippets: no snippet comments in README.md or docs/*.md" >&2
  exit 1
fi
exit "$status"
