"""Join mp4 segments into one video without re-encoding (stream copy).

Every worker encodes its own frames into a segment with the same codec, size, frame rate and
time base. The joined file copies their packets in order, shifting each segment's timestamps
by the duration of the segments before it, so no frame is decoded or encoded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av

from videogen.errors import MediaError
from videogen.io.atomic import commit, discard, partial_path


def _stream_signature(stream) -> tuple:
    ctx = stream.codec_context
    return (ctx.name, ctx.width, ctx.height, str(ctx.pix_fmt), stream.time_base, stream.average_rate)


def concat_segments(segments: Sequence[Path], target: Path) -> int:
    """Stream-copy ``segments`` (in order) into ``target`` atomically; returns the frame count."""
    if not segments:
        raise MediaError(f"{target}: no segments to join")
    target = Path(target)
    partial = partial_path(target)
    discard(partial)
    signature = None
    frames = 0
    try:
        with av.open(str(partial), mode="w", format="mp4") as out:
            out_stream = None
            offset = 0
            for segment in segments:
                try:
                    source = av.open(str(segment))
                except (av.error.FFmpegError, OSError) as error:
                    raise MediaError(f"{segment}: unreadable segment ({error})") from None
                with source:
                    in_stream = source.streams.video[0]
                    if signature is None:
                        signature = _stream_signature(in_stream)
                        out_stream = out.add_stream_from_template(in_stream)
                    elif _stream_signature(in_stream) != signature:
                        raise MediaError(f"{segment}: codec, size, rate or time base differ from the first segment")
                    last_end = offset
                    for packet in source.demux(in_stream):
                        if packet.dts is None:
                            continue
                        end = packet.pts + (packet.duration or 0)
                        packet.pts += offset
                        packet.dts += offset
                        last_end = max(last_end, end + offset)
                        packet.stream = out_stream
                        out.mux(packet)
                        frames += 1
                    offset = last_end
        commit(partial, target)
    except BaseException:
        discard(partial)
        raise
    return frames
