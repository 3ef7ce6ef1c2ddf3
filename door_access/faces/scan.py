"""Where the face detector looks in each frame: all of it every `detection.full_scan_every`
frames, and in between only a padded region around each face found in the frames just before.

HOG's cost is proportional to the pixels it scans: a whole 640x360 frame takes ~17 ms on
one core, the region around a 100 px face a few. A region is searched by the same detector
with the same upsample on the same shrunk frame, so a face that is already tracked is found
at the same sensitivity; a face that appears anywhere else is found at the next full scan,
within `full_scan_every` frames. Pure logic: no dlib, no OpenCV.
"""

from __future__ import annotations

from door_access.core import Box

# Each side of a face is searched this far beyond it, as a fraction of its size: the box comes
# from a frame 3-6 frames earlier. On the Hamilton clip with full scans every 4 frames, 0.5 finds
# 144 of the 154 faces a full scan of every frame finds (the rest: faces in the two frames after
# the full scan that first saw them, faces seen first between full scans, and HOG flicker).
REGION_PAD = 0.5

SKIP = 2  # a frame between full scans does not wait for the results of the last this many frames

Region = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom excluded), pixels


def is_full_scan(seq: int, every: int) -> bool:
    """Whether frame number `seq` (in the order frames are taken) gets a whole-frame scan."""
    return every <= 1 or seq % every == 0


def searched_after(seq: int, every: int) -> list[int]:
    """The earlier frames whose faces frame `seq` (between full scans) searches around: the
    `every` frames before the last SKIP. Those two may still be in the other lane, one of them a
    full scan that costs three or four region searches: not waiting for them keeps both lanes
    busy. So a face that appears is found at a full scan and searched around from the third
    frame after it (its track, and its first encoding, start at the full scan). A fixed rule,
    so the faces found never depend on how the lanes are timed."""
    return list(range(max(0, seq - every - SKIP), max(0, seq - SKIP)))


def regions_around(boxes: list[Box], scale: float, pad: float, width: int, height: int) -> list[Region]:
    """The regions of a frame shrunk by `scale` (to `width` x `height`) to search for `boxes` (in
    the full frame's pixels): each box shrunk, grown by `pad` of its width and height on every
    side, clipped to the frame; regions that overlap are merged into their bounding region, so
    two faces side by side are one search and never found twice."""
    regions = []
    for b in boxes:
        left, top, w, h = b.x / scale, b.y / scale, b.w / scale, b.h / scale
        r = (max(0, round(left - pad * w)), max(0, round(top - pad * h)),
             min(width, round(left + w + pad * w)), min(height, round(top + h + pad * h)))
        if r[0] < r[2] and r[1] < r[3]:
            regions.append(r)
    i = 0
    while i < len(regions):
        a = regions[i]
        j = next((j for j in range(i + 1, len(regions)) if _overlap(a, regions[j])), None)
        if j is None:
            i += 1
            continue
        b = regions.pop(j)
        regions[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
        i = 0  # the grown region may now overlap one already passed
    return regions


def _overlap(a: Region, b: Region) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def to_frame(found: list[tuple[int, int, int, int]], region: Region) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) rectangles found inside `region`, in the pixels of the frame it was cut from."""
    x, y = region[0], region[1]
    return [(left + x, top + y, right + x, bottom + y) for left, top, right, bottom in found]
