"""The pack runs wherever ComfyUI does (Windows, macOS with MPS, Linux): no call that Python offers only on some
systems, no float64 on model tensors (MPS has none), checked on the source with ``ast``; and FateZero's attention
store works with the Unix-only file functions taken away."""

import ast
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*REPO.glob("nodes/*.py"), *REPO.glob("kernels/*.py"), REPO / "__init__.py"])

# Modules Python has on some systems only (the library reference's "Availability"): Unix-only ones, and the
# Windows-only ones.
PLATFORM_MODULES = {"fcntl", "resource", "termios", "tty", "pty", "pwd", "grp", "posix", "crypt", "spwd", "syslog",
                    "nis", "readline", "curses", "msvcrt", "winreg", "winsound", "_winapi"}

# os functions whose "Availability" excludes Windows (Python 3.10-3.13 docs), or macOS (Linux/BSD only: marked *).
UNIX_ONLY_OS = {
    "pread", "pwrite", "preadv", "pwritev", "readv", "writev", "sendfile", "lockf", "fchown", "chown", "lchown",
    "lchmod", "chroot", "fchdir", "fpathconf", "pathconf", "fstatvfs", "statvfs", "sync", "mkfifo", "mknod", "major",
    "minor", "makedev", "openpty", "forkpty", "fork", "register_at_fork", "killpg", "nice", "getpriority",
    "setpriority", "wait3", "wait4", "waitid", "getloadavg", "sysconf", "confstr", "ctermid", "ttyname", "tcgetpgrp",
    "tcsetpgrp", "uname", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getgrouplist", "initgroups",
    "setuid", "seteuid", "setgid", "setegid", "setgroups", "setreuid", "setregid", "getresuid", "getresgid",
    "setresuid", "setresgid", "getpgid", "getpgrp", "setpgid", "setpgrp", "getsid", "setsid", "posix_spawn",
    "posix_spawnp", "sched_yield", "sched_get_priority_min", "sched_get_priority_max",
    # * Linux (and some BSDs) only, so not on macOS either
    "fdatasync", "pipe2", "posix_fallocate", "posix_fadvise", "sched_getaffinity", "sched_setaffinity",
    "memfd_create", "eventfd", "splice", "copy_file_range", "pidfd_open", "getrandom", "getxattr", "setxattr",
    "listxattr", "removexattr",
}

# signal names Windows lacks (it has SIGINT, SIGTERM, SIGABRT, SIGFPE, SIGILL, SIGSEGV, SIGBREAK, signal, ...).
UNIX_ONLY_SIGNAL = {
    "SIGKILL", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGPIPE", "SIGSTOP", "SIGCONT",
    "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGWINCH", "SIGXCPU", "SIGPROF", "SIGVTALRM", "alarm", "pause", "setitimer",
    "getitimer", "ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF", "siginterrupt", "pthread_kill", "pthread_sigmask",
    "sigpending", "sigwait", "sigwaitinfo", "sigtimedwait", "pidfd_send_signal",
}
PLATFORM_FUNCTIONS = {"os": UNIX_ONLY_OS, "signal": UNIX_ONLY_SIGNAL}

# float64 where the tensor is provably a small CPU tensor no model sees, with the reason. A listed use that is gone
# fails the test, so the list stays exact.
FLOAT64_ALLOWED = {
    ("kernels/tokenflow.py", "keyframe_schedule"):
        "the keyframe draws: a CPU generator's [steps, chunks] uniforms, as the official code draws them",
    ("kernels/tokenflow.py", "blend_weights"): "per-frame blend weights computed from frame indices on the CPU",
}


def platform_limited_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, what)`` for each import of a platform module and each use of a platform-limited os/signal name,
    through ``import os``, ``import os as x`` or ``from os import name``."""
    aliases, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in PLATFORM_MODULES:
                    found.append((node.lineno, f"import {alias.name}"))
                if alias.name in PLATFORM_FUNCTIONS:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in PLATFORM_MODULES:
                found.append((node.lineno, f"from {node.module} import"))
            for alias in node.names:
                if alias.name in PLATFORM_FUNCTIONS.get(node.module, ()):
                    found.append((node.lineno, f"{node.module}.{alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if node.attr in PLATFORM_FUNCTIONS[module]:
                found.append((node.lineno, f"{module}.{node.attr}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases
              and isinstance(node.args[1], ast.Constant)
              and node.args[1].value in PLATFORM_FUNCTIONS[aliases[node.args[0].id]]):
            found.append((node.lineno, f"{aliases[node.args[0].id]}.{node.args[1].value}"))
    return sorted(found)


def float64_uses(tree: ast.Module) -> list[tuple[int, str, str]]:
    """``(line, enclosing function, what)`` for each ``.double()`` call and each ``float64``/``double`` dtype
    (``torch.float64``, ``np.float64``, ``dtype="float64"``)."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and child.func.attr == "double" \
                    and not child.args:
                found.append((child.lineno, function, ".double()"))
            elif isinstance(child, ast.Attribute) and child.attr in ("float64", "double") \
                    and isinstance(child.value, ast.Name) and child.value.id in ("torch", "np", "numpy"):
                found.append((child.lineno, function, f"{child.value.id}.{child.attr}"))
            elif isinstance(child, ast.Constant) and child.value in ("float64", "double", "f8"):
                found.append((child.lineno, function, repr(child.value)))
            visit(child, name)

    visit(tree, "<module>")
    return found


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_the_checks_see_what_they_look_for():
    """Each pattern the checks are for is found (so a passing run means something), and nothing portable is."""
    bad = parse_text("import os, fcntl\nimport signal as s\nfrom os import pwrite\nimport resource.x\n"
                     "os.preadv(1, [], 0)\ns.SIGKILL\ngetattr(os, 'fork')\n")
    assert [what for _, what in platform_limited_uses(bad)] == [
        "import fcntl", "os.pwrite", "import resource.x", "os.preadv", "signal.SIGKILL", "os.fork"]
    good = parse_text("import os, signal\nos.replace('a', 'b')\nos.ftruncate(1, 0)\nos.fsync(1)\n"
                      "signal.SIGINT\nsignal.SIGTERM\nos.path.join('a')\nos.getpid()\n")
    assert platform_limited_uses(good) == []
    doubles = parse_text("def f(x):\n    return x.double(), x.to(torch.float64), x.to(dtype=torch.double)\n"
                         "y = np.zeros(2, dtype='float64')\n")
    assert [(f, what) for _, f, what in float64_uses(doubles)] == [
        ("f", ".double()"), ("f", "torch.float64"), ("f", "torch.double"), ("<module>", "'float64'")]
    assert float64_uses(parse_text("x.float().half().to(torch.float32)\n")) == []


def parse_text(text: str) -> ast.Module:
    return ast.parse(text)


def test_no_platform_limited_call_in_the_pack():
    """Windows lacks os.pwrite/os.preadv/os.fork/..., fcntl, resource and most signals; macOS lacks the Linux-only
    ones (os.preadv before macOS 11, os.fdatasync, os.sched_getaffinity, ...)."""
    offending = [f"{path.relative_to(REPO)}:{line}: {what}" for path in SOURCES
                 for line, what in platform_limited_uses(parse(path))]
    assert not offending, "not available on every system ComfyUI runs on:\n" + "\n".join(offending)


def test_no_float64_on_model_tensors():
    """MPS has no float64: only the listed CPU-only uses are allowed, and each of them still exists."""
    seen, offending = set(), []
    for path in SOURCES:
        relative = path.relative_to(REPO).as_posix()
        for line, function, what in float64_uses(parse(path)):
            if (relative, function) in FLOAT64_ALLOWED:
                seen.add((relative, function))
            else:
                offending.append(f"{relative}:{line} in {function}: {what}")
    assert not offending, "float64 outside the CPU-only exceptions (MPS has no float64):\n" + "\n".join(offending)
    assert seen == set(FLOAT64_ALLOWED), f"stale exceptions: {sorted(set(FLOAT64_ALLOWED) - seen)}"


def test_attention_store_works_without_the_unix_only_file_functions(monkeypatch, tmp_path):
    """FateZero's store with every Unix-only os function removed, as on Windows: it writes and reads back."""
    from video_edit.kernels.fatezero import AttentionStore, BlockSpec

    for name in UNIX_ONLY_OS:
        monkeypatch.delattr(os, name, raising=False)
    block = BlockSpec(("input", 1, 0), 2, 2, 8, 2)
    store = AttentionStore([block], torch.tensor([0.0, 1.0, 2.0, 3.0]), frames=5, context=3, directory=str(tmp_path))
    q, cross = torch.randn(5, 4, 8), torch.rand(5, 2, 4, 3)
    for level in (1, 2, 3):
        store.put_self(block.key, level, q * level, -q * level)
        store.put_cross(block.key, level, cross / level)
    store.put_self(block.key, 2, torch.zeros(3, 4, 8), torch.ones(3, 4, 8), [0, 2, 3])  # non-consecutive frames
    store.require_complete()
    for level in (1, 3):
        torch.testing.assert_close(store.read("queries", block.key, level), (q * level).half())
        torch.testing.assert_close(store.read("cross", block.key, level), (cross / level).half())
    torch.testing.assert_close(store.read("queries", block.key, 2, [1, 4]), (q[[1, 4]] * 2).half())
    assert store.read("queries", block.key, 2, [0, 2, 3]).abs().max() == 0
    assert store.read("keys", block.key, 2, slice(2, 4)).eq(1).all()
    torch.testing.assert_close(store.read("keys", block.key, 2, [4]), (-q[4:] * 2).half())
    store._file.truncate(store.nbytes - 1)  # the file lost its last byte: level 3's last cross row
    with pytest.raises(RuntimeError, match="short read"):
        store.read("cross", block.key, 3)
