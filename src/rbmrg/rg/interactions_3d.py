"""Interactions S_alpha of the simple cubic Ising model, defined as data, and ordered sets of them.

The conventions are those of :mod:`rbmrg.rg.interactions` (same :class:`Interaction`, same
:func:`~rbmrg.rg.interactions.measure`): a term is a tuple of site offsets, now (x, y, z), and

    S_alpha(sigma) = sum over sites r, sum over terms t of prod_{o in t} sigma_{r + o}  (periodic L^3),

an extensive sum. Each interaction is written as one *prototype* term; its terms are the images of
the prototype under the 48 rotations and reflections of the cube, each distinct product counted once
(images that differ by a translation are the same product summed over all sites). So every
interaction is closed under the lattice symmetries by construction, and its number of terms is the
size of the prototype's orbit, e.g. 3 nearest-neighbour bonds, 6 face diagonals, 4 body diagonals
(docs/mcrg.md lists them; the tests check the counts and the symmetry on configurations).

The candidates are named once (``EVEN_CANDIDATES_3D``, ``ODD_CANDIDATES_3D``); ``EVEN_SETS_3D`` and
``ODD_SETS_3D`` name orders of them (MCRG with N_c couplings uses the first N_c), and ``EVEN_3D`` /
``ODD_3D`` are the defaults, ordered by the rules of the 2D defaults and named like them (even:
``span``, odd: ``size``). Interactions of span <= 1 (inside a 2 x 2 x 2 cube) are the only ones that
fit a 4^3 level (L > 2 span), the last level of an L = 16 lattice after two steps of b = 2: the
default even set has five of them first, the odd one three. :func:`sets_for` looks the sets of
either dimension up from configuration values (``mcrg.even_set``, ``mcrg.odd_set``), and
:func:`default_sets` gives the default ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from rbmrg.rg.interactions import Catalogue, Interaction, Offset, interaction_set

Term = tuple[Offset, ...]


def _cube_symmetries() -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The 48 elements of the cube's point group as (axis permutation, signs): o -> s * o[perm]."""
    return [
        (perm, signs)
        for perm in itertools.permutations(range(3))
        for signs in itertools.product((1, -1), repeat=3)
    ]


def _canonical(term: Term) -> Term:
    """The term moved so that its smallest site is the origin, sites sorted: equal for translates."""
    origin = min(term)
    return tuple(sorted(tuple(a - b for a, b in zip(o, origin, strict=True)) for o in term))


def _orbit(name: str, prototype: Term) -> Interaction:
    """The interaction whose terms are the distinct images of ``prototype`` under the cube group."""
    terms: dict[Term, None] = {}  # insertion-ordered set: the term order is reproducible
    for perm, signs in _cube_symmetries():
        image = tuple(tuple(s * o[p] for p, s in zip(perm, signs, strict=True)) for o in prototype)
        terms.setdefault(_canonical(image), None)
    return Interaction(name, tuple(terms))


def _candidates(*interactions: Interaction) -> dict[str, Interaction]:
    return {interaction.name: interaction for interaction in interactions}


_O = (0, 0, 0)

#: Every Z2-even interaction of the cubic lattice rbmrg knows, by name: pairs by distance (offset in
#: the name), then the multi-spin terms inside one unit cube. Comments: number of terms, span.
EVEN_CANDIDATES_3D: dict[str, Interaction] = _candidates(
    _orbit("nn", (_O, (1, 0, 0))),  # 3 terms, span 1, distance 1
    _orbit("face_diag", (_O, (1, 1, 0))),  # 6, span 1, distance sqrt 2
    _orbit("body_diag", (_O, (1, 1, 1))),  # 4, span 1, distance sqrt 3
    _orbit("pair200", (_O, (2, 0, 0))),  # 3, span 2, distance 2
    _orbit("pair210", (_O, (2, 1, 0))),  # 12, span 2, distance sqrt 5
    _orbit("pair211", (_O, (2, 1, 1))),  # 12, span 2, distance sqrt 6
    _orbit("pair220", (_O, (2, 2, 0))),  # 6, span 2, distance sqrt 8
    # The 4 spins of a unit square, in the 3 lattice planes.
    _orbit("plaquette", (_O, (1, 0, 0), (0, 1, 0), (1, 1, 0))),  # 3, span 1
    # 4 alternate corners of a unit cube (pairwise face diagonals); the cube holds two of them.
    _orbit("tetrahedron", (_O, (1, 1, 0), (1, 0, 1), (0, 1, 1))),  # 2, span 1
    # All 8 spins of a unit cube.
    _orbit("cube", tuple(itertools.product((0, 1), repeat=3))),  # 1, span 1
)

#: Every Z2-odd interaction of the cubic lattice rbmrg knows, by name (by number of spins, then span).
ODD_CANDIDATES_3D: dict[str, Interaction] = _candidates(
    _orbit("magnetization", (_O,)),  # 1 term, span 0
    # Three of the four spins of a unit square (each corner left out once, 3 planes).
    _orbit("plaquette3", (_O, (1, 0, 0), (0, 1, 0))),  # 12, span 1
    # Three corners of a tetrahedron: an equilateral triangle of face diagonals.
    _orbit("triangle3", (_O, (1, 1, 0), (1, 0, 1))),  # 8, span 1
    # Three consecutive spins along an axis.
    _orbit("row3", (_O, (1, 0, 0), (2, 0, 0))),  # 3, span 2
    # A site and its four nearest neighbours in one lattice plane.
    _orbit("plane5", ((1, 1, 0), (0, 1, 0), (2, 1, 0), (1, 0, 0), (1, 2, 0))),  # 3, span 2
    # A unit cube with one corner left out.
    _orbit("cube7", tuple(itertools.product((0, 1), repeat=3))[1:]),  # 8, span 1
    # A site and its six nearest neighbours.
    _orbit(
        "cross7",
        ((1, 1, 1), (0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)),
    ),  # 1, span 2
)


def _ordered(candidates: dict[str, Interaction], *names: str) -> tuple[Interaction, ...]:
    return tuple(candidates[name] for name in names)


#: Named orders of the even interactions (y_t) of the cubic lattice. N_c = n uses the first n.
EVEN_SETS_3D: dict[str, tuple[Interaction, ...]] = {
    # By span, as the 2D "span" order: the five interactions inside a unit cube (pairs by distance,
    # then the 4-spin terms), then the two shortest pairs of span 2. N_c <= 5 fits a 4^3 level.
    "span": _ordered(
        EVEN_CANDIDATES_3D,
        "nn",
        "face_diag",
        "body_diag",
        "plaquette",
        "tetrahedron",
        "pair200",
        "pair210",
    ),
    # Pairs by distance, then the 4-spin terms (the 2D "distance" order).
    "distance": _ordered(
        EVEN_CANDIDATES_3D,
        "nn",
        "face_diag",
        "body_diag",
        "pair200",
        "pair210",
        "pair211",
        "plaquette",
    ),
}

#: Named orders of the odd interactions (y_h) of the cubic lattice.
ODD_SETS_3D: dict[str, tuple[Interaction, ...]] = {
    # By number of spins, then span (the 2D "size" order). N_c <= 3 fits a 4^3 level.
    "size": _ordered(
        ODD_CANDIDATES_3D,
        "magnetization",
        "plaquette3",
        "triangle3",
        "row3",
        "plane5",
        "cube7",
        "cross7",
    ),
    # By span, then number of spins: the four that fit a 4^3 level first.
    "span": _ordered(
        ODD_CANDIDATES_3D,
        "magnetization",
        "plaquette3",
        "triangle3",
        "cube7",
        "row3",
        "plane5",
        "cross7",
    ),
}

#: The default sets of the cubic lattice.
EVEN_3D: tuple[Interaction, ...] = EVEN_SETS_3D["span"]
ODD_3D: tuple[Interaction, ...] = ODD_SETS_3D["size"]


#: The cubic lattice's sets and candidates, for :func:`rbmrg.rg.interactions.interaction_set`.
CATALOGUE_3D: Catalogue = {
    "even": (EVEN_SETS_3D, EVEN_CANDIDATES_3D),
    "odd": (ODD_SETS_3D, ODD_CANDIDATES_3D),
}


def sets_for(
    dim: int, even: str | Sequence[str] = "span", odd: str | Sequence[str] = "size"
) -> dict[str, tuple[Interaction, ...]]:
    """``{"even": ..., "odd": ...}`` for the ``dim``-dimensional lattice, from configuration values.

    ``even`` and ``odd`` are what ``mcrg.even_set`` / ``mcrg.odd_set`` hold: a set name of that
    lattice (the default names exist in 2D and 3D) or a list of its candidate names, looked up by
    :func:`rbmrg.rg.interactions.interaction_set` (errors name the setting). The keys are those of
    :data:`rbmrg.rg.mcrg.EXPONENT_SET` (even -> y_t, odd -> y_h).
    """
    if dim not in (2, 3):
        raise ValueError(f"data.dim={dim!r}: MCRG interaction sets exist for dim=2 and dim=3 only")
    catalogue = CATALOGUE_3D if dim == 3 else None  # None: the square lattice's
    return {
        "even": interaction_set(even, "even", catalogue=catalogue),
        "odd": interaction_set(odd, "odd", catalogue=catalogue),
    }


def default_sets(dim: int) -> dict[str, tuple[Interaction, ...]]:
    """The default interaction sets of the ``dim``-dimensional lattice (:func:`sets_for`)."""
    return sets_for(dim)
