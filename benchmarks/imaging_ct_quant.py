"""Benchmark: imaging.ct_quant time on the example CTs, and bundle inference memory vs ROI / sw_batch.

Run by hand: `python benchmarks/imaging_ct_quant.py [--bundle-mem]`. Prints the machine, the time of
ct_quant on the NIfTI and DICOM example cases against the 10 s target, the lung Dice against the
TotalSegmentator reference, and (with --bundle-mem) the peak memory of spleen-bundle inference with
random weights for a few ROI / sw_batch settings, which is what [imaging] roi_size / sw_batch_size bound.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 10.0


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {gpu}"


def ct_quant_times(repeats: int = 3) -> None:
    from medagent.tools.config import Settings
    from medagent.tools.imaging import TOOLS
    from medagent.tools.intake import load_case
    from medagent.tools.registry import AttachmentArgs, ToolContext

    tool = next(t for t in TOOLS if t.name == "imaging.ct_quant")
    for case_file in ("ct_nifti_case.json", "ct_dicom_case.json"):
        loaded = load_case(ROOT / "examples" / case_file)
        times = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as out:
                ctx = ToolContext(loaded.case, loaded.case_dir, Path(out) / "artifacts", Settings())
                start = time.perf_counter()
                tool.run(AttachmentArgs(attachment="ct"), ctx)
                times.append(time.perf_counter() - start)
        best = min(times)
        print(f"ct_quant {case_file}: best {best:.2f} s of {repeats} (target {TARGET_S:.0f} s, ratio {best / TARGET_S:.2f})")


def lung_dice() -> None:
    from medagent.specialists.imaging.ctquant import dice, quantify

    ct = nib.load(str(ROOT / "examples" / "data" / "ct_small.nii.gz"))
    reference = np.asarray(nib.load(str(ROOT / "tests" / "data" / "imaging" / "example_seg.nii.gz")).dataobj)
    result = quantify(np.asarray(ct.dataobj, dtype=np.float32), tuple(float(z) for z in ct.header.get_zooms()))
    lungs = np.isin(reference, (10, 11, 12, 13, 14))
    print(
        f"lung Dice vs TotalSegmentator (lobes 10,11,13,14 merged; 12 absent): {dice(result.masks['lungs'], lungs):.3f}; "
        f"volume {result.volumes_ml['lungs']:.1f} mL vs {lungs.sum() * 27 / 1000:.1f} mL"
    )


def bundle_memory() -> None:
    import resource

    import torch
    from medagent.specialists.imaging.bundle import build_network, load_bundle, segment
    from monai.bundle import ConfigParser

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "spleen_ct_segmentation"
        shutil.copytree(ROOT / "tests" / "data" / "imaging" / "spleen_ct_segmentation", root)
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "inference.json"))
        (root / "models").mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
        bundle = load_bundle(root)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        network = build_network(bundle, device=device)
        image = ROOT / "examples" / "data" / "ct_small.nii.gz"
        for roi, batch in (((64, 64, 32), 1), ((96, 96, 96), 1), ((96, 96, 96), 4)):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            segment(bundle, image, network, device=device, roi_size=roi, sw_batch_size=batch)
            seconds = time.perf_counter() - start
            if device == "cuda":
                peak = f"GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
            else:
                peak = f"process max RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
            print(f"spleen bundle roi {roi} sw_batch {batch}: {seconds:.1f} s, {peak}")


if __name__ == "__main__":
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--bundle-mem", action="store_true", help="also measure bundle inference memory")
    parsed = options.parse_args()
    print("machine:", machine())
    ct_quant_times()
    lung_dice()
    if parsed.bundle_mem:
        bundle_memory()
