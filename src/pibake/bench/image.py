"""The bench's image steps: the base image rebuilt (image-cold) and taken from the cache (image-cached)."""

from __future__ import annotations

import shutil

from pibake.bench.context import BENCH_BASE, Context
from pibake.image import build as image
from pibake.util.cache import cache_root, recipe_hash


def image_cold(ctx: Context) -> None:
    """image-cold: the base image rebuilt with its cache entry ignored; with cold_rootfs, its root filesystem too."""
    spec = image.default_spec(base=BENCH_BASE)
    for _ in range(ctx.repeat):
        with ctx.rec.guard("image-cold", "image"):
            if ctx.cold_rootfs:
                shutil.rmtree(cache_root() / "rootfs" / recipe_hash(spec.base.key()), ignore_errors=True)
            built = image.build_image(spec, rebuild=True)
            what = "rootfs (mmdebstrap) and image" if ctx.cold_rootfs else "image from the cached rootfs"
            ctx.rec.add("image-cold", "image", built.seconds, note=f"{what}; --cold-rootfs: mmdebstrap too")


def image_cached(ctx: Context) -> None:
    """image-cached: the base image taken from the cache and published, as a second `make image` does."""
    out = ctx.work / "base.img"
    for _ in range(ctx.repeat):
        with ctx.rec.guard("image-cached", "image"):
            built = image.build_image(image.default_spec(base=BENCH_BASE), output=out)
            note = "cache hit, published" if built.cached else "cache MISS: built"
            ctx.rec.add("image-cached", "image", built.seconds, note=note)
    out.unlink(missing_ok=True)
    out.with_name(out.name + ".sha256").unlink(missing_ok=True)
