"""bench/harness.py's machine line: which vector instructions the host has, when recorded."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
harness = pytest.importorskip("harness")


def info(**extra):
    return {
        "cpu": "AMD EPYC", "cores": 2, "python": "3.11.7", "versions": {"torch": "2.13.0"},
        "allocator": {"MALLOC_MMAP_MAX_": None}, "commit": "abc1234", "command": "python x.py",
        "date": "2026-12-01 10:00 UTC", "loadavg_start": "0.1", "loadavg_end": "0.2", **extra,
    }  # fmt: skip


def test_the_machine_line_names_the_cpus_vector_instructions():
    recorded = harness.machine_info()
    assert recorded["isa"] == harness.cpu_isa()
    assert "bfloat16 matmul " in recorded["isa"]
    line = harness.header_lines(info(isa="AVX2, bfloat16 matmul emulated"), "2 torch threads")[2]
    assert line.startswith("- machine: AMD EPYC (AVX2, bfloat16 matmul emulated), 2 cores")


def test_a_dump_from_before_the_isa_was_recorded_renders_as_it_did():
    line = harness.header_lines(info(), "2 torch threads")[2]
    assert line.startswith("- machine: AMD EPYC, 2 cores, 2 torch threads; load average")


@pytest.mark.parametrize("native, forced", [(False, False), (False, True), (True, False)])
def test_bf16_settings_are_left_out_where_bfloat16_is_emulated(monkeypatch, capsys, native, forced):
    import torchrl_crossq

    monkeypatch.setattr(torchrl_crossq, "has_native_bf16_matmul", lambda device_type: native)
    monkeypatch.setattr(harness, "cpu_isa", lambda: "AVX2, bfloat16 matmul emulated")
    if forced:
        monkeypatch.setenv(harness.EMULATED_BF16_VAR, "1")
    else:
        monkeypatch.delenv(harness.EMULATED_BF16_VAR, raising=False)
    names = ["ours", "ours_compiled", "ours_bf16_compiled"]
    kept = harness.without_emulated_bf16(names, "cpu")
    if native or forced:
        assert kept == names and capsys.readouterr().out == ""
    else:
        assert kept == ["ours", "ours_compiled"]
        note = capsys.readouterr().out
        assert "not measured: ours_bf16_compiled" in note and "BENCH_EMULATED_BF16=1" in note


def test_a_host_without_native_bfloat16_is_named_by_its_capability():
    assert harness.emulated_bf16_host(info(isa="AVX2, bfloat16 matmul emulated")) == "AVX2"
    assert harness.emulated_bf16_host(info(isa="AVX512, bfloat16 matmul native")) is None
    assert harness.emulated_bf16_host(info()) is None  # a dump from before the ISA was recorded


def test_nothing_left_to_measure_is_an_error(monkeypatch, capsys):
    import torchrl_crossq

    monkeypatch.setattr(torchrl_crossq, "has_native_bf16_matmul", lambda device_type: False)
    monkeypatch.setattr(harness, "cpu_isa", lambda: "AVX2, bfloat16 matmul emulated")
    monkeypatch.delenv(harness.EMULATED_BF16_VAR, raising=False)
    with pytest.raises(SystemExit, match="nothing left to measure"):
        harness.without_emulated_bf16(["ours_bf16_compiled"], "cpu")
    assert harness.without_emulated_bf16(["ours", "sb3"], "cpu") == ["ours", "sb3"]
    assert capsys.readouterr().out.count("not measured") == 1  # only the call that skipped
    assert not harness.measures_bf16("cpu", "precision=bf16")
    assert "not measured: precision=bf16" in capsys.readouterr().out


def test_each_device_and_host_kind_has_its_own_section():
    avx2 = info(isa="AVX2, bfloat16 matmul emulated")
    native = info(isa="AVX512, bfloat16 matmul native")
    assert harness.section_of("bench/e2e.py", "End to end", "cpu", native) == (
        "bench/e2e.py", "End to end (`bench/e2e.py`)"
    )  # fmt: skip
    assert harness.section_of("bench/e2e.py", "End to end", "cpu", info()) == (
        "bench/e2e.py", "End to end (`bench/e2e.py`)"
    )  # fmt: skip
    assert harness.section_of("bench/update.py", "Per-update time", "cpu", avx2) == (
        "bench/update.py (AVX2 host)",
        "Per-update time (`bench/update.py`, an AVX2 host without native bfloat16)",
    )
    assert harness.section_of("bench/update.py", "Per-update time", "cuda", avx2) == (
        "bench/update.py --device cuda", "Per-update time (`bench/update.py`, cuda)"
    )  # fmt: skip
