#!/usr/bin/env python3
"""The house checks of src/ that no compiler makes: no import cycle between modules, and no
function longer than a page.

    scripts/module-deps.py                 # the module graph, lowest layer first; exit 1 on a cycle
    scripts/module-deps.py --dot           # the same graph for graphviz
    scripts/module-deps.py --max-fn-lines 120   # also fail on a function longer than that

A node is a module that other modules may name: a file module, or a folder's `mod.rs`. A
private submodule (`mod x;`, not `pub mod x;`) belongs to its parent: it is one type's or one
concern's code spread over the files of a folder (`engine/set/`, `fuse/`), so its imports
count as its parent's. An edge A -> B is any `crate::B...` or `super::...` path in A's code
(comments and `#[cfg(test)]` modules left out: tests may reach anywhere without shaping the
layers). Run by scripts/test.sh.
"""

import argparse
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    """src/a/b.rs -> ('a', 'b'); src/a/mod.rs -> ('a',); src/lib.rs -> ()."""
    rel = os.path.relpath(path, SRC)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return tuple(rel)


def strip(text):
    """The code without comments, string literals and #[cfg(test)] modules."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, skip, depth = [], None, 0
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if skip is None and line.strip() == "#[cfg(test)]" and i + 1 < len(lines):
            nxt = lines[i + 1].strip()
            if nxt.startswith("mod ") and nxt.endswith("{"):
                skip, depth = True, 0
        if skip:
            depth += line.count("{") - line.count("}")
            if depth <= 0 and "}" in line:
                skip = None
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def paths_in(code):
    """Every `crate::...` and `super::...` path, grouped imports expanded."""
    found = []

    def expand(prefix, body):
        depth, part, parts = 0, "", []
        for ch in body:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(part)
                part = ""
            else:
                part += ch
        parts.append(part)
        for p in parts:
            p = p.strip()
            if not p:
                continue
            m = re.match(r"^([\w:]*?)::\{(.*)\}$", p, re.S)
            if m:
                expand(prefix + [x for x in m.group(1).split("::") if x], m.group(2))
            else:
                found.append(prefix + [x for x in p.split("::") if x])

    for m in re.finditer(r"\b((?:crate|super)(?:::super)*)::\{", code):
        start = m.end()
        depth, j = 1, start
        while depth and j < len(code):
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        expand(m.group(1).split("::"), code[start : j - 1])
    for m in re.finditer(r"\b((?:crate|super)(?:::super)*(?:::\w+)+)", code):
        found.append(m.group(1).split("::"))
    return found


def load():
    files, public, owner = {}, set(), {}
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(".rs") and not root.endswith(os.sep + "bin") and n != "main.rs":
                p = os.path.join(root, n)
                files[module_of(p)] = open(p, encoding="utf-8").read()
    for mod, text in files.items():
        for m in re.finditer(r"^\s*(pub(?:\([\w:]+\))? )?mod (\w+);", text, re.M):
            child = mod + (m.group(2),)
            if m.group(1) == "pub ":
                public.add(child)
    public.add(())

    def node(mod):
        # The nearest ancestor that is public all the way: a private submodule is its parent's.
        while mod and mod not in public:
            mod = mod[:-1]
        return mod

    for mod in files:
        owner[mod] = node(mod)
    return files, owner


def resolve(path, here, files):
    """The module a path names: its longest prefix that is a module."""
    if path[0] == "crate":
        base, rest = (), path[1:]
    else:
        base = here
        while path and path[0] == "super":
            base, path = base[:-1], path[1:]
        rest = path
    best = base
    for k in range(1, len(rest) + 1):
        if base + tuple(rest[:k]) in files:
            best = base + tuple(rest[:k])
    return best


def graph():
    files, owner = load()
    edges = {n: set() for n in set(owner.values())}
    for mod, text in files.items():
        a = owner[mod]
        for p in paths_in(strip(text)):
            b = owner.get(resolve(p, mod, files), ())
            if b != a and b != ():
                edges[a].add(b)
    edges.pop((), None)
    for v in edges.values():
        v.discard(())
    return edges


def cycles(edges):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layers(edges):
    """Each module's depth: 0 imports nothing; else one more than the deepest it imports."""
    depth = {}

    def d(v, seen=()):
        if v not in depth:
            depth[v] = 1 + max((d(w, seen + (v,)) for w in edges[v] if w not in seen), default=-1)
        return depth[v]

    for v in edges:
        d(v)
    return depth


def long_functions(limit):
    """(lines, file, line, name) of every fn in src/ longer than `limit` lines."""
    out = []
    for root, _, names in os.walk(SRC):
        for n in names:
            if not n.endswith(".rs"):
                continue
            p = os.path.join(root, n)
            lines = open(p, encoding="utf-8").read().split("\n")
            for i, line in enumerate(lines):
                m = re.match(r"^(\s*)(?:pub(?:\([\w:]+\))? )?(?:const )?(?:unsafe )?fn (\w+)", line)
                if not m or line.rstrip().endswith(";"):
                    continue
                indent = m.group(1)
                for j in range(i, len(lines)):
                    if lines[j] == indent + "}":
                        if j - i + 1 > limit:
                            out.append((j - i + 1, os.path.relpath(p, os.path.join(SRC, "..")), i + 1, m.group(2)))
                        break
    return sorted(out, reverse=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dot", action="store_true", help="print the graph for graphviz")
    ap.add_argument("--max-fn-lines", type=int, help="fail on a longer function in src/")
    args = ap.parse_args()
    edges = graph()
    name = lambda m: "::".join(m)
    if args.dot:
        print("digraph chironfs {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f'  "{name(a)}" -> "{name(b)}";')
        print("}")
        return 0
    bad = cycles(edges)
    if bad:
        for comp in bad:
            print("cycle: " + " <-> ".join(sorted(name(m) for m in comp)))
            for a in sorted(comp):
                print(f"  {name(a)} imports " + ", ".join(sorted(name(b) for b in edges[a] if b in comp)))
        print(f"module-deps: {len(bad)} import cycle(s)")
        return 1
    depth = layers(edges)
    for v in sorted(edges, key=lambda v: (depth[v], v)):
        uses = ", ".join(sorted(name(b) for b in edges[v])) or "-"
        print(f"{depth[v]:2}  {name(v):24} {uses}")
    print(f"module-deps: {len(edges)} modules, no import cycle")
    if args.max_fn_lines:
        long = long_functions(args.max_fn_lines)
        for lines, path, line, fn in long:
            print(f"{path}:{line}: fn {fn} is {lines} lines (limit {args.max_fn_lines})")
        if long:
            print(f"module-deps: {len(long)} function(s) over {args.max_fn_lines} lines")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
