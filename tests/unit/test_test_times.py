"""scripts/test_times.py: the table `make test` prints of where its time went."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test_times.py"

MOLECULE_LIKE = (
    "echo 'INFO     [default > create] Executing'; sleep 1.2; echo 'INFO     [default > create] Executed: Successful';"
    "echo 'INFO     [default > verify] Executing'; echo 'INFO     [default > verify] Executed: Successful';"
    "printf 'INFO \\033[32mdefault\\033[0m ➜ \\033[33mconverge\\033[0m: Executing\\n';"
    "printf 'INFO default ➜ converge: Executed: Successful\\n'"
)


def _times(args: list[str], record: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIBAKE_TEST_TIMES": str(record)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False)


def test_steps_and_molecule_sub_steps_are_timed_and_tabled(tmp_path: Path) -> None:
    record = tmp_path / "times.tsv"
    res = _times(["run", "molecule-default", "--", "sh", "-c", MOLECULE_LIKE], record)
    assert res.returncode == 0, res.stderr
    assert "[default > verify] Executed" in res.stdout  # the command's output passes through
    rows = dict(line.split("\t") for line in record.read_text().splitlines())
    assert float(rows["molecule-default/create"]) >= 1.0
    assert float(rows["molecule-default"]) >= float(rows["molecule-default/create"])
    assert "molecule-default/verify" in rows
    assert "molecule-default/converge" in rows  # Molecule 25's "default ➜ converge: Executing", coloured
    table = _times(["report"], record).stdout
    assert "Where make test's time went" in table
    assert "molecule-default" in table and "    create" in table and "total" in table


def test_a_failing_step_passes_its_status_on_and_prints_the_table_so_far(tmp_path: Path) -> None:
    record = tmp_path / "times.tsv"
    assert _times(["run", "image", "--", "true"], record).returncode == 0
    res = _times(["run", "pytest", "--", "sh", "-c", "exit 3"], record)
    assert res.returncode == 3
    assert "image" in res.stdout and "pytest" in res.stdout and "total" in res.stdout
    assert _times(["reset"], record).returncode == 0
    assert not record.exists()


def test_begin_and_end_time_a_step_make_runs_itself(tmp_path: Path) -> None:
    # `make images` is a sub-make (make -n runs it), so its time is taken from begin to end, not by wrapping it.
    record = tmp_path / "times.tsv"
    assert _times(["begin", "images"], record).returncode == 0
    subprocess.run(["sleep", "1.1"], check=True)
    assert _times(["end", "images"], record).returncode == 0
    step, seconds = record.read_text().split("\t")
    assert step == "images" and 1.0 <= float(seconds) < 60
    assert list(tmp_path.iterdir()) == [record]  # the begin mark is gone
    assert _times(["end", "images"], record).returncode != 0  # an end with no begin is an error, not a 0-s step


def test_a_background_step_runs_beside_the_others_and_passes_its_status_on(tmp_path: Path) -> None:
    record, log = tmp_path / "times.tsv", tmp_path / "image.log"
    started = _times(["start", "image", str(log), "--", "sh", "-c", "sleep 1; echo built; exit 3"], record)
    assert started.returncode == 0 and "image: started in the background" in started.stdout
    assert _times(["run", "pytest", "--", "sh", "-c", "echo tested"], record).returncode == 0  # runs meanwhile
    waited = _times(["wait", "image"], record)
    assert waited.returncode == 3
    assert "image failed (exit 3)" in waited.stderr and "built" in waited.stderr  # the log's end
    rows = dict(line.split("\t") for line in record.read_text().splitlines())
    assert float(rows["image (beside the steps above)"]) >= 1.0
    table = _times(["report"], record).stdout
    total = next(line for line in table.splitlines() if line.strip().startswith("total"))
    # The image's second is left out; what the foreground spent waiting for it is counted.
    assert total.split()[-2:] == [str(round(float(rows["pytest"]) + float(rows["waiting for image"]))), "s"], table
    again = _times(["wait", "image"], record)
    assert again.returncode == 2 and "never started" in again.stderr
    ok = _times(["start", "kernel", str(log), "--", "true"], record)
    assert ok.returncode == 0 and _times(["wait", "kernel"], record).returncode == 0


def test_a_run_inside_a_background_step_is_tabled_beside_the_others(tmp_path: Path) -> None:
    # make test's background job: the arm64 build, then Molecule, each timed by `run`, beside pytest's first part.
    record, log = tmp_path / "times.tsv", tmp_path / "arm64.log"
    inner = [sys.executable, str(SCRIPT), "run", "molecule-default", "--", "sh", "-c", MOLECULE_LIKE]
    assert _times(["start", "arm64", str(log), "--", *inner], record).returncode == 0
    assert _times(["run", "pytest", "--", "sh", "-c", "sleep 1.1"], record).returncode == 0
    assert _times(["wait", "arm64"], record).returncode == 0
    rows = dict(line.split("\t") for line in record.read_text().splitlines())
    beside = "molecule-default (beside the steps above)"
    assert beside in rows and f"{beside}/create" in rows and "molecule-default" not in rows, rows
    table = _times(["report"], record).stdout
    assert "    create" in table, table  # Molecule's steps under their scenario's row
    total = next(line for line in table.splitlines() if line.strip().startswith("total"))
    waited = float(rows["waiting for arm64"])  # the foreground's wait for it is counted: the total is wall time
    assert total.split()[-2:] == [str(round(float(rows["pytest"]) + waited)), "s"], table
