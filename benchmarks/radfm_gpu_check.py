"""RadFM GPU check (run by hand on a CUDA machine): tiny config in bf16, forward + generate, peak memory.

Prints the machine, the tiny model's forward/generate time and peak CUDA memory, and the estimated memory of the
full-size RadFM per dtype (from its parameter count, built on the meta device). Never part of CI.
    python benchmarks/radfm_gpu_check.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from medagent.specialists.radfm.infer import answer, encode_prompt
    from medagent.specialists.radfm.load import DTYPES, load_radfm, memory_needed, parameter_count
    from medagent.specialists.radfm.model import RadFMConfig
    from medagent.specialists.radfm.preprocess import image_to_tensor, stack_images, volume_to_tensor
    from medagent.specialists.radfm.tiny import build_tiny

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check")
        return 1
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    full = parameter_count(RadFMConfig())
    print(f"full-size RadFM: {full:,} parameters")
    for dtype in DTYPES:
        print(
            f"  {dtype}: weights {full * DTYPES[dtype].itemsize / 2**30:.1f} GiB, "
            f"estimate with activations {memory_needed(full, dtype) / 2**30:.1f} GiB"
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny(Path(tmp) / "tiny", ["is there a mass yes no left right lung brain"])
        torch.cuda.reset_peak_memory_stats()
        bundle = load_radfm(folder, dtype="bf16", device="cuda")
        size = bundle.config.vision.image_size
        rng = np.random.default_rng(0)
        picture = image_to_tensor((rng.random((96, 80)) * 255).astype(np.uint8), size)
        volume = volume_to_tensor(rng.random((40, 40, 30)) * 2000 - 1000, size, hounsfield=True)
        lang_x = encode_prompt(bundle, "is there a mass", 2).cuda()
        vision_x = stack_images([picture, volume]).cuda()
        with torch.no_grad():
            logits = bundle.model(lang_x, vision_x).logits
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            logits = bundle.model(lang_x, vision_x).logits
        torch.cuda.synchronize()
        forward_ms = (time.perf_counter() - start) * 1000
        assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all(), "non-finite bf16 logits"
        start = time.perf_counter()
        text = answer(bundle, "is there a mass", [picture, volume], max_new_tokens=16)
        generate_ms = (time.perf_counter() - start) * 1000
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(
            f"tiny bf16: logits {tuple(logits.shape)} finite, forward {forward_ms:.1f} ms, "
            f"generate(16) {generate_ms:.1f} ms -> {text!r}, peak {peak:.1f} MiB"
        )
        # Peak memory of one ViT+perceiver pass at the full vision size (512x512x64), bf16: the activation share.
        from medagent.specialists.radfm.model import RadFMEmbedding

        config = RadFMConfig()
        del bundle, logits
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.device("cuda"):
            embedding = RadFMEmbedding(config).to(torch.bfloat16).eval()
        weights = torch.cuda.memory_allocated() / 2**30
        scan = torch.rand(1, 1, 3, 512, 512, 64, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            tokens = embedding.visual_tokens(scan)
        torch.cuda.synchronize()
        print(
            f"full-size vision side bf16: tokens {tuple(tokens.shape)}, weights {weights:.2f} GiB "
            f"(incl. the 32000x5120 text table), peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
            "for one 512x512x64 scan"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
