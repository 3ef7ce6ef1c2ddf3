"""Matching embeddings against the gallery: 1:K identification and 1:1 verification.

Embeddings are unit vectors, so squared L2 distance is `2 - 2 * dot`. A person is matched by the
normalised mean of their photos' embeddings (their centroid), so one matrix product with the
centroids gives each probe's distance to each person. Measured on LFW (`eval --open-set --enroll
3`), the centroid recognises more people than the closest of their photos at the same threshold
and lets in no more strangers: noise in single photos averages out, and one odd photo no longer
widens whom a person matches. With one photo a person, it is that photo.

The door's rule: the closest person, if under the threshold and, with a margin, at least that
much closer than the second-closest person. A face halfway between two enrolled people is
nobody rather than a guess; measured on LFW (`eval --open-set`), the margin turns away more
strangers than the same loss of recognitions buys by lowering the threshold.

The photo matrix is kept sorted by person, so each person's photos are one row range
(for `np.add.reduceat`, which gives the centroids). Building it is a sort plus one pass (a whole site, 100,000
people, in well under a second); a photo added or removed while the door runs is spliced
into a new matrix (one O(rows) copy) instead of rebuilding from the folder. Every change
builds a new `_Index` and swaps one reference, so `identify` on the decider thread always
sees a consistent matrix without a lock.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from door_access.core import EMBEDDING_SIZE, Match

if TYPE_CHECKING:
    from door_access.recognition.gallery import Gallery


@dataclass(frozen=True)
class _Index:
    """One consistent snapshot of the gallery, rows sorted by person."""

    people: list[str]  # sorted
    embeddings: np.ndarray  # (rows, 128) float32, rows grouped by person in `people` order
    starts: np.ndarray  # first row of each person
    photos: list  # the photo (path) of each row, for incremental removal
    centroids: np.ndarray  # (people, 128) float32: each person's normalised mean embedding


def _snapshot(people: list[str], embeddings: np.ndarray, starts: np.ndarray, photos: list) -> _Index:
    """An `_Index` with its centroids (one pass over the rows, like every change's copy)."""
    if not people:
        return _Index([], embeddings, starts, photos, np.zeros((0, EMBEDDING_SIZE), np.float32))
    sums = np.add.reduceat(embeddings.astype(np.float64), starts, axis=0)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return _Index(people, embeddings, starts, photos, sums.astype(np.float32))


def _index(names: list[str], photos: list, embeddings: np.ndarray) -> _Index:
    """Sort rows by person: unique names sorted once, then a stable integer sort of the rows."""
    people = sorted(set(names))
    if not people:
        return _snapshot([], np.zeros((0, EMBEDDING_SIZE), np.float32), np.zeros(0, np.intp), [])
    position = {p: i for i, p in enumerate(people)}
    owner = np.fromiter((position[n] for n in names), np.intp, len(names))
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=len(people))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp)
    return _snapshot(people, np.ascontiguousarray(embeddings[order], np.float32), starts,
                     [photos[i] for i in order])


_SPLICE_MAX = 8  # changes up to this many photos are spliced in; more re-sort the matrix once


class Recognizer:
    def __init__(self, gallery: Gallery, threshold: float, margin: float = 0.0):
        self.threshold = threshold
        self.margin = margin
        self._index = _index(list(gallery.names), list(gallery.photos), np.asarray(gallery.embeddings, np.float32))
        self._write = threading.Lock()  # add/remove from the watcher and a reload may race; identify never waits

    @property
    def people(self) -> list[str]:
        return self._index.people

    @property
    def photo_count(self) -> int:
        return len(self._index.photos)

    @property
    def matrix_bytes(self) -> int:
        return self._index.embeddings.nbytes + self._index.centroids.nbytes

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, people) matrix: each probe's distance to each person (their centroid)."""
        return _distances(self._index, embeddings)

    def identify(self, embeddings: np.ndarray) -> list[Match]:
        index = self._index  # one snapshot: the watcher may swap in another meanwhile
        per_person = _distances(index, embeddings)
        if per_person.shape[1] == 0:
            return [Match(None, float("inf"), None) for _ in range(len(per_person))]
        # the closest and second-closest person of each probe, without sorting every person
        order = (np.argpartition(per_person, 1, axis=1)[:, :2] if per_person.shape[1] > 1
                 else np.zeros((len(per_person), 1), np.intp))
        out = []
        for row, (j, *rest) in zip(per_person, order):
            d = float(row[j])
            second = float(row[rest[0]]) if rest else float("inf")
            accept = d <= self.threshold and second - d >= self.margin
            out.append(Match(index.people[j] if accept else None, d, index.people[j]))
        return out

    def verify(self, embedding: np.ndarray, name: str) -> tuple[float, bool]:
        """Distance of one face to the claimed person, and whether it is a match."""
        index = self._index
        j = bisect.bisect_left(index.people, name)
        if j == len(index.people) or index.people[j] != name:
            raise KeyError(name)
        dot = float(index.centroids[j] @ np.asarray(embedding, np.float32).ravel())
        d = float(np.sqrt(max(0.0, 2.0 - 2.0 * dot)))
        return d, d <= self.threshold

    # ---- incremental changes (hot enroll) ---------------------------------------------------

    def add(self, name: str, photo, embedding: np.ndarray) -> None:
        """Enroll one more photo of `name` (new or known person): one row spliced in, O(rows)."""
        embedding = np.asarray(embedding, np.float32).reshape(1, EMBEDDING_SIZE)
        with self._write:
            old = self._index
            j = bisect.bisect_left(old.people, name)
            known = j < len(old.people) and old.people[j] == name
            # insert at the end of the person's range (or where the new person sorts)
            if known:
                row = int(old.starts[j + 1]) if j + 1 < len(old.people) else len(old.photos)
            else:
                row = int(old.starts[j]) if j < len(old.people) else len(old.photos)
            people = old.people if known else old.people[:j] + [name] + old.people[j:]
            starts = old.starts.copy()
            if known:
                starts[j + 1:] += 1
            else:
                starts = np.concatenate((starts[:j], [row], starts[j:] + 1)).astype(np.intp)
            self._index = _snapshot(people, np.insert(old.embeddings, row, embedding, axis=0), starts,
                                    old.photos[:row] + [photo] + old.photos[row:])

    def remove(self, photo) -> bool:
        """Withdraw one photo (and its person, when it was their last); False if it was not enrolled."""
        with self._write:
            old = self._index
            try:
                row = old.photos.index(photo)  # one O(rows) scan, like the copy below
            except ValueError:
                return False
            j = int(np.searchsorted(old.starts, row, side="right")) - 1
            end = int(old.starts[j + 1]) if j + 1 < len(old.people) else len(old.photos)
            starts = old.starts.copy()
            people = old.people
            if end - int(old.starts[j]) == 1:  # the person's last photo
                people = old.people[:j] + old.people[j + 1:]
                starts = np.concatenate((starts[:j], starts[j + 1:] - 1)).astype(np.intp)
            else:
                starts[j + 1:] -= 1
            self._index = _snapshot(people, np.delete(old.embeddings, row, axis=0), starts,
                                    old.photos[:row] + old.photos[row + 1:])
            return True

    def apply(self, removed: list, added: list[tuple[str, object, np.ndarray]]) -> None:
        """A folder change: a few photos are spliced in one by one, many in one re-sort of all rows."""
        if len(removed) + len(added) <= _SPLICE_MAX:
            for photo in removed:
                self.remove(photo)
            for name, photo, embedding in added:
                self.add(name, photo, embedding)
            return
        with self._write:
            old = self._index
            gone = set(removed)
            keep = [i for i, p in enumerate(old.photos) if p not in gone]
            owners = np.repeat(np.arange(len(old.people)), np.diff(np.append(old.starts, len(old.photos))))
            names = [old.people[o] for o in owners[keep]] + [n for n, _, _ in added]
            photos = [old.photos[i] for i in keep] + [p for _, p, _ in added]
            rows = [old.embeddings[keep]] + ([np.stack([e for _, _, e in added])] if added else [])
            self._index = _index(names, photos, np.concatenate(rows).astype(np.float32))

    def replace_all(self, gallery: Gallery) -> None:
        """A full rebuild (e.g. `reload_gallery`), swapped in as one reference."""
        fresh = Recognizer(gallery, self.threshold)._index
        with self._write:
            self._index = fresh



def _distances(index: _Index, embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.atleast_2d(np.asarray(embeddings, np.float32))
    if not index.people:
        return np.zeros((len(embeddings), 0), np.float32)
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * (embeddings @ index.centroids.T)))
