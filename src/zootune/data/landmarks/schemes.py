"""Landmark schemes: how many points, which mirror which, which pair normalises the error.

A *scheme* says what the indices of a landmark annotation mean. The facts a trainer needs:

* ``flip_pairs``: the index pairs that swap under a horizontal flip (the left eye's outer corner
  becomes the right eye's). Flipping the image mirrors the coordinates, but the *meaning* of an
  index must stay the same, so the keypoints are also permuted — neither torchvision nor
  albumentations knows a face's symmetry, so :func:`flip_permutation` does it.
* ``norm_pair``: the two points whose distance normalises the error (NME, paper §4.3 "we use
  the inter-ocular distance as normalization"). For all three benchmarks that is the distance
  between the **outer eye corners**, as in the evaluation code of HRNet for facial landmarks
  (Sun et al. 2019, the protocol the paper follows) and the 300-W challenge (Sagonas et al.
  2013):

  ===========  ======  ==================  ============================================
  scheme       points  outer eye corners   source of the convention
  ===========  ======  ==================  ============================================
  ``300w``     68      36 and 45 (0-based) 300-W / iBUG 68-point markup (Sagonas 2013)
  ``wflw``     98      60 and 72           WFLW (Wu et al. 2018, LAB)
  ``cofw``     29      8 and 9             COFW 29-point markup (Burgos-Artizzu 2013)
  ===========  ======  ==================  ============================================

  Some COFW papers normalise by the distance between the pupils (indices 16 and 17) instead;
  ``task.norm: [16, 17]`` does that.
* ``parts``: the facial part of every index (for plots and tests).

The procedural faces of :mod:`zootune.data.landmarks.faces` use the ``300w`` scheme.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from zootune.data.base import DataError


class SchemeError(DataError):
    """A landmark scheme is unknown or inconsistent (e.g. a flip pair out of range)."""


def flip_permutation(num_points: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """The index permutation of a horizontal flip: ``new[i] = mirrored(old[perm[i]])``.

    ``pairs``: 0-based ``(a, b)`` index pairs that mirror each other; every other index is on
    the symmetry axis and maps to itself. The result is an involution (``perm[perm] == id``).
    """
    perm = np.arange(num_points)
    seen: set[int] = set()
    for a, b in pairs:
        if not (0 <= a < num_points and 0 <= b < num_points) or a == b:
            raise SchemeError(f"flip pair ({a}, {b}) is invalid for {num_points} points")
        if a in seen or b in seen:
            raise SchemeError(f"index {a if a in seen else b} appears in two flip pairs")
        seen.update((a, b))
        perm[a], perm[b] = b, a
    return perm


@dataclass(frozen=True)
class LandmarkScheme:
    """What the indices of one annotation format mean (see the module docstring)."""

    name: str
    num_points: int
    flip_pairs: tuple[tuple[int, int], ...]
    norm_pair: tuple[int, int]
    parts: tuple[str, ...] = field(default=())
    citation: str = ""

    def __post_init__(self) -> None:
        flip_permutation(self.num_points, self.flip_pairs)  # validates
        if self.parts and len(self.parts) != self.num_points:
            raise SchemeError(f"scheme {self.name!r}: {len(self.parts)} part names for "
                              f"{self.num_points} points")

    @property
    def flip_perm(self) -> np.ndarray:
        return flip_permutation(self.num_points, self.flip_pairs)

    def describe(self) -> dict:
        return {"scheme": self.name, "num_points": self.num_points,
                "norm_pair": list(self.norm_pair)}


def _mirror_run(first: Sequence[int], second: Sequence[int]) -> list[tuple[int, int]]:
    return list(zip(first, second))


# ---- 300-W / iBUG 68 points (0-based) -------------------------------------------------------
_P68 = (
    [(i, 16 - i) for i in range(8)]                       # jaw line, 0..16 (8 is the chin)
    + _mirror_run(range(17, 22), range(26, 21, -1))       # brows, outer -> inner / inner -> outer
    + [(31, 35), (32, 34)]                                # nostrils (33: below the tip)
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    + [(60, 64), (61, 63), (65, 67)]                      # inner lips
)
_PARTS68 = tuple(["jaw"] * 17 + ["brow"] * 10 + ["nose"] * 9 + ["eye"] * 12 + ["mouth"] * 20)

# ---- WFLW 98 points (0-based) ---------------------------------------------------------------
_P98 = (
    [(i, 32 - i) for i in range(16)]                      # contour 0..32 (16 is the chin)
    + [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42)]  # upper brow edges
    + [(38, 50), (39, 49), (40, 48), (41, 47)]            # lower brow edges
    + [(60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73)]  # eyes
    + [(55, 59), (56, 58)]                                # nose bottom (51..54 bridge, 57 tip)
    + [(76, 82), (77, 81), (78, 80), (87, 83), (86, 84)]  # outer lips
    + [(88, 92), (89, 91), (95, 93)]                      # inner lips
    + [(96, 97)]                                          # pupils
)
_PARTS98 = tuple(["jaw"] * 33 + ["brow"] * 18 + ["nose"] * 9 + ["eye"] * 16 + ["mouth"] * 20
                 + ["eye"] * 2)

# ---- COFW 29 points (0-based) ---------------------------------------------------------------
_P29 = [(0, 1), (4, 6), (2, 3), (5, 7), (8, 9), (10, 11), (12, 14), (16, 17), (13, 15), (18, 19),
        (22, 23)]
_PARTS29 = tuple(["brow"] * 8 + ["eye"] * 10 + ["nose"] * 4 + ["mouth"] * 6 + ["jaw"])

SCHEMES: dict[str, LandmarkScheme] = {
    "300w": LandmarkScheme("300w", 68, tuple(_P68), (36, 45), _PARTS68,
                           "Sagonas et al. 2013 (300 Faces in-the-Wild), iBUG 68-point markup"),
    "wflw": LandmarkScheme("wflw", 98, tuple(_P98), (60, 72), _PARTS98,
                           "Wu et al. 2018 (Look at Boundary), WFLW 98-point markup"),
    "cofw": LandmarkScheme("cofw", 29, tuple(_P29), (8, 9), _PARTS29,
                           "Burgos-Artizzu et al. 2013 (RCPR), COFW 29-point markup"),
}
#: the scheme of each point count, for data that does not name its scheme
BY_COUNT = {s.num_points: s for s in SCHEMES.values()}


def get_scheme(name_or_count: str | int) -> LandmarkScheme:
    """The scheme named ``300w`` / ``wflw`` / ``cofw`` (or with that many points)."""
    if isinstance(name_or_count, int) or str(name_or_count).isdigit():
        s = BY_COUNT.get(int(name_or_count))
    else:
        s = SCHEMES.get(str(name_or_count).lower())
    if s is None:
        raise SchemeError(f"unknown landmark scheme {name_or_count!r}; known: "
                          + ", ".join(f"{k} ({v.num_points} points)" for k, v in SCHEMES.items()))
    return s
