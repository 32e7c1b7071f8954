#!/usr/bin/env python3
"""Checks the shape of the workspace's code, as .ci/run does:

- no import cycle between the modules (files) of a crate: a module may use
  its own submodules and its siblings, but two modules never use each
  other, directly or round a longer loop;
- no module reaches into another role's internals: code outside a module
  directory `m/` uses only what `m/mod.rs` exports, never `crate::m::x::...`
  (a role exports on purpose what others may use);
- no function outside tests and benches is longer than MAX_FN_LINES lines.

It reads the sources as text with a few rules that hold for this code base
(paths written as `crate::...`, `super::...` or a sibling module's name),
not as a compiler would; `--verbose` prints every edge it found, so a
surprise can be checked by hand.

    scripts/structure.py            check, exit 1 on a finding
    scripts/structure.py --verbose  also print the module graph
"""

import re
import sys
from pathlib import Path

MAX_FN_LINES = 80
CRATES = ["common", "proto", "server", "client", "make-shim", "testkit"]
ROOT = Path(__file__).resolve().parent.parent

STRING = re.compile(r'b?r(#*)".*?"\1|b?"(?:\\.|[^"\\])*"', re.S)
CHAR = re.compile(r"b?'(?:\\.|[^'\\])'")
LINE_COMMENT = re.compile(r"//[^\n]*")
BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def strip(text):
    """The code without comments, strings and char literals, with every
    line kept (so line numbers stay true)."""

    def blank(match):
        return re.sub(r"[^\n]", " ", match.group(0))

    text = BLOCK_COMMENT.sub(blank, text)
    text = STRING.sub(blank, text)
    text = CHAR.sub(blank, text)
    return LINE_COMMENT.sub(blank, text)


def module_files(src):
    """Module path (tuple of names) -> file, for one crate's src/ tree.
    Binaries under src/bin are crates of their own and are left out."""
    modules = {}
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src)
        if rel.parts[0] == "bin":
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        modules[tuple(parts)] = path
    return modules


def test_free(code):
    """The code with `#[cfg(test)]` items blanked out."""
    lines = code.split("\n")
    out = list(lines)
    i = 0
    while i < len(lines):
        if re.match(r"\s*#\[cfg\(test\)\]", lines[i]):
            depth, started, j = 0, False, i + 1
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                started = started or "{" in lines[j]
                if started and depth <= 0:
                    break
                if not started and lines[j].rstrip().endswith(";"):
                    break
                j += 1
            for k in range(i, min(j + 1, len(lines))):
                out[k] = ""
            i = j + 1
            continue
        i += 1
    return "\n".join(out)


PATH = re.compile(r"\b(crate|super|self)((?:::\w+)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)::((?:\w+::)*)\{([^;]*)\}\s*;", re.S)


def referenced_paths(code, here):
    """Absolute module paths (tuples) that the code of module `here` names."""
    found = []

    def absolute(head, rest):
        if head == "crate":
            base = []
        elif head == "self":
            base = list(here)
        else:
            base = list(here[:-1])
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
        return tuple(base + rest)

    for match in USE_GROUP.finditer(code):
        head, prefix = match.group(1), [p for p in match.group(2).split("::") if p]
        for item in re.split(r"[,\s]+", match.group(3)):
            item = item.split("::")
            item = [p for p in item if p and p not in ("{", "}")]
            found.append(absolute(head, prefix + item[:1]))
    for match in PATH.finditer(code):
        rest = [p for p in match.group(2).split("::") if p]
        found.append(absolute(match.group(1), rest))
    return found


def resolve(path, modules):
    """The longest module prefix of `path` that is a module of the crate."""
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None


def sibling_paths(code, here, modules):
    """Paths that start with a sibling module's bare name (`job::Job` after
    `mod job;` in the parent, or a child named without `self::`)."""
    found = []
    parent = here
    children = {m[-1] for m in modules if len(m) == len(parent) + 1 and m[: len(parent)] == parent}
    for name in children:
        for _ in re.finditer(r"(?<![:\w])" + re.escape(name) + r"::\w", code):
            found.append(parent + (name,))
    return found


def graph(crate):
    src = ROOT / crate / "src"
    modules = module_files(src)
    edges = {m: set() for m in modules}
    for module, path in modules.items():
        code = test_free(strip(path.read_text()))
        targets = referenced_paths(code, module) + sibling_paths(code, module, modules)
        for target in targets:
            target = resolve(target, modules)
            if target is None or target == module:
                continue
            # A module knows its own submodules; that is structure, not a use.
            if target[: len(module)] == module:
                continue
            edges[module].add(target)
    return modules, edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return found


def reach_ins(modules, edges):
    """Uses of `crate::m::x` from outside `m`, where `m` is a directory
    module (it has submodules) and `x` one of its submodules."""
    found = []
    for module, targets in edges.items():
        for target in targets:
            for n in range(1, len(target)):
                owner = target[:n]
                if module[: len(owner)] == owner:
                    continue
                found.append((module, target, owner))
                break
    return found


FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+(\w+)")


def long_functions(path):
    code = test_free(strip(path.read_text()))
    lines = code.split("\n")
    found = []
    for i, line in enumerate(lines):
        match = FN.match(line)
        if not match:
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            depth += lines[j].count("{") - lines[j].count("}")
            if "{" in lines[j]:
                started = True
            if started and depth <= 0:
                break
            if not started and lines[j].rstrip().endswith(";"):
                break
            j += 1
        length = j - i + 1
        if started and length > MAX_FN_LINES:
            found.append((match.group(1), i + 1, length))
    return found


def name(module):
    return "::".join(module) or "(root)"


def main():
    verbose = "--verbose" in sys.argv
    problems = 0
    for crate in CRATES:
        if not (ROOT / crate / "src").is_dir():
            continue
        modules, edges = graph(crate)
        if verbose:
            for module in sorted(edges):
                for target in sorted(edges[module]):
                    print(f"{crate}: {name(module)} -> {name(target)}")
        for component in cycles(edges):
            problems += 1
            print(f"{crate}: import cycle: {' <-> '.join(name(m) for m in component)}")
        for module, target, owner in reach_ins(modules, edges):
            problems += 1
            print(
                f"{crate}: {name(module)} reaches into {name(target)}; "
                f"use what {name(owner)} exports"
            )
    for crate in CRATES:
        src = ROOT / crate / "src"
        for path in sorted(src.rglob("*.rs")) if src.is_dir() else []:
            for function, line, length in long_functions(path):
                problems += 1
                rel = path.relative_to(ROOT)
                print(f"{rel}:{line}: fn {function} is {length} lines (at most {MAX_FN_LINES})")
    if problems:
        print(f"structure: {problems} finding(s)")
        return 1
    print("structure: no import cycle, no reach-in, no function over "
          f"{MAX_FN_LINES} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
