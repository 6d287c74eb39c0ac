"""The bake report: what was built, for which board, and whether the Pi's outputs match this machine's.

`pibake bake` fills one `BakeReport` and writes it twice with the same content: ``report.md``
(Markdown, for a terminal, a merge request or a wiki) and ``report.html`` (one self-contained
file: inline CSS, no scripts, nothing fetched; every value escaped). A report in which any sample
is off tolerance, or any wheel fails its preflight, says so in its first lines.

`compare` is the verdict itself: per sample, the largest absolute difference between the host's
and the Pi's output vectors, and whether it is within the tolerance. `wheels_from_preflight`
turns a `pibake.preflight.Report` into the report's wheel rows.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pibake.errors import UsageError

if TYPE_CHECKING:
    from pibake import preflight

MARKDOWN = "report.md"
HTML = "report.html"
# Classes shown per sample (the host's highest first); the max abs diff always covers them all.
SHOWN_CLASSES = 5


# ---------------------------------------------------------------- what a report holds


@dataclass(frozen=True)
class PreflightResult:
    """One wheel against one CPU (the board's, or the emulated one): ok, or what it lacks."""

    target: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Wheel:
    """A wheel installed on the image: its file name, sha256 and the ISA preflight against each CPU."""

    filename: str
    sha256: str
    preflight: tuple[PreflightResult, ...] = ()

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.preflight)


@dataclass(frozen=True)
class Comparison:
    """One sample's host and Pi outputs compared: the largest absolute difference and the verdict."""

    max_abs_diff: float
    passed: bool


@dataclass(frozen=True)
class ServiceAnswer:
    """What the inference service on the Pi answered to POST /predict with the sample."""

    label: str
    probability: float


@dataclass(frozen=True)
class SampleResult:
    """One sample: the output vector on this machine and on the emulated Pi, compared, and the service's answer."""

    name: str
    host: tuple[float, ...]
    pi: tuple[float, ...]
    max_abs_diff: float
    passed: bool
    service: ServiceAnswer | None = None


@dataclass(frozen=True)
class BakeReport:
    """Everything `pibake bake` reports; ``image``/``image_sha256`` None when the image was not published."""

    project: str
    board: str
    # "Raspberry Pi 3 Model B+, BCM2837B0, Cortex-A53" (boards.Board's model, soc and core).
    board_description: str
    profile: str
    emulated_cpu: str
    base: str
    # The base's release: "Debian bullseye armhf", or the Raspberry Pi OS image and its date.
    release: str
    runtime: str
    runtime_version: str
    wheels: tuple[Wheel, ...]
    labels: tuple[str, ...]
    tolerance: float
    samples: tuple[SampleResult, ...]
    # Stage -> seconds, in the order the stages ran.
    timings: Mapping[str, float] = field(default_factory=dict)
    image: Path | None = None
    image_sha256: str | None = None
    # The kernel the emulated boot ran when it was not the image's own: "pibake's virt64 kernel (Linux 6.1.x)".
    emulated_kernel: str | None = None
    # Checks that could not run (project.Project.skipped).
    skipped: tuple[str, ...] = ()
    # The model file the Pi runs ("car.tflite"), and where it came from when bake made it: "converted from FILE
    # (sha256 HEX) with TensorFlow VERSION" (pibake.convert.Conversion.describe); None: the project's own file.
    model: str = ""
    model_origin: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def failed_samples(self) -> tuple[SampleResult, ...]:
        return tuple(s for s in self.samples if not s.passed)

    @property
    def failed_wheels(self) -> tuple[Wheel, ...]:
        return tuple(w for w in self.wheels if not w.ok)

    @property
    def passed(self) -> bool:
        return bool(self.samples) and not self.failed_samples and not self.failed_wheels

    def verdict(self) -> str:
        """The report's first line: PASSED or FAILED, and why."""
        problems = []
        if self.failed_samples:
            names = ", ".join(s.name for s in self.failed_samples)
            problems.append(
                f"{len(self.failed_samples)} of {len(self.samples)} samples off tolerance {self.tolerance:g} ({names})"
            )
        if self.failed_wheels:
            problems.append(f"wheels that fail preflight: {', '.join(w.filename for w in self.failed_wheels)}")
        if not self.samples:
            problems.append("no samples were compared")
        if problems:
            published = "" if self.image is None else f"; the image {self.image.name} must not be used"
            return "FAILED: " + "; ".join(problems) + (published or "; the image was not published")
        return (
            f"PASSED: all {len(self.samples)} samples within tolerance {self.tolerance:g} "
            f"on the emulated {self.emulated_cpu}"
        )


# ---------------------------------------------------------------- comparing outputs


def compare(host: Sequence[Sequence[float]], pi: Sequence[Sequence[float]], tolerance: float) -> list[Comparison]:
    """Per sample, the max absolute difference of HOST's and PI's probability vectors and whether it is <= TOLERANCE.

    HOST and PI are samples x classes. A different number of samples, or of classes in a sample,
    is a UsageError: the two runs did not see the same inputs or the same model. A NaN anywhere in
    a sample fails it.
    """
    if tolerance < 0 or math.isnan(tolerance):
        raise UsageError(f"the tolerance must be a number >= 0, got {tolerance}")
    if len(host) != len(pi):
        raise UsageError(f"{len(host)} host outputs but {len(pi)} Pi outputs: the runs saw different samples")
    results = []
    for i, (h, p) in enumerate(zip(host, pi, strict=True)):
        if len(h) != len(p):
            raise UsageError(f"sample {i}: the host output has {len(h)} classes, the Pi's {len(p)}")
        if not h:
            raise UsageError(f"sample {i}: empty output")
        diffs = [abs(float(a) - float(b)) for a, b in zip(h, p, strict=True)]
        worst = math.nan if any(math.isnan(d) for d in diffs) else max(diffs)
        # Written so that NaN fails: NaN <= x is False.
        results.append(Comparison(worst, worst <= tolerance))
    return results


def sample_results(
    names: Sequence[str],
    host: Sequence[Sequence[float]],
    pi: Sequence[Sequence[float]],
    tolerance: float,
    service: Sequence[ServiceAnswer | None] | None = None,
) -> tuple[SampleResult, ...]:
    """The report's sample rows: NAMES with their HOST and PI outputs compared (`compare`) and SERVICE's answers."""
    compared = compare(host, pi, tolerance)
    if len(names) != len(compared) or (service is not None and len(service) != len(compared)):
        raise UsageError(f"{len(names)} sample names and {len(compared)} outputs: they must match one to one")
    answers = list(service) if service is not None else [None] * len(compared)
    return tuple(
        SampleResult(n, tuple(map(float, h)), tuple(map(float, p)), c.max_abs_diff, c.passed, a)
        for n, h, p, c, a in zip(names, host, pi, compared, answers, strict=True)
    )


def wheels_from_preflight(report: preflight.Report, digests: Mapping[str, str]) -> tuple[Wheel, ...]:
    """The wheel rows of a preflight report; DIGESTS maps each wheel's file name to its sha256."""
    wheels = []
    for art in report.artifacts:
        checks = tuple(
            PreflightResult(v.target.label, v.ok, "; ".join(v.details())) for v in report.verdicts if v.artifact is art
        )
        wheels.append(Wheel(art.name, digests.get(art.name, ""), checks))
    return tuple(wheels)


# ---------------------------------------------------------------- rendering


def _overview(r: BakeReport) -> list[tuple[str, str]]:
    return [
        ("Project", r.project),
        ("Board", f"{r.board} ({r.board_description})"),
        (
            "Emulated on",
            f"machine profile {r.profile}, CPU {r.emulated_cpu}"
            + (f", {r.emulated_kernel}" if r.emulated_kernel else ", the image's own kernel"),
        ),
        ("Base", f"{r.base} ({r.release})"),
        *([("Model", r.model + (f", {r.model_origin}" if r.model_origin else ""))] if r.model else []),
        ("Runtime", f"{r.runtime} {r.runtime_version}"),
        ("Image", str(r.image) if r.image else "not published"),
        ("Image sha256", r.image_sha256 or "-"),
        ("Created", f"{r.created:%Y-%m-%d %H:%M:%S %Z}"),
    ]


def _outputs(r: BakeReport, s: SampleResult) -> tuple[str, str]:
    """Host and Pi outputs as "label value" pairs, the host's top classes first."""
    order = sorted(range(len(s.host)), key=lambda i: -s.host[i] if not math.isnan(s.host[i]) else math.inf)
    shown = order[:SHOWN_CLASSES]
    more = f" (+{len(order) - len(shown)} more)" if len(order) > len(shown) else ""

    def name(i: int) -> str:
        return r.labels[i] if i < len(r.labels) else f"#{i}"

    host = ", ".join(f"{name(i)} {s.host[i]:.7g}" for i in shown) + more
    pi = ", ".join(f"{name(i)} {s.pi[i]:.7g}" for i in shown) + more
    return host, pi


def _service(s: SampleResult) -> str:
    return f"{s.service.label} {s.service.probability:.7g}" if s.service else "-"


def _preflight(w: Wheel) -> str:
    if not w.preflight:
        return "not checked"
    return "; ".join(
        f"{'OK' if p.ok else 'FAILS'} on {p.target}" + (f": {p.detail}" if p.detail else "") for p in w.preflight
    )


def _md(text: object) -> str:
    """TEXT for a Markdown table cell: pipes, backslashes and markup characters escaped, one line.

    Underscores stay: inside a word (wheel names) they are not emphasis in CommonMark.
    """
    out = str(text).replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    for c in "|*`[]<>":
        out = out.replace(c, "\\" + c)
    return out


def render_markdown(r: BakeReport) -> str:
    """report.md: the verdict first, then the overview, wheels, samples, timings and skipped checks."""
    status = "FAILED" if not r.passed else "PASSED"
    lines = [f"# pibake bake: {_md(r.project)}", "", f"**{_md(r.verdict())}**", ""]
    lines += ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {_md(v)} |" for k, v in _overview(r)]
    lines += ["", "## Runtime wheels", ""]
    if r.wheels:
        lines += ["| wheel | sha256 | ISA preflight |", "| --- | --- | --- |"]
        lines += [f"| {_md(w.filename)} | {_md(w.sha256)} | {_md(_preflight(w))} |" for w in r.wheels]
    else:
        lines.append("No native wheels were installed.")
    lines += ["", f"## Samples: this machine against the emulated Pi (tolerance {r.tolerance:g})", ""]
    lines += [
        "| sample | host output | Pi output | max abs diff | result | service answer |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    for s in r.samples:
        host, pi = _outputs(r, s)
        result = "pass" if s.passed else "**FAIL**"
        lines.append(
            f"| {_md(s.name)} | {_md(host)} | {_md(pi)} | {s.max_abs_diff:.3g} | {result} | {_md(_service(s))} |"
        )
    lines += ["", "## Timings", "", "| stage | seconds |", "| --- | ---: |"]
    lines += [f"| {_md(stage)} | {seconds:.1f} |" for stage, seconds in r.timings.items()]
    if r.timings:
        lines.append(f"| total | {sum(r.timings.values()):.1f} |")
    if r.skipped:
        lines += ["", "## Not checked on this machine", ""]
        lines += [f"- {_md(s)}" for s in r.skipped]
    lines += ["", f"<!-- pibake report: {status} -->"]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, td.digest { font-family: ui-monospace, monospace; word-break: break-all; }
.verdict { padding: 0.8rem 1rem; font-weight: bold; border-radius: 4px; }
.verdict.pass, .pass { background: #e3f4e1; }
.verdict.fail, .fail { background: #fbe3e1; }
"""


def render_html(r: BakeReport) -> str:
    """report.html: report.md's content as one self-contained page (inline CSS, no scripts, all values escaped)."""
    e = html.escape
    verdict_class = "pass" if r.passed else "fail"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pibake bake: {e(r.project)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>pibake bake: {e(r.project)}</h1>",
        f'<p class="verdict {verdict_class}">{e(r.verdict())}</p>',
        "<table>",
        *(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _overview(r)),
        "</table>",
        "<h2>Runtime wheels</h2>",
    ]
    if r.wheels:
        parts.append("<table><tr><th>wheel</th><th>sha256</th><th>ISA preflight</th></tr>")
        parts += [
            f'<tr class="{"pass" if w.ok else "fail"}"><td>{e(w.filename)}</td><td class="digest">{e(w.sha256)}</td>'
            f"<td>{e(_preflight(w))}</td></tr>"
            for w in r.wheels
        ]
        parts.append("</table>")
    else:
        parts.append("<p>No native wheels were installed.</p>")
    parts += [
        f"<h2>Samples: this machine against the emulated Pi (tolerance {r.tolerance:g})</h2>",
        "<table><tr><th>sample</th><th>host output</th><th>Pi output</th><th>max abs diff</th><th>result</th>"
        "<th>service answer</th></tr>",
    ]
    for s in r.samples:
        host, pi = _outputs(r, s)
        parts.append(
            f'<tr class="{"pass" if s.passed else "fail"}"><td>{e(s.name)}</td><td>{e(host)}</td><td>{e(pi)}</td>'
            f'<td class="num">{s.max_abs_diff:.3g}</td><td>{"pass" if s.passed else "FAIL"}</td>'
            f"<td>{e(_service(s))}</td></tr>"
        )
    parts += ["</table>", "<h2>Timings</h2>", "<table><tr><th>stage</th><th>seconds</th></tr>"]
    parts += [f'<tr><td>{e(stage)}</td><td class="num">{seconds:.1f}</td></tr>' for stage, seconds in r.timings.items()]
    if r.timings:
        parts.append(f'<tr><th>total</th><td class="num">{sum(r.timings.values()):.1f}</td></tr>')
    parts.append("</table>")
    if r.skipped:
        parts += ["<h2>Not checked on this machine</h2>", "<ul>", *(f"<li>{e(s)}</li>" for s in r.skipped), "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write(r: BakeReport, directory: Path) -> tuple[Path, Path]:
    """DIRECTORY/report.md and DIRECTORY/report.html, each replaced whole (written beside, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((MARKDOWN, render_markdown(r)), (HTML, render_html(r))):
        path = directory / name
        part = path.with_name(name + ".part")
        part.write_text(text, encoding="utf-8")
        part.replace(path)
        written.append(path)
    return written[0], written[1]
