"""The smoke run of `pibake bench --quick`, so the bench cannot rot: cached image, host and qemu-user
inference, and a small flash to a loop device. No emulated boot (those steps are `make bench`'s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pibake.bench import report
from pibake.emulate import user
from tests.conftest import REPO, run_cli

# Loop devices for the flash step, chroot and binfmt for qemu-user; the arm64 rows run on the cached arm64 root.
pytestmark = [pytest.mark.root, pytest.mark.arm64_base]


def test_quick_bench_writes_numbers_a_chart_and_the_reasons(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = run_cli(["bench", "--quick", "--output-dir", str(out), "--project", str(REPO)])
    assert res.code == 0, res.err[-3000:]

    data = json.loads((out / "bench.json").read_text())
    report.validate(data)
    assert data["repeat"] == 1 and data["quick"] is True
    assert data["machine"]["cores"] >= 1 and data["machine"]["qemu_version"].startswith("QEMU")
    steps = {s["name"]: s for s in data["steps"]}
    for name in (
        "image-cached",
        "infer-host",
        "infer-qemu-user-cortex-a15",
        "infer-qemu-user-cortex-a7",
        "flash-dd",
        "flash-pibake",
        "flash-bmap-30pct",
    ):
        step = steps[name]
        assert step["status"] == "ok", (name, step["reason"])
        assert step["n"] >= 1 and 0 < step["min"] <= step["median"] <= step["max"], name
    # The emulated CPU is far slower than the host, and says how much.
    assert steps["infer-qemu-user-cortex-a15"]["ratio"] > 1
    assert steps["flash-pibake"]["ratio_to"] == "flash-dd" and steps["flash-pibake"]["ratio"] > 0
    # The 64-bit cores (virt64 offers the Pi 3's, 4's and 5's) with LiteRT on the arm64 root: timed, or, under QEMU
    # 7.2's user mode, where LiteRT's Interpreter dies of SIGSEGV, a reason that names the QEMU.
    qemu_user = user.version("arm64")
    for core in ("cortex-a53", "cortex-a72", "cortex-a76"):
        step = steps[f"infer-qemu-user-arm64-{core}"]
        if " version 7." in qemu_user:
            assert step["status"] == "cannot run" and "SIGSEGV" in step["reason"] and "7.2" in step["reason"], step
        else:
            assert step["status"] == "ok" and step["ratio"] > 1, step
    # The classic setup cannot run the model, and says why instead of vanishing.
    a9 = steps["infer-qemu-user-cortex-a9"]
    assert a9["status"] == "cannot run" and "Illegal instruction" in a9["reason"]
    # Only the cheap steps ran.
    assert not any(name.startswith(("boot-", "converge", "infer-guest", "image-cold")) for name in steps)

    png = out / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.size[0] > 400 and img.size[1] > 300

    assert "| infer-host |" in res.out and "cannot run:" in res.out
    assert (out / "bench.md").read_text().count("\n|") >= len(steps)
    assert not (out / "work").exists()
