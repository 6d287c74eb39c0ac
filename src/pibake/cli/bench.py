"""`pibake bench`: which steps, how many times, where to write; prints the table."""

from __future__ import annotations

import argparse
from pathlib import Path


def _bench(a: argparse.Namespace) -> int:
    from pibake.bench import run

    res = run.run_bench(
        a.project,
        output_dir=a.output_dir,
        repeat=a.repeat,
        steps=a.steps,
        profile_names=a.profiles,
        quick=a.quick,
        cold_rootfs=a.cold_rootfs,
        flash_size_mib=a.flash_size_mib,
        serve_requests=a.serve_requests,
        serve_concurrency=a.serve_concurrency,
    )
    print(res.table)
    print(f"\n{res.json_path}\n{res.png_path}\n{res.table_path}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bench` to the top-level subparsers SUB."""
    from pibake.bench.registry import QUICK_STEPS, STEPS
    from pibake.bench.serving import LoadPlan

    p = sub.add_parser(
        "bench",
        help="time the pipeline on this machine: image, boots, converge, inference, serving, flashing",
        description="Run each step --repeat times and report median, min and max, with the inference times as "
        "ratios to the host's and the flash times to dd's. Writes OUTPUT_DIR/bench.json (with the machine's "
        "facts), bench.png and bench.md, and prints the table. A step that cannot run here is reported with its "
        "reason. Only one emulated guest runs at a time.",
    )
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="runs of each step (default: %(default)s)")
    p.add_argument(
        "--steps", nargs="+", choices=STEPS, default=None, metavar="STEP", help=f"steps to run: {', '.join(STEPS)}"
    )
    p.add_argument("--profiles", nargs="+", default=None, metavar="PROFILE", help="machine profiles (default: all)")
    p.add_argument("--output-dir", type=Path, default=Path("build/bench"), help="(default: %(default)s)")
    p.add_argument(
        "--quick", action="store_true", help=f"smoke run: one repetition of {', '.join(QUICK_STEPS)}, small flash"
    )
    p.add_argument(
        "--cold-rootfs",
        action="store_true",
        help="image-cold also deletes the cached root filesystem (10-25 min each time; later steps wait for it)",
    )
    p.add_argument(
        "--serve-requests",
        type=int,
        default=LoadPlan.requests,
        metavar="N",
        help="requests of each serving run, per endpoint and machine (default: %(default)s; a run also stops "
        f"after {LoadPlan.seconds:.0f} s)",
    )
    p.add_argument(
        "--serve-concurrency",
        type=int,
        default=LoadPlan.concurrency,
        metavar="C",
        help="connections sending them at once (default: %(default)s); more than the service's queue "
        "(inference_service_queue_size, 16) get 503s, which fail the run",
    )
    p.add_argument("--flash-size-mib", type=int, default=None, help="flash image size (default: 1024, 64 with --quick)")
    p.add_argument(
        "--project", type=Path, default=Path.cwd(), help="the pibake checkout (default: the current directory)"
    )
    p.set_defaults(func=_bench)
