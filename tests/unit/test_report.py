"""The bake report: host against Pi outputs compared, report.md and report.html with the same content."""

from __future__ import annotations

import dataclasses
import html
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pibake import boards, preflight, report
from pibake.errors import UsageError
from pibake.isa import FP, SIMD, Arch, Artifact, ElfObject, InstructionSet
from pibake.report import PreflightResult, ServiceAnswer, Wheel

WHEEL = "tflite_runtime-2.11.0-cp39-cp39-manylinux2014_armv7l.whl"
DIGEST = "1cf50a6c51147d70299f4469f6cfab732f38f6ee7999df287155513e742360e6"


def _report(
    host: list[list[float]],
    pi: list[list[float]],
    *,
    names: list[str] | None = None,
    labels: tuple[str, ...] = ("car", "other"),
    project: str = "car",
    image: Path | None = Path("build/car.img"),
    wheels: tuple[Wheel, ...] | None = None,
    tolerance: float = 1e-5,
) -> report.BakeReport:
    names = names or [f"sample_{i}.png" for i in range(len(host))]
    answers = [ServiceAnswer(labels[max(range(len(p)), key=p.__getitem__)], max(p)) for p in pi]
    return report.BakeReport(
        project=project,
        board="pi3b-plus",
        board_description="Raspberry Pi 3 Model B+, BCM2837B0, Cortex-A53",
        profile="virt",
        emulated_cpu="cortex-a15",
        base="debian-bullseye",
        release="Debian bullseye armhf",
        runtime="tflite-runtime",
        runtime_version="2.11.0",
        wheels=wheels if wheels is not None else (Wheel(WHEEL, DIGEST, (PreflightResult("Cortex-A53", True),)),),
        labels=labels,
        tolerance=tolerance,
        samples=report.sample_results(names, host, pi, tolerance, answers),
        timings={"image": 12.25, "boot": 30.0, "provision": 160.5},
        image=image,
        image_sha256="ab" * 32 if image else None,
        skipped=("samples not decoded: Pillow is not installed here",),
        created=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    )


GOOD_HOST = [[0.991234, 0.008766], [0.1, 0.9]]
GOOD_PI = [[0.991236, 0.008764], [0.1, 0.9]]


# ---------------------------------------------------------------- comparing


def test_compare_gives_the_max_abs_difference_and_the_verdict() -> None:
    results = report.compare([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]], [[0.5, 0.5], [0.2000001, 0.79998], [1.0, 0.0]], 1e-5)
    assert results[0] == report.Comparison(0.0, True)
    assert results[1].max_abs_diff == pytest.approx(2e-5) and not results[1].passed
    assert results[2].passed


def test_a_difference_equal_to_the_tolerance_passes_and_zero_tolerance_wants_equality() -> None:
    assert report.compare([[0.5]], [[0.75]], 0.25) == [report.Comparison(0.25, True)]
    assert report.compare([[0.5]], [[0.5]], 0.0) == [report.Comparison(0.0, True)]
    assert not report.compare([[0.5]], [[0.5000001]], 0.0)[0].passed


def test_nan_fails_a_sample() -> None:
    [c] = report.compare([[0.5, 0.5]], [[math.nan, 0.5]], 1.0)
    assert math.isnan(c.max_abs_diff) and not c.passed


@pytest.mark.parametrize(
    ("host", "pi", "message"),
    [
        ([[0.5, 0.5]], [[0.5, 0.5], [0.1, 0.9]], "1 host outputs but 2 Pi outputs"),
        (
            [[0.5, 0.5], [0.1, 0.9]],
            [[0.5, 0.5], [0.1, 0.8, 0.1]],
            "sample 1: the host output has 2 classes, the Pi's 3",
        ),
        ([[]], [[]], "sample 0: empty output"),
    ],
)
def test_shapes_that_do_not_match_are_usage_errors(
    host: list[list[float]], pi: list[list[float]], message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        report.compare(host, pi, 1e-5)


def test_a_negative_tolerance_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="tolerance must be a number >= 0"):
        report.compare([[1.0]], [[1.0]], -1e-5)


def test_sample_names_must_match_the_outputs() -> None:
    with pytest.raises(UsageError, match="1 sample names and 2 outputs"):
        report.sample_results(["a.png"], GOOD_HOST, GOOD_PI, 1e-5)


# ---------------------------------------------------------------- Markdown


def test_markdown_of_a_passing_bake() -> None:
    r = _report(GOOD_HOST, GOOD_PI, names=["car_1.png", "other_1.png"])
    assert r.passed
    md = report.render_markdown(r)
    lines = md.splitlines()
    assert lines[0] == "# pibake bake: car"
    assert lines[2] == "**PASSED: all 2 samples within tolerance 1e-05 on the emulated cortex-a15**"
    assert "| Board | pi3b-plus (Raspberry Pi 3 Model B+, BCM2837B0, Cortex-A53) |" in lines
    assert "| Emulated on | machine profile virt, CPU cortex-a15, the image's own kernel |" in lines
    assert "| Base | debian-bullseye (Debian bullseye armhf) |" in lines
    assert "| Runtime | tflite-runtime 2.11.0 |" in lines
    assert "| Image | build/car.img |" in lines and f"| Image sha256 | {'ab' * 32} |" in lines
    assert f"| {WHEEL} | {DIGEST} | OK on Cortex-A53 |" in lines
    # Host and Pi outputs, top class first, the difference and the service's answer.
    assert (
        "| car_1.png | car 0.991234, other 0.008766 | car 0.991236, other 0.008764 | 2e-06 | pass | car 0.991236 |"
        in lines
    )
    assert "| other_1.png | other 0.9, car 0.1 | other 0.9, car 0.1 | 0 | pass | other 0.9 |" in lines
    assert "| image | 12.2 |" in lines and "| provision | 160.5 |" in lines and "| total | 202.8 |" in lines
    assert "- samples not decoded: Pillow is not installed here" in lines


def test_the_model_row_says_what_the_model_was_converted_from() -> None:
    plain = dataclasses.replace(_report(GOOD_HOST, GOOD_PI), model="car.tflite")
    assert "| Model | car.tflite |" in report.render_markdown(plain).splitlines()
    origin = "converted from /p/car.keras (sha256 " + "cd" * 32 + ") with TensorFlow 2.21.0"
    converted = dataclasses.replace(plain, model_origin=origin)
    assert f"| Model | car.tflite, {origin} |" in report.render_markdown(converted).splitlines()
    assert f"<tr><th>Model</th><td>car.tflite, {origin}</td></tr>" in report.render_html(converted)
    # Before the runtime, after the base.
    rows = [line.split(" | ")[0] for line in report.render_markdown(converted).splitlines() if line.startswith("| ")]
    assert rows.index("| Base") + 1 == rows.index("| Model") == rows.index("| Runtime") - 1


def test_a_failing_sample_is_said_at_the_top_and_flagged_in_its_row() -> None:
    r = _report(GOOD_HOST, [[0.98, 0.02], [0.1, 0.9]], names=["car_1.png", "other_1.png"], image=None)
    assert not r.passed and [s.name for s in r.failed_samples] == ["car_1.png"]
    md = report.render_markdown(r)
    assert md.splitlines()[2] == (
        "**FAILED: 1 of 2 samples off tolerance 1e-05 (car_1.png); the image was not published**"
    )
    row = next(line for line in md.splitlines() if line.startswith("| car_1.png"))
    assert "| 0.0112 | **FAIL** |" in row
    assert "| other_1.png |" in md and "| 0 | pass |" in md
    assert "| Image | not published |" in md


def test_a_published_image_with_a_failing_sample_is_marked_unusable() -> None:
    r = _report(GOOD_HOST, [[0.98, 0.02], [0.1, 0.9]])
    assert r.verdict().endswith("; the image car.img must not be used")


def test_a_wheel_that_fails_preflight_fails_the_report() -> None:
    bad = Wheel(WHEEL, DIGEST, (PreflightResult("Cortex-A9", False, "_pywrap.so needs VFPv4"),))
    r = _report(GOOD_HOST, GOOD_PI, wheels=(bad,))
    assert not r.passed
    md = report.render_markdown(r)
    assert md.splitlines()[2].startswith(f"**FAILED: wheels that fail preflight: {WHEEL}")
    assert "| FAILS on Cortex-A9: _pywrap.so needs VFPv4 |" in md


def test_no_samples_is_not_a_pass() -> None:
    r = _report([], [])
    assert not r.passed and "no samples were compared" in r.verdict()


def test_many_classes_show_the_top_five() -> None:
    labels = tuple(f"c{i}" for i in range(8))
    host = [[0.01, 0.02, 0.3, 0.04, 0.5, 0.06, 0.07, 0.0]]
    md = report.render_markdown(_report(host, host, labels=labels))
    assert "| c4 0.5, c2 0.3, c6 0.07, c5 0.06, c3 0.04 (+3 more) |" in md


def test_markdown_cells_escape_pipes_and_markup() -> None:
    md = report.render_markdown(
        _report(GOOD_HOST, GOOD_PI, labels=("a|b", "<i>x</i>"), names=["x|y.png", "`z`.png"], project="p*")
    )
    assert md.splitlines()[0] == "# pibake bake: p\\*"
    assert "| x\\|y.png | a\\|b 0.991234, \\<i\\>x\\</i\\> 0.008766 |" in md
    assert "| \\`z\\`.png |" in md
    # Every table row has as many cells as its header.
    for line in md.splitlines():
        if line.startswith("| sample |") or line.startswith("| x"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 7


# ---------------------------------------------------------------- HTML


def test_html_has_the_same_content_escaped_and_self_contained() -> None:
    r = _report(
        GOOD_HOST,
        [[0.98, 0.02], [0.1, 0.9]],
        names=["<img src=x onerror=alert(1)>.png", "a&b.png"],
        labels=("car", '"other"'),
        project="<script>alert('x')</script>",
    )
    page = report.render_html(r)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<td>&lt;img src=x onerror=alert(1)&gt;.png</td>" in page and "<td>a&amp;b.png</td>" in page
    assert "&quot;other&quot; 0.008766" in page
    # Nothing fetched: no external stylesheet, script, image or font (the escaped sample name holds "src=x" as text).
    assert not re.search(r"<link|<script|\bsrc=|url\(|@import|https?://", page.replace("src=x", ""))
    # The verdict is the first thing after the title, marked as a failure.
    body = page.split("<body>", 1)[1]
    first = re.findall(r"<(h1|p)[^>]*>(.*?)</\1>", body)[:2]
    assert first[1][1] == html.escape(r.verdict())
    assert '<p class="verdict fail">FAILED: 1 of 2 samples off tolerance 1e-05' in page
    assert '<tr class="fail"><td>&lt;img' in page and "<td>FAIL</td>" in page
    # The same facts as report.md.
    for fact in ("Raspberry Pi 3 Model B+", "machine profile virt, CPU cortex-a15", "Debian bullseye armhf", DIGEST):
        assert fact in page and fact in report.render_markdown(r)


def test_html_of_a_passing_bake() -> None:
    page = report.render_html(_report(GOOD_HOST, GOOD_PI))
    assert '<p class="verdict pass">PASSED: all 2 samples' in page
    assert '<tr><th>total</th><td class="num">202.8</td></tr>' in page


def test_write_puts_both_files_in_the_directory(tmp_path: Path) -> None:
    r = _report(GOOD_HOST, GOOD_PI)
    md, page = report.write(r, tmp_path / "build")
    assert (md.name, page.name) == ("report.md", "report.html")
    assert md.read_text() == report.render_markdown(r) and page.read_text() == report.render_html(r)
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["report.html", "report.md"]


# ---------------------------------------------------------------- preflight rows


def test_wheels_from_a_preflight_report() -> None:
    board = boards.get("pi3b-plus")
    a7 = InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV4, fp_d32=True, simd=SIMD.NEON_FMA, idiv=True)
    a9 = InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV3, fp_d32=True, simd=SIMD.NEON, idiv=False)
    on_board = preflight.Target("pi3b-plus (Cortex-A53)", a7, "")
    emulated = preflight.Target("vexpress-a9 (cortex-a9)", a9, "")
    so = ElfObject("tflite_runtime/_pywrap.so", a7, ("Tag_FP_arch: VFPv4",))
    art = Artifact(Path("/cache/" + WHEEL), (so,))
    pre = preflight.Report(
        board=board,
        targets=(on_board, emulated),
        artifacts=(art,),
        verdicts=(
            preflight.Verdict(art, on_board, ()),
            preflight.Verdict(art, emulated, (preflight.Mismatch(so, ("VFPv4",)),)),
        ),
        notes=(),
    )
    [wheel] = report.wheels_from_preflight(pre, {WHEEL: DIGEST})
    assert wheel == Wheel(
        WHEEL,
        DIGEST,
        (
            PreflightResult("pi3b-plus (Cortex-A53)", True, ""),
            PreflightResult("vexpress-a9 (cortex-a9)", False, "tflite_runtime/_pywrap.so needs VFPv4"),
        ),
    )
    assert not wheel.ok


def test_a_boot_on_pibake_s_kernel_says_so() -> None:
    kernel = "pibake's virt64 kernel (debian-source: linux-source 6.1.192-3)"
    r = dataclasses.replace(_report(GOOD_HOST, GOOD_PI), emulated_kernel=kernel)
    assert f"| Emulated on | machine profile virt, CPU cortex-a15, {kernel} |" in report.render_markdown(r).splitlines()
    assert html.escape(kernel) in report.render_html(r)
