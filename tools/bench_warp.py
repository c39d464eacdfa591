"""Go-with-the-Flow noise warping benchmark.

1. Speed: warped frames per second with 4 channels on one CPU thread at 256x256, 512x512 and
   1024x1024 output, warping on grids upsampled x1, x2 and x4 (and on CUDA when available). The
   flow is a smooth random field (contraction and expansion everywhere); a frame is one
   ``NoiseWarper.step`` including the pooled read-out. Target: >= 24 frames/s at 512x512, x1.
2. Gaussianity per flow kind (the paper's Table 1 protocol): over every frame, the worst mean,
   variance, Kolmogorov-Smirnov p-value and Moran's I; the lag-1 correlation along the rounded
   backward flow at degradation 0, on the warp grid (``corr_grid``: each pixel moves by its rounded
   flow plus its carried sub-pixel remainder, so the flow rounded on its own only partly predicts it)
   and on the pooled output (``corr_out``: with upsampling the output moves by sub-pixel amounts, so
   the rounded flow only partly aligns the blocks); and the share of fresh pixels per step.

    python tools/bench_warp.py [--quick] [--json bench_warp.json]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchlib import print_table, target, write_json  # noqa: E402

from videogen.noise.flow import camera_flows, drag_flows, invert_flow, resize_flow  # noqa: E402
from videogen.noise.warp import NoiseWarper, flow_correlation, gaussianity, torch_threads  # noqa: E402
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, DragSpec, PointSpec  # noqa: E402

CHANNELS = 4


def smooth_flow(size: tuple[int, int], amplitude: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random flow of about ``amplitude`` pixels and its inverse (backward) flow.

    Made (and inverted) on a grid of at most 256 pixels a side, then resized to ``size``.
    """
    small = (min(size[0], 256), min(size[1], 256))
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 2, 6, 6, generator=g) * amplitude * small[1] / size[1]
    forward = F.interpolate(coarse, size=small, mode="bicubic", align_corners=True)[0]
    return resize_flow(forward, size), resize_flow(invert_flow(forward), size)


def time_steps(size: int, upsample: int, frames: int, device: str) -> float:
    """Frames per second of ``NoiseWarper.step`` (read-out included) at ``size`` x ``size`` output."""
    warper = NoiseWarper(CHANNELS, size, size, seed=0, upsample=upsample, degradation=0.5, device=device)
    forward, backward = smooth_flow(warper.grid_size, amplitude=0.02 * size * upsample)
    forward, backward = forward.to(device), backward.to(device)
    warper.step(forward, backward)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(frames):
        warper.step(forward, backward)
    if device == "cuda":
        torch.cuda.synchronize()
    return frames / (time.perf_counter() - start)


def speed_table(quick: bool) -> list[dict]:
    configs = [(256, 1), (256, 2), (256, 4), (512, 1), (512, 2)]
    if not quick:
        configs += [(512, 4), (1024, 1), (1024, 2), (1024, 4)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for size, upsample in configs:
            grid = size * upsample
            frames = max(2, min(30, int(2**22 / grid**2 * (1 if quick else 3))))
            fps = time_steps(size, upsample, frames, device)
            row = {"device": device, "size": f"{size}x{size}", "upsample": upsample, "grid": f"{grid}x{grid}"}
            rows.append({**row, "frames": frames, "fps": fps, "ms_per_frame": 1000.0 / fps})
            print(f"  {device} {size}x{size} x{upsample}: {fps:.1f} frames/s", flush=True)
    return rows


def _affine(scale: float, degrees: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    move = CameraMoveSpec(zoom=scale - 1.0, rotate=degrees)
    return next(camera_flows(CameraSpec(moves=[move]), (size, size), 2))


def _translation(dx: float, dy: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    forward = torch.tensor([dx, dy])[:, None, None].expand(2, size, size).clone()
    return forward, -forward


def flow_kinds(size: int, frames: int) -> dict[str, Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]]:
    """Per kind: a function giving the ``frames - 1`` (forward, backward) flows on a ``size`` grid."""
    fixed = {
        "translation": _translation(3.3, -1.7, size),
        "zoom_in": _affine(1.03, 0.0, size),
        "zoom_out": _affine(0.97, 0.0, size),
        "rotation": _affine(1.0, 2.0, size),
        "random_smooth": smooth_flow((size, size), amplitude=0.04 * size, seed=1),
    }
    kinds = {name: (lambda pair=pair: itertools.repeat(pair, frames - 1)) for name, pair in fixed.items()}
    moves = [CameraMoveSpec(frames=frames // 2, pan=0.01, zoom=0.02), CameraMoveSpec(rotate=3, tilt=0.01)]
    kinds["camera_combo"] = lambda: camera_flows(CameraSpec(moves=moves), (size, size), frames)
    box = [PointSpec(0.2, 0.3), PointSpec(0.5, 0.3), PointSpec(0.5, 0.6), PointSpec(0.2, 0.6)]
    drag = DragSpec(polygon=box, path=[PointSpec(0.35, 0.45), PointSpec(0.7, 0.6)], scale=1.4, rotate=25)
    kinds["drag"] = lambda: drag_flows([drag], (size, size), frames)
    return kinds


def gaussianity_table(quick: bool) -> list[dict]:
    size, frames = (64, 12) if quick else (128, 24)
    rows = []
    for upsample in (1, 2):
        for name, flows in flow_kinds(size * upsample, frames).items():
            warper = NoiseWarper(CHANNELS, size, size, seed=7, upsample=upsample, degradation=0.0)
            stats, out_corr, grid_corr, fresh = [gaussianity(warper.noise())], [], [], []
            previous, previous_grid = warper.noise(), warper.grid_noise
            for forward, backward in flows():
                current = warper.step(forward, backward)
                stats.append(gaussianity(current))
                pooled_back = F.avg_pool2d(backward.clamp(-size, size)[None], upsample)[0] / upsample
                out_corr.append(flow_correlation(previous, current, pooled_back))
                grid_corr.append(flow_correlation(previous_grid, warper.grid_noise, backward))
                fresh.append(float(warper.fresh_mask.float().mean()))
                previous, previous_grid = current, warper.grid_noise
            rows.append(
                {
                    "flow": name,
                    "upsample": upsample,
                    "frames": len(stats),
                    "max_abs_mean": max(abs(s.mean) for s in stats),
                    "max_abs_var_err": max(abs(s.var - 1.0) for s in stats),
                    "min_ks_p": min(s.ks_p for s in stats),
                    "max_ks_d": max(s.ks for s in stats),
                    "max_abs_moran_i": max(abs(s.moran_i) for s in stats),
                    "min_moran_p": min(s.moran_p for s in stats),
                    "corr_grid": sum(grid_corr) / len(grid_corr),
                    "corr_out": sum(out_corr) / len(out_corr),
                    "fresh_share": sum(fresh) / len(fresh),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute on 2 cores")
    parser.add_argument("--json", default=None, help="write results and targets here")
    args = parser.parse_args()

    with torch_threads(1):
        print("speed (one CPU thread)")
        speed = speed_table(args.quick)
        print("gaussianity")
        stats = gaussianity_table(args.quick)
    print_table("frames per second, 4 channels, one CPU thread", speed)
    print_table("Gaussianity of every warped frame (degradation 0)", stats)

    fps_512 = next(r["fps"] for r in speed if r["device"] == "cpu" and r["size"] == "512x512" and r["upsample"] == 1)
    targets = {
        "fps_512x512_x1_one_cpu_thread": target(fps_512, ">= 24"),
        "worst_ks_p_all_flows": target(min(r["min_ks_p"] for r in stats), ">= 0.0001"),
        "worst_abs_moran_i_all_flows": target(max(r["max_abs_moran_i"] for r in stats), "<= 0.02"),
    }
    cuda = [r for r in speed if r["device"] == "cuda" and r["size"] == "1024x1024" and r["upsample"] == 1]
    if cuda:
        targets["ms_per_frame_1024x1024_x1_cuda"] = target(cuda[0]["ms_per_frame"], "<= 41.7")
    write_json(args.json, {"speed": speed, "gaussianity": stats, "quick": args.quick}, targets)


if __name__ == "__main__":
    main()
