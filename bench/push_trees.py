"""Release trees for bench/push_bench.py: a base tree and a chain of revisions, each 1% changed.

Deterministic from a seed: lots of small source and template files, some medium
assets, a few large bundles, text and binary. Each revision of the chain copies
the one before (mtimes kept), rewrites or patches files worth `fraction` of its
bytes with a newer mtime than any before (rsync's quick check compares size and
mtime), adds three files and removes three: what a day of commits does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import random
import subprocess

MIB = 1024 * 1024
T0 = 1_700_000_000  # mtime of every file of the base tree (fixed: the trees are reproducible)
REVISION_MTIME_STEP = 3600  # revision g's changed files get T0 + g x this: newer than any before
FILES_TOUCHED_PER_REVISION = 40  # the changed bytes are spread over about this many files
ADDED_PER_REVISION = REMOVED_PER_REVISION = 3

# Sizes, text/binary and names of a realistic release.
TEXT_EXTS = (".py", ".html", ".js", ".css", ".json", ".txt", ".po", ".sql", ".yaml", ".md")
BIN_EXTS = (".so", ".png", ".woff2", ".bin", ".gz", ".jpg", ".mo")
TOP_DIRS = ("bin", "lib", "lib/python", "share", "static/js", "static/css", "static/img",
            "templates", "locale", "conf", "docs", "vendor")  # fmt: skip
WORDS = ("the", "release", "deploy", "host", "push", "flip", "slot", "rollback", "return", "value", "self",
         "def", "class", "import", "from", "for", "in", "if", "else", "while", "try", "except", "with", "as",
         "lambda", "none", "true", "false", "config", "server", "request", "response", "user", "session",
         "cache", "query", "index", "table", "row", "column", "id", "name", "status", "error", "warning",
         "info", "debug", "div", "span", "class", "href", "src")  # fmt: skip


@dataclasses.dataclass
class Tree:
    root: pathlib.Path
    sizes: dict[str, int]  # relative path -> size
    digests: dict[str, str] = dataclasses.field(default_factory=dict)  # files changed since the base

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def _text_corpus(rng: random.Random, size: int) -> bytes:
    lines, n = [], 0
    while n < size:
        indent = " " * (4 * rng.randrange(4))
        line = indent + " ".join(rng.choices(WORDS, k=rng.randrange(3, 14))) + "\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()


def _content(rng: random.Random, corpus: bytes, rel: str, size: int) -> bytes:
    if rel.endswith(TEXT_EXTS):
        if size <= len(corpus):
            start = rng.randrange(len(corpus) - size + 1)
            return corpus[start : start + size]
        reps = size // len(corpus) + 1
        return (corpus * reps)[:size]
    return rng.randbytes(size)


def make_tree(root: pathlib.Path, total_bytes: int, nfiles: int, seed: int) -> Tree:
    rng = random.Random(seed)
    corpus = _text_corpus(rng, 2 * MIB)
    dirs = []
    for top in TOP_DIRS:
        for i in range(rng.randrange(2, 9)):
            d = f"{top}/mod{i:02d}"
            dirs.append(d)
            if rng.random() < 0.5:
                dirs.extend(f"{d}/sub{j}" for j in range(rng.randrange(1, 5)))
    # Log-normal sizes (median ~4 KiB), plus three large bundles.
    raw = [rng.lognormvariate(8.3, 1.6) for _ in range(nfiles - 3)]
    small_total = total_bytes * 0.88
    scale = small_total / sum(raw)
    sizes_list = [max(1, int(r * scale)) for r in raw]
    sizes_list += [int(total_bytes * 0.06), int(total_bytes * 0.04)]
    sizes_list.append(total_bytes - sum(sizes_list))
    sizes: dict[str, int] = {}
    for i, size in enumerate(sizes_list):
        if i >= len(sizes_list) - 3:
            rel = f"vendor/bundle{i - len(sizes_list) + 3}.bin"
        else:
            ext = rng.choice(TEXT_EXTS) if rng.random() < 0.7 else rng.choice(BIN_EXTS)
            rel = f"{rng.choice(dirs)}/f{i:05d}{ext}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_content(rng, corpus, rel, size))
        os.chmod(path, 0o755 if rel.startswith("bin/") else 0o644)
        os.utime(path, (T0, T0))
        sizes[rel] = size
    assert sum(sizes.values()) == total_bytes
    return Tree(root, sizes)


def make_changed_tree(prev: Tree, root: pathlib.Path, fraction: float, seed: int,
                      generation: int = 1) -> tuple[Tree, dict]:  # fmt: skip
    """Copy `prev` (mtimes kept) and change `fraction` of its bytes, spread over files.

    `generation` (1, 2, ...) numbers the revisions after the base: it sets the
    changed files' mtime and the added files' names.
    """
    root.mkdir(parents=True)
    subprocess.run(["cp", "-a", "--", f"{prev.root}/.", str(root)], check=True)
    rng = random.Random(seed + generation)
    mtime = T0 + generation * REVISION_MTIME_STEP
    corpus = _text_corpus(rng, 256 * 1024)
    budget = int(prev.total_bytes * fraction)
    per_file = max(4096, budget // FILES_TOUCHED_PER_REVISION)
    sizes, digests = dict(prev.sizes), dict(prev.digests)
    changed_files = rewritten = changed = 0
    for k in range(ADDED_PER_REVISION):
        rel = f"static/js/mod00/added{generation}-{k}.js"
        data = _content(rng, corpus, rel, 4096)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        os.utime(root / rel, (mtime, mtime))
        sizes[rel] = len(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
        changed += len(data)
    candidates = sorted(r for r in prev.sizes if not r.startswith("vendor/bundle"))
    rng.shuffle(candidates)
    for rel in candidates[:REMOVED_PER_REVISION]:
        (root / rel).unlink()
        del sizes[rel]
        digests.pop(rel, None)
    for rel in candidates[REMOVED_PER_REVISION:]:
        if changed >= budget:
            break
        size = sizes[rel]
        path = root / rel
        n = min(size, per_file, budget - changed)
        data = bytearray(path.read_bytes())
        if n >= size:
            data[:] = _content(rng, corpus, rel, size)  # small file: rewritten
            rewritten += 1
        else:
            off = rng.randrange(size - n + 1)
            data[off : off + n] = _content(rng, corpus, rel, n)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        digests[rel] = hashlib.sha256(data).hexdigest()
        changed += n
        changed_files += 1
    info = {"changed_bytes": changed, "changed_files": changed_files, "rewritten_files": rewritten,
            "added_files": ADDED_PER_REVISION, "removed_files": REMOVED_PER_REVISION}  # fmt: skip
    return Tree(root, sizes, digests), info


def make_chain(base: Tree, workdir: pathlib.Path, revisions: int, fraction: float,
               seed: int) -> tuple[list[Tree], dict]:  # fmt: skip
    """`revisions` trees after `base`, each `fraction` changed from the one before;
    returns them and the change of the last one (the one the benchmark times)."""
    chain, prev, info = [], base, {}
    for generation in range(1, revisions + 1):
        prev, info = make_changed_tree(prev, workdir / f"tree{generation + 1}", fraction, seed, generation)
        chain.append(prev)
    return chain, info


def verify_copy(dest: pathlib.Path, tree: Tree) -> str | None:
    """None if `dest` holds exactly the files of `tree` (sizes, changed contents)."""
    found: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(dest):
        for name in files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, dest)
            if rel == ".release":  # our manifest
                continue
            found[rel] = os.lstat(p).st_size
    if found != tree.sizes:
        missing = set(tree.sizes) - set(found)
        extra = set(found) - set(tree.sizes)
        wrong = [r for r in set(found) & set(tree.sizes) if found[r] != tree.sizes[r]]
        return f"{dest}: {len(missing)} missing, {len(extra)} extra, {len(wrong)} wrong size"
    for rel, digest in tree.digests.items():
        if hashlib.sha256((dest / rel).read_bytes()).hexdigest() != digest:
            return f"{dest}: {rel} has the wrong content"
    return None
