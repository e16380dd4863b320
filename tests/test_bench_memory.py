"""The benchmarks' real pools at small sizes (tests/bench/memory.py, scale.py): every --real-mib
of 1 or more is measured, and a count below 1 is a usage error (memory's took no sample under 4
MiB and crashed on max() of none; an odd count wrote past the VM's end in both)."""

from __future__ import annotations

import json

import pytest

from tests.bench import memory, scale


@pytest.mark.parametrize("mib", [1, 2, 3])
def test_the_memory_bench_measures_a_real_pool_of_a_few_mib(tmp_path, capsys, mib):
    memory.main(["--data", str(tmp_path), "--blocks", "2000", "--real-mib", str(mib)])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    real = figures["real_pool"]
    assert real["blocks"] == mib * 256
    assert real["growing_peak"] > 0 and real["after_open"] > 0


@pytest.mark.parametrize("option", ["--real-mib", "--blocks"])
def test_a_count_below_1_is_a_usage_error_before_anything_runs(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as stop:
        memory.main(["--data", str(tmp_path / "data"), option, "0"])
    assert stop.value.code == 2
    assert f"argument {option}: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_the_scale_bench_measures_a_real_pool_of_an_odd_count_of_mib(capsys):
    # Its --real-mib 3 wrote 2 MiB at 2 MiB into a VM of 3 (OutOfRangeError); 0 made a VM of 0.
    assert scale.measured_costs(3)["core_bytes_per_block"] > 0
    with pytest.raises(SystemExit) as stop:
        scale.main(["--real-mib", "0"])
    assert stop.value.code == 2
    assert "argument --real-mib: must be at least 1" in capsys.readouterr().err
