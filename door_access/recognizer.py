"""Matching embeddings against the gallery: 1:K identification and 1:1 verification.

Embeddings are unit vectors, so squared L2 distance is `2 - 2 * dot`: one matrix product
gives every probe-to-photo distance, and a per-person minimum (over that person's photos)
gives the distance to each person.

The door's rule: the closest person, if under the threshold and, with a margin, at least that
much closer than the second-closest person. A face halfway between two enrolled people is
nobody rather than a guess; measured on LFW (`eval --open-set`), the margin turns away more
strangers than the same loss of recognitions buys by lowering the threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .core import Match

if TYPE_CHECKING:
    from .gallery import Gallery


class Recognizer:
    def __init__(self, gallery: Gallery, threshold: float, margin: float = 0.0):
        self.threshold = threshold
        self.margin = margin
        order = np.argsort(np.asarray(gallery.names, dtype=object), kind="stable")
        names = [gallery.names[i] for i in order]
        self._embeddings = gallery.embeddings[order] if len(order) else gallery.embeddings
        self.people = sorted(set(names))
        # Column ranges of each person in the sorted gallery, for np.minimum.reduceat.
        self._starts = np.array([names.index(p) for p in self.people], dtype=np.intp)

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, people) matrix: each probe's distance to each person's closest photo."""
        embeddings = np.atleast_2d(np.asarray(embeddings, np.float32))
        if not self.people:
            return np.zeros((len(embeddings), 0), np.float32)
        d = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * embeddings @ self._embeddings.T))
        return np.minimum.reduceat(d, self._starts, axis=1)

    def identify(self, embeddings: np.ndarray) -> list[Match]:
        per_person = self.distances(embeddings)
        if per_person.shape[1] == 0:
            return [Match(None, float("inf"), None) for _ in range(len(per_person))]
        order = np.argsort(per_person, axis=1)
        out = []
        for row, (j, *rest) in zip(per_person, order):
            d = float(row[j])
            second = float(row[rest[0]]) if rest else float("inf")
            accept = d <= self.threshold and second - d >= self.margin
            out.append(Match(self.people[j] if accept else None, d, self.people[j]))
        return out

    def verify(self, embedding: np.ndarray, name: str) -> tuple[float, bool]:
        """Distance of one face to the claimed person, and whether it is a match."""
        if name not in self.people:
            raise KeyError(name)
        d = float(self.distances(embedding)[0, self.people.index(name)])
        return d, d <= self.threshold
