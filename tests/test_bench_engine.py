"""bench/engine.py's own logic: which server processes it starts for which levels, the commands
that size them, the goal ratios and the results table. The servers themselves are measured by
the benchmark, not here (building llama.cpp takes many minutes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import bench_scripts  # tests/ is on sys.path under pytest
import pytest


@pytest.fixture(scope="module")
def engine() -> ModuleType:
    return bench_scripts.load("engine")


def row(tok_s: float, *, cut: int = 0, shorter: int | None = 0) -> dict[str, Any]:
    return {"requests": 8, "failed": 0, "output_tok_s": tok_s,
            "ttft_ms": {"p50": 100.0, "p99": 250.5}, "tpot_ms": {"p50": 12.0},
            "goodput_req_s": 0.5,
            "completion_tokens": {"min": 100, "mean": 127.5, "max": 128, "cut_short": cut,
                                  "shorter_than_same_prompt_at_c1": shorter}}


def test_levels_are_parsed_in_pairs_and_bad_ones_refused(engine: ModuleType) -> None:
    levels = engine.parse_levels("1,4,16,32", "8,16,32,64")
    assert [(lv.concurrency, lv.prompts) for lv in levels] == [(1, 8), (4, 16), (16, 32),
                                                               (32, 64)]
    with pytest.raises(ValueError, match="same number of values"):
        engine.parse_levels("1,4", "8")
    with pytest.raises(ValueError, match="positive"):
        engine.parse_levels("0", "8")


def test_a_batching_server_gets_16_slots_up_to_c16_and_c_slots_above(
        engine: ModuleType) -> None:
    levels = engine.parse_levels("1,4,16,32", "8,16,32,64")
    launches = engine.plan("llama_server", levels, batching=True)
    assert [(la.slots, [lv.concurrency for lv in la.levels]) for la in launches] == [
        (16, [1, 4, 16]), (32, [32])]
    # A server that serves one request at a time runs once for every level.
    serial = engine.plan("llama_cpp_python", levels, batching=False)
    assert [(la.slots, len(la.levels)) for la in serial] == [(None, 4)]


def test_commands_size_every_slot_and_use_the_same_threads(engine: ModuleType) -> None:
    gguf = Path("/models/smollm2.gguf")
    cmd, ready = engine.command(engine.Launch("llama_server", 32), 8123, 2, gguf, 512,
                                llama_server=Path("/bin/llama-server"))
    assert ready == "http://127.0.0.1:8123/health"
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert flags["-np"] == "32" and flags["-c"] == str(32 * 512)
    assert flags["-t"] == flags["-tb"] == "2" and flags["-fa"] == "on"
    assert flags["-m"] == str(gguf)

    cmd, ready = engine.command(engine.Launch("fmstack", 16), 8124, 2, gguf, 512)
    assert cmd[cmd.index("--parallel") + 1] == "16"
    assert cmd[cmd.index("--ctx-size") + 1] == "8192"
    assert cmd[cmd.index("--threads") + 1] == "2" and ready.endswith(":8124/health")
    # Without the engine fmstack serve has no --parallel, and must not be given it.
    cmd, _ = engine.command(engine.Launch("fmstack", None), 8124, 2, gguf, 512)
    assert "--parallel" not in cmd

    # fmstack_file is fmstack serve on the file's own weights; llama_server_f16 is llama-server
    # on the F16 copy that fmstack serve decodes at 16 slots.
    cmd, _ = engine.command(engine.Launch("fmstack_file", 16), 8124, 2, gguf, 512)
    assert cmd[cmd.index("--weights") + 1] == "file" and "--parallel" in cmd
    f16 = Path("/cache/smollm2.F16.gguf")
    cmd, _ = engine.command(engine.Launch("llama_server_f16", 16), 8126, 2, gguf, 512,
                            llama_server=Path("/bin/llama-server"), f16_gguf=f16)
    assert cmd[cmd.index("-m") + 1] == str(f16) and cmd[cmd.index("-np") + 1] == "16"
    with pytest.raises(ValueError, match="needs the F16 copy"):
        engine.command(engine.Launch("llama_server_f16", 16), 8126, 2, gguf, 512)

    cmd, ready = engine.command(engine.Launch("llama_cpp_python", None), 8125, 2, gguf, 512)
    assert cmd[cmd.index("--interrupt_requests") + 1] == "False"
    assert cmd[cmd.index("--n_threads") + 1] == "2" and ready.endswith("/v1/models")


def test_goal_ratios_compare_output_throughput_at_the_issues_levels(
        engine: ModuleType) -> None:
    results = {"c1": {"fmstack": row(60.0), "llama_cpp_python": row(62.5),
                      "llama_server": row(85.7)},
               "c16": {"fmstack": row(160.0), "llama_cpp_python": row(28.8),
                       "llama_server": row(159.0)}}
    out = engine.goal_ratios(results)
    assert out["fmstack_over_llama_cpp_python"] == {"c1": 0.96, "c16": 5.556}
    assert out["fmstack_over_llama_server"] == {"c1": 0.7, "c16": 1.006}
    assert out["fmstack_over_llama_server_f16"] == {"c1": None, "c16": None}
    results["c16"]["llama_server_f16"] = row(200.0)
    assert engine.goal_ratios(results)["fmstack_over_llama_server_f16"] == {"c1": None,
                                                                           "c16": 0.8}
    del results["c16"]["llama_server_f16"]
    goals = out["goals"]
    assert goals["c1 fmstack/llama_cpp_python >= 0.95"] == {"ratio": 0.96, "met": True}
    assert goals["c16 fmstack/llama_cpp_python >= 4"] == {"ratio": 5.556, "met": True}
    assert goals["c16 fmstack/llama_server >= 1"] == {"ratio": 1.006, "met": True}
    # A peer that was not run leaves its goal unknown rather than failed.
    del results["c16"]["llama_server"]
    results["c16"]["fmstack"] = row(100.0)
    goals = engine.goal_ratios(results)["goals"]
    assert goals["c16 fmstack/llama_server >= 1"] == {"ratio": None, "met": None}
    assert goals["c16 fmstack/llama_cpp_python >= 4"]["met"] is False


def test_table_has_a_row_per_server_and_level_in_order_with_truncations(
        engine: ModuleType) -> None:
    results = {"c16": {"llama_server": row(159.0), "fmstack": row(150.0, cut=1, shorter=2)},
               "c4": {"fmstack": row(120.0)}}
    lines = engine.table(results).splitlines()
    assert lines[0].startswith("| server | c |") and len(lines) == 5
    assert lines[2].startswith("| fmstack | 4 | 8 | 0 | 120 | 100 | 250.5 | 12 | 0.5 |")
    assert lines[3].startswith("| fmstack | 16 |") and lines[3].endswith("| 100/127.5/128 | 3 |")
    assert lines[4].startswith("| llama_server | 16 |")


def test_cpu_used_by_the_benchmarks_own_children_is_not_counted_as_others(
        engine: ModuleType) -> None:
    import subprocess

    before = engine.cpu_ticks()
    assert before is not None, "no /proc on this machine"
    # A child (as a server is) that burns half a second of CPU time, then stays alive so that
    # its ticks are still there to read.
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nwhile time.process_time() < 0.5: pass\n"
                              "print('done', flush=True)\ntime.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        after = engine.cpu_ticks()
    finally:
        child.kill()
        child.wait()
    hz = os.sysconf("SC_CLK_TCK")
    assert after[1] - before[1] >= 0.45 * hz  # the child's ticks are ours
    # others = machine busy minus ours, as a share of every core over the interval.
    ncpu = os.cpu_count() or 1
    assert engine.others_cpu_pct((1000, 100), (1000 + hz * ncpu, 100 + hz * ncpu // 2),
                                 2.0) == 25.0
    assert engine.others_cpu_pct(None, after, 1.0) is None
