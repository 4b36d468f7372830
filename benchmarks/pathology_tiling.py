"""Pathology tiling: tiles/s and peak memory of zero-shot classification of large images on CPU.

    .venv/bin/python benchmarks/pathology_tiling.py [--sizes 2048 4096 8192] [--batch 16] [--threads 2]

A tiny random-weight KEP-32 (the real architecture and code path: loader, 224 px transform, tiling,
prompt ensemble, top-k pooling) classifies synthetic H&E-like images of each size, 512 px tiles,
every tissue tile scored (a quarter of each image is glass and skipped). Each size runs in a fresh
process, so `peak extra` is that process's peak RSS during classification above its RSS before it
(the decoded image is already in memory then). Bounded memory means: the extra stays flat as the
image grows (tiles are cropped and encoded one batch at a time), and grows with the batch size only.
The decoded RGB image itself (3 bytes a pixel) is printed beside it; images above
`[pathology] max_pixels` are refused from the header before decoding.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_checkpoint(folder: Path) -> Path:
    """A tiny KEP-32 checkpoint folder (224 px input, narrow towers) written as training writes one."""
    import torch

    from medagent.specialists.pathology.labels import BUILTIN
    from medagent.specialists.pathology.load import CONFIG_NAME
    from medagent.specialists.pathology.model import KEP, BertShape, KEPConfig, published_state_dict
    from medagent.training.pathology.recipe import build_tokenizer

    corpus = [prompt for label_set in BUILTIN.values() for group in label_set.prompts() for prompt in group]
    tokenizer = build_tokenizer(corpus, folder, vocab_size=400)
    bert = BertShape(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    config = KEPConfig(variant="kep32", embed_dim=32, image_size=224, vit_width=64, vit_layers=2, vit_heads=2,
                       vit_patch=32, bert=bert, text_hidden=32, head_hidden=32, max_text_length=48)  # fmt: skip
    torch.manual_seed(0)
    torch.save({"state_dict": published_state_dict(KEP(config))}, folder / "pytorch_model.bin")
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict()))
    return folder


def slide(size: int):
    """A size x size H&E-like image: a 512 px random texture repeated, the left quarter glass."""
    from PIL import Image

    rng = np.random.default_rng(0)
    texture = np.clip(np.array((236, 170, 200)) + rng.normal(0, 25, (512, 512, 3)), 0, 255).astype(np.uint8)
    texture[rng.random((512, 512)) < 0.08] = (80, 45, 125)  # haematoxylin specks: tissue, not glass
    tile = Image.fromarray(texture)
    image = Image.new("RGB", (size, size), (246, 246, 246))
    for y in range(0, size, 512):
        for x in range(size // 4 // 512 * 512, size, 512):
            image.paste(tile, (x, y))
    return image


def measure(checkpoint: str, size: int, batch: int, threads: int, queue) -> None:
    import torch

    from medagent.specialists.pathology.infer import KEPClassifier
    from medagent.specialists.pathology.labels import BUILTIN
    from medagent.specialists.pathology.load import load_kep
    from medagent.specialists.pathology.preprocess import TilingOptions

    torch.set_num_threads(threads)
    classifier = KEPClassifier(load_kep(Path(checkpoint)))
    classifier.label_embeddings(BUILTIN["crc"])  # text side cached, as in a running agent
    image = slide(size)
    before_rss, before_peak = rss_mb(), peak_mb()
    options = TilingOptions(tile_size=512, max_tiles=10**6, batch_size=batch, max_pixels=size * size)
    start = time.perf_counter()
    result = classifier.classify(image, BUILTIN["crc"], options, top_tiles=3)
    seconds = time.perf_counter() - start
    extra = max(0.0, peak_mb() - max(before_rss, before_peak))
    queue.put({"size": size, "batch": batch, "tiles": result.tiles_scored, "grid": result.grid_tiles,
               "seconds": seconds, "extra_mb": extra, "image_mb": size * size * 3 / 2**20})  # fmt: skip


def run(checkpoint: Path, size: int, batch: int, threads: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(str(checkpoint), size, batch, threads, queue))
    process.start()
    row = queue.get()
    process.join()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{args.threads} torch threads; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="medagent-path-bench-") as folder:
        checkpoint = make_checkpoint(Path(folder))
        rows = [run(checkpoint, size, args.batch, args.threads) for size in args.sizes]
        largest = args.sizes[-1]
        rows += [run(checkpoint, largest, batch, args.threads) for batch in (args.batch // 4 or 1, args.batch * 4)]
    print(f"{'image':>11} {'batch':>5} {'tiles':>9} {'s':>7} {'tiles/s':>8} {'image MB':>9} {'peak extra MB':>14}")
    for row in rows:
        print(f"{row['size']:>5}x{row['size']:<5} {row['batch']:>5} {row['tiles']:>4}/{row['grid']:<4} "
              f"{row['seconds']:>7.2f} {row['tiles'] / row['seconds']:>8.1f} {row['image_mb']:>9.0f} "
              f"{row['extra_mb']:>14.1f}")  # fmt: skip
    base, big = rows[0], rows[len(args.sizes) - 1]
    print(f"ratios ({big['size']} vs {base['size']} px, batch {args.batch}): pixels x{(big['size'] / base['size']) ** 2:.0f}, "
          f"tiles x{big['tiles'] / base['tiles']:.1f}, tiles/s x{(big['tiles'] / big['seconds']) / (base['tiles'] / base['seconds']):.2f}, "
          f"peak extra memory x{big['extra_mb'] / max(base['extra_mb'], 1e-6):.2f}")  # fmt: skip
    small_b, large_b = rows[-2], rows[-1]
    print(f"batch {small_b['batch']} -> {large_b['batch']} at {largest} px: peak extra {small_b['extra_mb']:.1f} -> "
          f"{large_b['extra_mb']:.1f} MB, tiles/s {small_b['tiles'] / small_b['seconds']:.1f} -> "
          f"{large_b['tiles'] / large_b['seconds']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
