"""Write a contact sheet PNG (every n-th frame side by side, one row per video) of rendered videos.

python tools/contact_sheet.py out/demo.mp4 [more.mp4 ...] --out docs/images/demo.png [--every 4] [--scale 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videogen.io.contact_sheet import contact_sheet, write_png  # noqa: E402
from videogen.io.video_reader import iter_frames  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--every", type=int, default=4, help="take every n-th frame (default 4)")
    parser.add_argument("--scale", type=int, default=2, help="pixel repetition factor (default 2)")
    args = parser.parse_args()
    videos = [np.stack(list(iter_frames(Path(v)))) for v in args.videos]
    path = write_png(args.out, contact_sheet(videos, args.every, args.scale))
    print(f"wrote {path} ({len(videos)} videos, every {args.every}th frame)")


if __name__ == "__main__":
    main()
