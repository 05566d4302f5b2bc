"""Benchmark: time per training step in NCHW against channels_last, per model, alternating in one process.

What `TrainConfig(channels_last="auto")` rests on (kaggle_tli.models.layout): a timm model, a random batch, AdamW,
the two layouts stepped in turn so both see the same load; the median after a warm-up step. On a GPU pass
`--device cuda` (the steps then run under fp16 autocast, as the trainer's).

    kaggle-tli bench layout --models resnet18 mobilenetv3_small_100 --image-size 64 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import timm
import torch
import torch.nn.functional as F

from kaggle_tli.bench._report import markdown_table, write_table

__all__ = ["layout_step_times", "main"]

MODELS = ("resnet18", "mobilenetv3_small_100", "efficientnet_b0", "convnext_nano")


def layout_step_times(arch: str, *, image_size: int, batch_size: int, steps: int, device: str) -> dict:
    """Median seconds per training step of `arch` in each layout, the two stepped alternately."""
    dev = torch.device(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    runs = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, num_classes=10).to(dev, memory_format=layout)
        runs[layout] = (model, torch.optim.AdamW(model.parameters(), 1e-3), x.contiguous(memory_format=layout), [])
    for step in range(steps + 1):
        for model, opt, xs, times in runs.values():
            start = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
                loss = F.cross_entropy(model(xs), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step allocates and picks kernels
                times.append(time.perf_counter() - start)
    nchw, nhwc = (statistics.median(r[3]) for r in runs.values())
    return {"model": arch, "nchw_ms": 1000 * nchw, "channels_last_ms": 1000 * nhwc, "ratio": nhwc / nchw}


def main(argv: list[str] | None = None) -> int:
    """Command line: the table on stdout, and layout.csv / layout.md in --out."""
    parser = argparse.ArgumentParser(prog="kaggle-tli bench layout", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per layout, after one untimed")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="bench_out/layout")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frame = pd.DataFrame([layout_step_times(m, image_size=args.image_size, batch_size=args.batch_size,
                                            steps=args.steps, device=args.device) for m in args.models])
    formats = {"nchw_ms": ".0f", "channels_last_ms": ".0f", "ratio": ".2f"}
    note = f"{args.device}, {torch.get_num_threads()} thread(s), batch {args.batch_size} at {args.image_size} px"
    write_table(frame, args.out, "layout", title="Training step: NCHW against channels_last", notes=[note],
                formats=formats)
    print(markdown_table(frame, formats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
