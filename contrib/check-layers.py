#!/usr/bin/env python3
"""The module graph of src/ and its rules (DESIGN.md, "Architecture").

Reads every `use crate::…`, `crate::x::…` and `super::…` path in src/ (test code left
out: files named tests.rs / *_tests.rs, src/testing.rs, and `#[cfg(test)] mod … { … }`
blocks), resolves each to the module it names, and fails when

  * a module imports a module of a higher layer (the LAYERS table below), or an engine
    imports another engine, unless the edge is in ALLOWED (documented, temporary);
  * the graph has a cycle: between top-level modules, or between the sibling
    submodules of one directory module (edges to a module's own ancestors are the
    normal `mod.rs` facade and are left out). The cycle is printed;
  * the object store escapes `repo/` (the GATEWAY rule below): a module other than
    `repo/`, the store layer and the wiring that builds a `Repo` names `ObjectStore`,
    calls `.store()` or `.retrier()` (the `Repo`'s, private), opens a store
    (`store::s3::open`, `MemoryStore`, `PinnedStore`), or runs a bucket request that is
    not a chunk write (`.head(`, `.list_parts(`, … on something named `store`).

  python3 contrib/check-layers.py          # check; exit 1 on a violation
  python3 contrib/check-layers.py --graph  # also print the top-level graph
  python3 contrib/check-layers.py --src DIR  # another tree
  python3 contrib/check-layers.py --self-test  # plants violations in a scratch tree
"""

import os
import re
import sys

# Top-level modules by layer, highest first. A module may import any module of a lower
# layer, and modules of its own layer only where the layer says so (peers=True); cycles
# are refused everywhere. Keep DESIGN.md's diagram ("Architecture") in step.
LAYERS = [
    ("binary", ["main"], False),
    # One invocation: flags -> config -> logging -> command; error -> exit code.
    ("app", ["app"], False),
    # One thin file per command: flags over config, a session, the engine, a report.
    ("commands", ["cmd"], False),
    # The engines, one per kind of work. An engine does not call another engine.
    ("engines", ["backup", "restore", "check"], False),
    # What the engines work through: the bucket seen as backups (repo), the upload
    # pipeline and what watches it, the send-stream reader, the restored-tree comparison.
    ("services", ["repo", "pipeline", "watchdog", "progress", "metrics", "harness",
                  "sendstream", "treecmp", "notify"], True),
    # The object store, the retry policy every request runs under, the shared outage wait.
    ("store", ["store", "retry", "outage"], True),
    # Leaves: local pieces and plain types, no request to the bucket; they import only
    # one another. `cli` is here because the commands take its parsed flags as input; it
    # imports nothing.
    ("leaves", ["age", "atomic", "btrfs", "chunker", "cli", "config", "encryption", "exit",
                "failpoint", "journal", "kind", "lastrun", "lock", "logging", "manifest",
                "parts", "planner", "ratelimit", "regular", "sha256x2", "signals", "size", "snapshots", "state",
                "term", "ts", "worker", "xattr"], True),
]

# Edges that break the rules today, each with why and what removes it. Temporary: the
# check fails when a listed edge no longer exists, so the list cannot go stale.
ALLOWED = {
    # None today: every edge keeps the rules. An entry names an edge, why it breaks
    # them and what removes it.
}

# The gateway to the bucket (DESIGN.md, "Architecture"): only these top-level modules may
# hold the object store itself. `repo` owns it; `store`, `retry` and `outage` are the
# store layer; `app` and `cmd` are the wiring that opens the bucket and builds a `Repo`
# (today they only call `Repo::open`). Everything else goes through `Repo`'s methods or
# the narrow types it returns (`repo::writer::ChunkWriter` for the pipeline's writes).
GATEWAY = {"repo", "store", "retry", "outage", "app", "cmd"}
# ObjectStore requests that are not the pipeline's chunk writes: outside GATEWAY none of
# them may be called on something named `store` (a raw store in disguise).
STORE_REQUESTS = ["list_parts", "list_multipart_uploads", "list_objects", "delete_object",
                  "head", "head_bucket", "probe", "get", "restore_object", "throttles",
                  "object_lock_enabled", "put_retention", "list_versions", "head_version",
                  "get_version", "restore_version", "delete_version"]
GATEWAY_RULES = [
    (re.compile(r"\bObjectStore\b"), "names `ObjectStore`"),
    (re.compile(r"\.\s*(store|retrier)\s*\(\s*\)"),
     "calls `.store()`/`.retrier()` (the repository's store and retrier are private)"),
    (re.compile(r"\bstore\s*::\s*(s3\s*::\s*open|memory|pinned)\b|\b(MemoryStore|PinnedStore)\b"),
     "opens an object store"),
    (re.compile(r"\bstore\s*\.\s*(" + "|".join(STORE_REQUESTS) + r")\s*\("),
     "sends a bucket request on a store"),
]

TEST_FILE = re.compile(r"(^|/)(tests|[a-z0-9_]+_tests)\.rs$")


def module_of(rel):
    """src-relative path -> module path list (src/store/sigv4.rs -> [store, sigv4])."""
    parts = rel[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts == ["lib"]:
        return []
    return parts


def strip_code(text):
    """Blanks comments, string and char literals, and `#[cfg(test)]` items' bodies."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            start = i
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append("\n" * text.count("\n", start, i))
            continue
        m = re.match(r'(b?r)(#*)"', text[i:i + 12])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(2)
            j = text.find(end, i + len(m.group(0)))
            start, i = i, n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", start, i))
            continue
        if c == '"':
            start, i = i, i + 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""' + "\n" * text.count("\n", start, i))
            continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12])
            if m:
                i += len(m.group(0))
                out.append("' '")
                continue
        out.append(c)
        i += 1
    code = "".join(out)
    # Drop #[cfg(test)] items (a `mod tests { … }` block, a test-only fn or use).
    res = []
    pos = 0
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        if m.start() < pos:
            continue
        res.append(code[pos:m.start()])
        j = m.end()
        # The item ends at its first `;` at depth 0 or its outermost closing brace.
        depth = 0
        while j < len(code):
            ch = code[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif ch == ";" and depth == 0:
                j += 1
                break
            j += 1
        res.append("\n" * code.count("\n", m.start(), j))
        pos = j
    res.append(code[pos:])
    return "".join(res)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (aliases dropped)."""
    tree = re.sub(r"\s+", "", tree)
    depth = 0
    for k, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix = tree[:k]
                inner = tree[k + 1:tree.rfind("}")]
                items, cur, d = [], "", 0
                for c2 in inner:
                    if c2 == "," and d == 0:
                        items.append(cur)
                        cur = ""
                        continue
                    d += c2 == "{"
                    d -= c2 == "}"
                    cur += c2
                items.append(cur)
                result = []
                for it in items:
                    if it:
                        result += expand_use(prefix + it)
                return result
            depth += 1
    return [tree.split("as")[0] if "::" in tree else tree]


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    if "--src" in sys.argv:
        root = sys.argv[sys.argv.index("--src") + 1]
    root = os.path.normpath(root)
    if not os.path.isfile(os.path.join(root, "lib.rs")):
        print(f"check-layers: {root}/lib.rs not found: give the crate's src/ with --src DIR",
              file=sys.stderr)
        return 2
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".rs"):
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                files[rel] = module_of(rel)
    modules = {tuple(m) for rel, m in files.items()
               if not (TEST_FILE.search(rel) or rel == "testing.rs")}

    def resolve(path):
        """Longest prefix of path that is a module (an item resolves to its module)."""
        for k in range(len(path), 0, -1):
            if tuple(path[:k]) in modules:
                return tuple(path[:k])
        return None

    problems_gateway = []
    edges = {}  # (from module tuple, to module tuple) -> first "file:line"
    for rel, mod in sorted(files.items()):
        if TEST_FILE.search(rel) or rel == "testing.rs":
            continue
        with open(os.path.join(root, rel), encoding="utf-8") as fh:
            code = strip_code(fh.read())
        # Inline `mod name { … }` blocks: `super` and `self` inside one are relative to it.
        inline = []
        for m in re.finditer(r"\bmod\s+([A-Za-z0-9_]+)\s*\{", code):
            depth, j = 0, m.end() - 1
            while j < len(code):
                depth += code[j] == "{"
                depth -= code[j] == "}"
                if depth == 0:
                    break
                j += 1
            inline.append((m.start(), j, m.group(1)))
        paths = []
        for m in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]*);", code):
            line = code.count("\n", 0, m.start()) + 1
            paths += [(p, line, m.start()) for p in expand_use(m.group(1))]
        for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:crate|super)(?:::[A-Za-z0-9_]+)+)", code):
            line = code.count("\n", 0, m.start()) + 1
            paths.append((m.group(1), line, m.start()))
        for p, line, at in paths:
            segs = p.split("::")
            here = list(mod) + [n for (s0, e0, n) in inline if s0 < at < e0]
            if segs[0] == "crate":
                target = segs[1:]
            elif segs[0] == "self":
                target = here + segs[1:]
            else:
                base = here
                while segs and segs[0] == "super":
                    base = base[:-1]
                    segs = segs[1:]
                # `super` from a file module is its parent directory module.
                target = base + segs
            t = resolve(target)
            if t is None or t == tuple(mod):
                continue
            edges.setdefault((tuple(mod), t), f"src/{rel}:{line}")

    # The gateway: the store does not leave repo/ (GATEWAY, GATEWAY_RULES).
    for rel, mod in sorted(files.items()):
        if TEST_FILE.search(rel) or rel == "testing.rs" or not mod or mod[0] in GATEWAY:
            continue
        with open(os.path.join(root, rel), encoding="utf-8") as fh:
            code = strip_code(fh.read())
        for pattern, what in GATEWAY_RULES:
            for m in pattern.finditer(code):
                line = code.count("\n", 0, m.start()) + 1
                problems_gateway.append(
                    f"src/{rel}:{line}: `{mod[0]}` {what}: only repo/ holds the store; "
                    f"add a method to Repo (or a narrow type repo/ returns) instead")

    rank, peers = {}, {}
    for idx, (name, mods, p) in enumerate(LAYERS):
        for m in mods:
            rank[m] = len(LAYERS) - idx
            peers[m] = p
    problems = list(problems_gateway)
    top = {}
    for (a, b), where in edges.items():
        if not a or not b or a[0] == b[0]:
            continue
        top.setdefault((a[0], b[0]), where)
    for name in sorted({m[0] for m in modules if m}):
        if name not in rank:
            problems.append(f"module `{name}` is in no layer: add it to LAYERS in "
                            f"contrib/check-layers.py (and DESIGN.md's diagram)")
    for (a, b), where in sorted(top.items()):
        if a not in rank or b not in rank or (a, b) in ALLOWED:
            continue
        if rank[a] < rank[b]:
            problems.append(f"{where}: `{a}` imports `{b}`, a higher layer")
        elif rank[a] == rank[b] and not peers[a]:
            problems.append(f"{where}: `{a}` imports `{b}`, another module of its layer")

    def cycles(nodes, adj):
        """Strongly connected components of size > 1, each as one cycle through it."""
        index, low, stack, on, out = {}, {}, [], set(), []
        counter = [0]

        def strong(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in sorted(adj.get(v, ())):
                if w not in index:
                    strong(w)
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
                    out.append(sorted(comp))

        sys.setrecursionlimit(10000)
        for v in sorted(nodes):
            if v not in index:
                strong(v)
        found = []
        for comp in out:
            # One concrete cycle: breadth-first from the first node back to itself.
            start = comp[0]
            prev, queue, seen = {}, [start], {start}
            cyc = None
            while queue and cyc is None:
                v = queue.pop(0)
                for w in sorted(adj.get(v, ())):
                    if w not in comp:
                        continue
                    if w == start:
                        path = [v]
                        while path[-1] != start:
                            path.append(prev[path[-1]])
                        cyc = list(reversed(path)) + [start]
                        break
                    if w not in seen:
                        seen.add(w)
                        prev[w] = v
                        queue.append(w)
            found.append((comp, cyc))
        return found

    def show(m):
        return "::".join(m) if isinstance(m, tuple) else m

    # Top level.
    adj = {}
    for (a, b) in top:
        if (a, b) not in ALLOWED:
            adj.setdefault(a, set()).add(b)
    for comp, cyc in cycles({m[0] for m in modules if m}, adj):
        hops = ", ".join(f"{x} -> {y} ({top[(x, y)]})" for x, y in zip(cyc, cyc[1:]))
        problems.append(f"cycle between top-level modules {' -> '.join(cyc)}: {hops}")
    # Within each directory module: siblings, edges to ancestors left out.
    parents = {m[:-1] for m in modules if len(m) > 1}
    for parent in sorted(parents):
        kids = {m for m in modules if len(m) > len(parent) and m[:len(parent)] == parent}
        adj, where = {}, {}
        for (a, b), w in edges.items():
            if a in kids and b in kids and b != a[:len(b)] and a != b[:len(a)]:
                # Collapse to the child of `parent` each belongs to.
                ca, cb = a[:len(parent) + 1], b[:len(parent) + 1]
                if ca != cb:
                    adj.setdefault(ca, set()).add(cb)
                    where.setdefault((ca, cb), w)
        for comp, cyc in cycles({k[:len(parent) + 1] for k in kids}, adj):
            hops = ", ".join(f"{show(x)} -> {show(y)} ({where[(x, y)]})"
                             for x, y in zip(cyc, cyc[1:]))
            problems.append(f"cycle inside `{show(parent)}`: "
                            f"{' -> '.join(show(c) for c in cyc)}: {hops}")

    if "--graph" in sys.argv:
        for name, mods, _ in LAYERS:
            for a in mods:
                outs = sorted(b for (x, b) in top if x == a)
                if outs or a in {m[0] for m in modules if m}:
                    print(f"[{name}] {a} -> {', '.join(outs)}")
    for (a, b), why in sorted(ALLOWED.items()):
        # (Another tree, given with --src, is not the one the list is about.)
        if (a, b) not in top and "--src" not in sys.argv:
            problems.append(f"ALLOWED lists {a} -> {b}, which no longer exists: remove it")
    if problems:
        for p in problems:
            print(f"check-layers: {p}", file=sys.stderr)
        print(f"check-layers: {len(problems)} problem(s); the rules are in "
              f"contrib/check-layers.py and DESIGN.md, \"Architecture\"", file=sys.stderr)
        return 1
    print(f"check-layers: {len(modules)} modules, {len(edges)} edges, no upward import, "
          f"no cycle ({len(ALLOWED)} documented exception(s)), the store only in "
          f"{', '.join(sorted(GATEWAY))}")
    return 0


def self_test():
    """Plants each kind of gateway violation in a scratch tree and checks that each is
    reported (and that the clean tree passes): the check can fail."""
    import subprocess
    import tempfile
    clean = {
        "lib.rs": "pub mod repo;\npub mod store;\npub mod backup;\n",
        "store/mod.rs": "pub trait ObjectStore {}\n",
        "repo/mod.rs": "use crate::store::ObjectStore;\n"
                       "pub struct Repo { s: Box<dyn ObjectStore> }\n"
                       "impl Repo { fn store(&self) {} }\n",
        "backup.rs": "use crate::repo::Repo;\npub fn go(r: &Repo) { r.publish(); }\n",
    }
    plants = [
        ("pub fn a(s: &dyn crate::store::ObjectStore) {}\n", "names `ObjectStore`"),
        ("pub fn b(r: &Repo) { r.store(); }\n", "calls `.store()`"),
        ("pub fn c(r: &Repo) { let x = r . retrier ( ); }\n", "calls `.store()`/`.retrier()`"),
        ("pub fn d() { crate::store::s3::open(); }\n", "opens an object store"),
        ("pub fn e(store: &W) { store.list_parts(k, u); }\n", "sends a bucket request"),
        ("// store.head(k) and ObjectStore in a comment are fine\n", None),
        ('pub fn f() { let s = "ObjectStore .store()"; }\n', None),
    ]
    me = os.path.abspath(__file__)

    def run(files):
        with tempfile.TemporaryDirectory() as d:
            for rel, text in files.items():
                os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
                with open(os.path.join(d, rel), "w", encoding="utf-8") as fh:
                    fh.write(text)
            r = subprocess.run([sys.executable, me, "--src", d], capture_output=True, text=True)
            return r.returncode, r.stderr

    failed = []
    rc, err = run(clean)
    if rc != 0:
        failed.append(f"the clean tree fails: {err}")
    for plant, want in plants:
        files = dict(clean, **{"backup.rs": clean["backup.rs"] + plant})
        rc, err = run(files)
        if want is None and rc != 0:
            failed.append(f"a harmless line is reported: {plant.strip()}: {err}")
        if want is not None and (rc == 0 or want not in err):
            failed.append(f"not reported ({want}): {plant.strip()}: rc={rc} {err}")
    for f in failed:
        print(f"check-layers --self-test: {f}", file=sys.stderr)
    if failed:
        return 1
    print(f"check-layers --self-test: {len(plants)} plants, each reported or let pass as it should")
    return 0


if __name__ == "__main__":
    sys.exit(self_test() if "--self-test" in sys.argv else main())
