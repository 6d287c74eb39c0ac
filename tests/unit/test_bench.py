"""The pure parts of `pibake bench`: statistics, ratios, the table, the JSON schema, the reasons a step cannot run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pibake.bench import emulated, flash, image, inference, registry, report, results, serving
from pibake.bench.results import Step
from pibake.bench.wheel import cannot_run_model
from pibake.errors import PibakeError
from tests.wheels import TAG_ADVANCED_SIMD_ARCH, TAG_CPU_ARCH, TAG_FP_ARCH, elf32, make_wheel

# What the tflite-runtime 2.11.0 armv7l wheel's .so says: ARMv7, VFPv4, NEON with FMA.
VFPV4_NEON_FMA = {TAG_CPU_ARCH: 10, TAG_FP_ARCH: 5, TAG_ADVANCED_SIMD_ARCH: 2}

MACHINE = {
    "cpu_model": "Test CPU",
    "cores": 2,
    "ram_gib": 8.0,
    "qemu_version": "QEMU emulator version 7.2.0",
    "kernel": "6.1.0",
    "pibake_version": "0.1.0",
    "date": "2026-01-01T00:00:00+00:00",
    "load_average_at_start": [0.5, 0.4, 0.3],
}


def steps() -> list[Step]:
    return [
        Step("infer-host", "inference", [0.001, 0.003, 0.002]),
        Step("infer-qemu-user-cortex-a15", "inference", [0.1, 0.3], ratio_to="infer-host", note="QEMU_CPU=cortex-a15"),
        Step("infer-qemu-user-cortex-a9", "inference", status="cannot run", reason="needs VFPv4 | NEON"),
        Step("boot-virt", "boot", [28.0]),
    ]


def test_summarize_gives_median_min_max() -> None:
    assert results.summarize([3.0, 1.0, 2.0]) == results.Summary(3, 2.0, 1.0, 3.0)
    assert results.summarize([4.0, 1.0]) == results.Summary(2, 2.5, 1.0, 4.0)
    with pytest.raises(PibakeError):
        results.summarize([])


def test_a_step_that_did_not_run_has_no_summary_even_with_samples() -> None:
    assert Step("x", "boot", [1.0], status="failed", reason="boom").summary is None


def test_ratio_is_median_over_the_references_median() -> None:
    all_steps = steps()
    assert results.ratio(all_steps[1], all_steps) == pytest.approx(0.2 / 0.002)
    assert results.ratio(all_steps[0], all_steps) is None
    assert results.ratio(all_steps[2], all_steps) is None
    orphan = Step("y", "inference", [1.0], ratio_to="missing")
    assert results.ratio(orphan, [orphan]) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.000306, "306 µs"), (0.1201, "120.1 ms"), (28.04, "28.0 s"), (300.0, "5.0 min")],
)
def test_durations_read_in_the_right_unit(seconds: float, text: str) -> None:
    assert report.format_seconds(seconds) == text


def test_table_has_a_row_per_step_with_numbers_ratio_or_reason() -> None:
    table = report.format_table(steps())
    lines = table.splitlines()
    assert lines[0].startswith("| step | n | median | min | max | ratio |")
    assert len(lines) == 2 + 4
    assert lines[2] == "| infer-host | 3 | 2.0 ms | 1.0 ms | 3.0 ms |  |  |"
    assert "| 2 | 200.0 ms | 100.0 ms | 300.0 ms | 100.00x infer-host | QEMU_CPU=cortex-a15 |" in lines[3]
    # A pipe in a reason must not break the Markdown row.
    assert lines[4] == "| infer-qemu-user-cortex-a9 | 0 | - | - | - | - | cannot run: needs VFPv4 / NEON |"
    assert all(line.count("|") == 8 for line in lines)


def test_json_round_trips_and_validates() -> None:
    data = report.to_json(MACHINE, steps(), repeat=3, quick=False)
    again = json.loads(json.dumps(data))
    report.validate(again)
    by_name = {s["name"]: s for s in again["steps"]}
    assert by_name["infer-host"]["median"] == 0.002 and by_name["infer-host"]["n"] == 3
    assert by_name["infer-qemu-user-cortex-a15"]["ratio"] == pytest.approx(100.0)
    assert by_name["infer-qemu-user-cortex-a9"]["status"] == "cannot run"
    assert by_name["infer-qemu-user-cortex-a9"]["median"] is None


@pytest.mark.parametrize(
    ("damage", "complaint"),
    [
        (lambda d: d.update(schema="other/1"), "schema"),
        (lambda d: d["machine"].pop("qemu_version"), "machine.qemu_version missing"),
        (lambda d: d.update(repeat=0), "repeat"),
        (lambda d: d.update(steps=[]), "no steps"),
        (lambda d: d["steps"][0].update(median=None), "needs samples, median, min and max"),
        (lambda d: d["steps"][0].update(min=1.0), "min <= median <= max"),
        (lambda d: d["steps"][2].update(reason=""), "needs its reason"),
        (lambda d: d["steps"][0].update(status="skipped"), "status must be one of"),
        (lambda d: d["steps"][0].update(group="misc"), "group"),
    ],
)
def test_validate_names_what_is_wrong(damage: Any, complaint: str) -> None:
    data = copy.deepcopy(report.to_json(MACHINE, steps(), repeat=1, quick=True))
    damage(data)
    with pytest.raises(PibakeError, match=complaint):
        report.validate(data)


def test_step_selection() -> None:
    assert registry.pick(None, quick=True) == list(registry.QUICK_STEPS)
    assert registry.pick(None, quick=False) == list(registry.STEPS)
    assert registry.pick(["flash", "image-cached"], quick=False) == ["image-cached", "flash"]
    with pytest.raises(PibakeError, match="unknown bench step"):
        registry.pick(["warp"], quick=False)


def test_the_registry_lists_the_steps_in_pipeline_order_and_runs_each_runner_once() -> None:
    assert registry.STEPS == (
        "image-cold", "image-cached", "boot", "converge", "infer-host", "infer-qemu-user", "infer-guest", "serve",
        "flash",
    )  # fmt: skip
    assert registry.QUICK_STEPS == ("image-cached", "infer-host", "infer-qemu-user", "flash")
    # The guests' runner measures boot, converge and infer-guest: once, after the host's and qemu-user's inference.
    assert registry.runners(registry.STEPS) == [
        image.image_cold,
        image.image_cached,
        inference.infer_host,
        inference.infer_qemu_user,
        emulated.emulated,
        flash.flash_step,
    ]
    assert registry.runners(["boot", "flash", "converge"]) == [emulated.emulated, flash.flash_step]
    # serve's guests are the emulated runner's: --steps serve boots them too.
    assert registry.runners(["serve"]) == [emulated.emulated]


def test_serving_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert serving.percentile(values, 50) == 50.0
    assert serving.percentile(values, 99) == 99.0
    assert serving.percentile(values, 100) == 100.0
    assert serving.percentile([7.0], 99) == 7.0
    with pytest.raises(PibakeError):
        serving.percentile([], 50)


def test_serving_rows_keep_their_metrics_in_the_json_and_fail_on_any_error() -> None:
    rec = results.Recorder()
    ok = serving.LoadResult([0.01, 0.02, 0.03, 0.04], wall_seconds=0.05, planned=4, concurrency=2)
    serving.record_load(rec, "serve-predict-host", ok, where="this machine")
    serving.record_load(rec, "serve-predict-virt", ok, where="virt", ratio_to="serve-predict-host")
    bad = serving.LoadResult([0.01], ["#1 POST /predict: 503: b'busy'"], wall_seconds=0.1, planned=2, concurrency=1)
    serving.record_load(rec, "serve-v2-infer-virt", bad, where="virt")
    host, virt, failed = rec.steps.values()
    assert host.summary == results.Summary(4, 0.025, 0.01, 0.04)
    assert "4 requests at concurrency 2: 80.0 req/s, p50 25.0 ms, p99 40.0 ms, 0 errors" in host.note
    assert results.ratio(virt, list(rec.steps.values())) == pytest.approx(1.0)
    assert failed.status == "failed" and failed.reason.startswith("1 of 2 requests failed (virt), first: #1")
    data = report.to_json(MACHINE, list(rec.steps.values()), repeat=1, quick=False)
    report.validate(json.loads(json.dumps(data, allow_nan=False)))
    assert data["steps"][0]["metrics"] == [
        {"requests": 4.0, "sent": 4.0, "concurrency": 2.0, "requests_per_second": 80.0, "p50_ms": 25.0,
         "p99_ms": 40.0, "errors": 0.0, "wall_seconds": 0.05},
    ]  # fmt: skip
    assert data["steps"][2]["metrics"][0]["errors"] == 1.0


def test_the_model_cannot_run_where_preflight_says_so(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path / "tflite_runtime-2.11.0-cp39-cp39-manylinux2014_armv7l.whl",
        {"tflite_runtime/_wrapper.so": elf32(VFPV4_NEON_FMA)},
    )
    reason = cannot_run_model(wheel, "vexpress-a9")
    assert reason is not None
    assert "cortex-a9" in reason and "VFPv4" in reason and "Illegal instruction" in reason
    assert cannot_run_model(wheel, "virt") is None
    assert cannot_run_model(wheel, "raspi2b") is None


def test_changed_count_from_the_recap() -> None:
    recap = "PLAY RECAP\npi : ok=12 changed=3 unreachable=0\nother : ok=1 changed=0\n"
    assert emulated._changed(recap) == 3
    assert emulated._changed("no recap") is None


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = report.render_chart(steps(), MACHINE, tmp_path / "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_profile_boots_on_its_core_and_virt64_on_every_64_bit_core_too() -> None:
    got = [(x.profile, x.cpu, x.label, x.serve) for x in emulated.launches(["virt", "virt64", "raspi3b"])]
    assert got == [
        ("virt", None, "virt", True),
        ("virt64", None, "virt64", True),
        ("raspi3b", None, "raspi3b", True),
        # The Pi 3's and the Pi 5's cores on virt64, whose own is the Pi 4's; the service's load once per profile.
        ("virt64", "cortex-a53", "virt64-cortex-a53", False),
        ("virt64", "cortex-a76", "virt64-cortex-a76", False),
    ]


def test_the_64_bit_profiles_boot_the_arm64_base_provisioned_as_bake_does_for_a_pi4() -> None:
    arm64 = emulated.platforms()["arm64"]
    assert (arm64.base, arm64.board, arm64.converge_profile) == ("debian-trixie-arm64", "pi4", "virt64")
    assert arm64.extra_vars == {
        "python_runtime_lock": "ai-edge-litert-3.13-debian-trixie-arm64.txt",
        "python_runtime_board": "pi4",
    }
    assert arm64.python == "/opt/pibake/venv/bin/python" and arm64.suffix == "-arm64"
    assert emulated.platforms()["armhf"].base == "debian-bullseye"


def test_the_timing_is_read_from_the_last_json_line_whatever_the_runtime_prints_around_it() -> None:
    # LiteRT's INFO line comes on stderr, which SSH interleaves with stdout: after the JSON here.
    out = (
        '{"runtime": "ai_edge_litert 2.3.0", "seconds": [0.37, 0.35]}\n'
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    )
    assert inference._parse_timing(out)["seconds"] == [0.37, 0.35]
    with pytest.raises(PibakeError, match="printed no timings"):
        inference._parse_timing('INFO: something\n{"runtime": "x", "seconds": []}\n')
