"""Benchmark the mammogram cache: decode speed per core, and memory-mapped reads vs a training step.

1. Full-field 16-bit DICOM -> 256x256 breast crop: seconds per image for decoding
   (``read_dicom``) and preprocessing (mask, crop, flip, resize; with and without CLAHE), in
   one process, so images/s is per core; then ``build_cache`` end-to-end with 1 and N workers.
   Uses the real CBIS-DDSM DICOMs under ``$SGC_TEST_DATA/cbis-ddsm/dicom`` (RLE, 16-bit) when
   present, otherwise a synthetic 4432x2864 16-bit RLE DICOM.
2. Reading a random batch from the memory-mapped cache (uint16 -> float32 torch tensor)
   against one training step that consumes it: ``sgc.nets.ScoreUNet`` forward + backward on
   the same batch (a small conv net stands in if sgc.nets is absent). Reads should be far
   cheaper than the step, so the cache never starves training.

Usage: ``python benchmarks/cache.py [--images 8] [--batch 8] [--workers 2] [--out FILE]``.
Prints a table and writes JSON (default ``reports/benchmarks/cache.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _table import Column, print_table  # noqa: E402
from sgc.data.cache import build_cache, open_cache  # noqa: E402
from sgc.data.dicom import read_dicom  # noqa: E402
from sgc.data.preprocess import PreprocessSettings, preprocess  # noqa: E402


def _test_data() -> Path:
    """The real data folder of the tests: $SGC_TEST_DATA, else $SGC_DATA, else the team's ../shared/data."""
    given = os.environ.get("SGC_TEST_DATA") or os.environ.get("SGC_DATA")
    return Path(given) if given else REPO.parent / "shared" / "data"


def source_dicoms(tmp: Path) -> tuple[list[Path], str]:
    shared = _test_data() / "cbis-ddsm" / "dicom"
    files = sorted(shared.rglob("*.dcm")) if shared.exists() else []
    if files:
        return files, "real CBIS-DDSM (RLE, 16-bit)"
    sys.path.insert(0, str(REPO / "tests"))
    from data_fixtures import breast_phantom, write_dicom
    from pydicom.uid import RLELossless
    image = breast_phantom(4432, 2864)
    return [write_dicom(tmp / "synthetic.dcm", image, bits_stored=16, compress=RLELossless)], "synthetic (RLE, 16-bit)"


def time_stages(files, repeats: int) -> dict:
    decode, prep, prep_clahe = [], [], []
    for _ in range(repeats):
        for path in files:
            t0 = time.perf_counter()
            image, info = read_dicom(path)
            t1 = time.perf_counter()
            preprocess(image, settings=PreprocessSettings(size=256), laterality=info.laterality)
            t2 = time.perf_counter()
            preprocess(image, settings=PreprocessSettings(size=256, clahe=True), laterality=info.laterality)
            t3 = time.perf_counter()
            decode.append(t1 - t0), prep.append(t2 - t1), prep_clahe.append(t3 - t2)
    return {"decode_s": float(np.median(decode)), "preprocess_s": float(np.median(prep)),
            "preprocess_clahe_s": float(np.median(prep_clahe))}


def time_cache(files, n_images: int, workers: int, folder: Path) -> dict:
    rows = [{"image_id": f"img{k}", "path": str(files[k % len(files)])} for k in range(n_images)]
    result = build_cache(pd.DataFrame(rows), folder, settings=PreprocessSettings(size=256), workers=workers,
                         progress=False)
    return {"workers": workers, "images": n_images, "seconds": result.seconds,
            "images_per_s": n_images / result.seconds, "images_per_s_per_core": n_images / result.seconds / workers,
            "path": str(result.path)}


def time_read_vs_step(cache_path: Path, n_images: int, batch: int, repeats: int, channels: int) -> dict:
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    folder = cache_path.parent.parent / "bigcache"  # enlarge by repetition so reads hit many rows
    images, _ = open_cache(cache_path)
    big = np.lib.format.open_memmap(folder.with_suffix(".npy"), mode="w+", dtype=images.dtype,
                                    shape=(n_images,) + images.shape[1:])
    for k in range(n_images):
        big[k] = images[k % len(images)]
    big.flush()
    del big
    data = np.load(folder.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    rng = np.random.default_rng(0)
    reads = []
    for _ in range(repeats * 5):
        index = np.sort(rng.choice(len(data), size=batch, replace=False))
        t0 = time.perf_counter()
        x = torch.from_numpy(np.asarray(data[index], dtype=np.float32) / 65535.0).to(device)
        sync()
        reads.append(time.perf_counter() - t0)
    try:
        from sgc.nets import ScoreUNet
        net = ScoreUNet(num_classes=2, image_size=256, channels=channels).to(device)
        consumer = f"sgc.nets.ScoreUNet(channels={channels}) on {device.type}"
        step = lambda x, y: net(x, torch.rand(len(x), device=device), y)  # noqa: E731
    except ImportError:
        net = torch.nn.Sequential(torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.SiLU(),
                                  torch.nn.Conv2d(channels, 1, 3, padding=1)).to(device)
        consumer, step = f"2-layer conv stand-in on {device.type}", (lambda x, y: net(x))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    y = torch.randint(0, 2, (batch,), device=device)
    steps = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        loss = (step(x, y) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if k:  # first step warms up allocators
            steps.append(time.perf_counter() - t0)
    return {"batch": batch, "cache_images": n_images, "read_batch_s": float(np.median(reads)),
            "train_step_s": float(np.median(steps)), "consumer": consumer, "torch_threads": torch.get_num_threads()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images for the end-to-end cache build")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (parallel run)")
    parser.add_argument("--batch", type=int, default=8, help="batch size for the read vs step comparison")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--channels", type=int, default=16, help="width of the ScoreUNet consumer")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks" / "cache.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files, kind = source_dicoms(tmp)
        stages = time_stages(files, args.repeats)
        serial = time_cache(files, args.images, 1, tmp / "serial")
        parallel = time_cache(files, args.images, args.workers, tmp / "parallel")
        io = time_read_vs_step(Path(serial["path"]), 512, args.batch, args.repeats, args.channels)
    per_image = stages["decode_s"] + stages["preprocess_s"]
    # file names relative to the data folder (or the temporary one): no path of this machine in the JSON
    names = [f.relative_to(_test_data()).as_posix() if f.is_relative_to(_test_data()) else f.name for f in files]
    report = {"source": kind, "files": names, "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "stages": stages, "images_per_s_per_core_stages": 1 / per_image,
              "cache_serial": serial, "cache_parallel": parallel, "read_vs_step": io,
              "read_faster_than_step": io["read_batch_s"] < io["train_step_s"]}
    for run in (serial, parallel):
        run.pop("path")
    measures = [
        ("decode (read_dicom), s/image", stages["decode_s"], ".3f"),
        ("preprocess to 256x256, s/image", stages["preprocess_s"], ".3f"),
        ("preprocess to 256x256 + CLAHE, s/image", stages["preprocess_clahe_s"], ".3f"),
        ("decode + preprocess, images/s per core", 1 / per_image, ".2f"),
        ("build_cache, 1 worker, images/s", serial["images_per_s"], ".2f"),
        (f"build_cache, {parallel['workers']} workers, images/s", parallel["images_per_s"], ".2f"),
        ("  ... per core", parallel["images_per_s_per_core"], ".2f"),
        (f"memmap read of a random batch of {io['batch']}, s", io["read_batch_s"], ".5f"),
        ("training step (fwd+bwd), s", io["train_step_s"], ".3f"),
        ("  consumer", io["consumer"], ""),
    ]
    print_table([{"measure": m, "value": format(v, f)} for m, v, f in measures],
                [Column("measure", "measure"), Column("value", "value", align="right")],
                title=f"source: {kind}, {len(files)} file(s); {os.cpu_count()} cores")
    print(f"read faster than step: {report['read_faster_than_step']} "
          f"({io['train_step_s'] / max(io['read_batch_s'], 1e-9):.0f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
