"""Interactions S_alpha of the square-lattice Ising model, defined as data, and ordered sets of them.

An interaction is a list of *terms*; a term is a tuple of site offsets (row, col). Its value on a
configuration is

    S_alpha(sigma) = sum over sites r, sum over terms t of prod_{o in t} sigma_{r + o}  (periodic),

an extensive sum (no division by the number of sites). MCRG (Swendsen 1979) uses the same extensive
normalisation on every RG level, so T = A^-1 B is a matrix of coupling derivatives dK'/dK, and the
couplings K_alpha of H = sum_alpha K_alpha S_alpha (``rbmrg.rg.couplings``) refer to these sums.

The order of a set matters: MCRG with N_c couplings uses the first N_c of the set. The candidates
are named once (``EVEN_CANDIDATES``, ``ODD_CANDIDATES``); a set is an ordered tuple of them.
``EVEN_SETS`` and ``ODD_SETS`` name the orders in use, and :func:`interaction_set` builds a set from
a configuration value, either a set name (``mcrg.even_set: distance``) or a list of interaction
names (``mcrg.even_set: [nn, diag, third]``). ``EVEN`` and ``ODD`` are the default sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rbmrg.rg.kernels import measure_pm1

Offset = tuple[int, ...]


@dataclass(frozen=True)
class Interaction:
    """A translation-invariant interaction: ``terms`` are tuples of site offsets.

    An offset has one entry per lattice axis: (row, col) in 2D, (i,) for a chain.
    """

    name: str
    terms: tuple[tuple[Offset, ...], ...]

    @property
    def span(self) -> int:
        """Largest extent of any term along either axis, in lattice units."""
        return max(
            max(o[axis] for o in term) - min(o[axis] for o in term)
            for term in self.terms
            for axis in range(len(term[0]))
        )

    @property
    def odd(self) -> bool:
        """Whether S_alpha changes sign under the global flip sigma -> -sigma (odd-size terms)."""
        return len(self.terms[0]) % 2 == 1

    @property
    def coordination(self) -> int:
        """Number of terms, over all translates, that contain a given site: sum of term sizes.

        The site sum S_alpha,i (:func:`site_sums`) is a sum of this many products of +-1.
        """
        return sum(len(term) for term in self.terms)

    def fits(self, L: int) -> bool:
        """Whether the interaction is well defined on a periodic L x L lattice.

        A term must not wrap onto itself and two terms must not become the same product: both hold
        when L > 2 * span. On a smaller lattice the measured quantity would silently be a different
        interaction (e.g. the (0, 2) and (0, -2) pairs coincide at L = 4).
        """
        return L > 2 * self.span


def _pairs(name: str, *offsets: Offset) -> Interaction:
    return Interaction(name, tuple(((0, 0), o) for o in offsets))


def _orbit(name: str, term: tuple[Offset, ...]) -> Interaction:
    """The interaction of ``term`` and all its distinct images under the 8 symmetries of the
    square (rotations and reflections), each image translated to start at its smallest offset."""
    images = set()
    for flip in (1, -1):
        for swap in (False, True):
            for sign in (1, -1):
                moved = [(sign * c, flip * r) if swap else (sign * r, flip * c) for r, c in term]
                low_r, low_c = min(r for r, _ in moved), min(c for _, c in moved)
                images.add(tuple(sorted((r - low_r, c - low_c) for r, c in moved)))
    return Interaction(name, tuple(sorted(images)))


def _candidates(*interactions: Interaction) -> dict[str, Interaction]:
    return {interaction.name: interaction for interaction in interactions}


#: Every Z2-even interaction rbmrg knows, by name (pairs by distance, then the four-spin terms).
EVEN_CANDIDATES: dict[str, Interaction] = _candidates(
    _pairs("nn", (0, 1), (1, 0)),  # distance 1
    _pairs("diag", (1, 1), (1, -1)),  # next-nearest, distance sqrt 2
    _pairs("third", (0, 2), (2, 0)),  # distance 2
    _pairs("knight", (1, 2), (2, 1), (1, -2), (2, -1)),  # distance sqrt 5
    _pairs("diag2", (2, 2), (2, -2)),  # distance sqrt 8
    _pairs("sixth", (0, 3), (3, 0)),  # distance 3, the sixth shell of neighbours
    Interaction("plaquette", (((0, 0), (0, 1), (1, 0), (1, 1)),)),  # the 4 spins of a 2x2 square
    # The four nearest neighbours of a site (the site itself not included).
    Interaction("diamond", (((0, 1), (1, 0), (0, -1), (-1, 0)),)),
)

#: Every Z2-odd interaction rbmrg knows, by name.
ODD_CANDIDATES: dict[str, Interaction] = _candidates(
    Interaction("magnetization", (((0, 0),),)),
    # Three of the four spins of a 2x2 plaquette (leave out each corner once).
    Interaction(
        "plaquette3",
        (
            ((0, 1), (1, 0), (1, 1)),
            ((0, 0), (1, 0), (1, 1)),
            ((0, 0), (0, 1), (1, 1)),
            ((0, 0), (0, 1), (1, 0)),
        ),
    ),
    Interaction("row3", (((0, 0), (0, 1), (0, 2)), ((0, 0), (1, 0), (2, 0)))),
    Interaction("diag3", (((0, 0), (1, 1), (2, 2)), ((0, 0), (1, -1), (2, -2)))),
    # Two diagonal bonds meeting at an apex: a "V", in its four orientations.
    Interaction(
        "vee3",
        (
            ((0, 0), (1, 1), (0, 2)),
            ((1, 0), (0, 1), (1, 2)),
            ((0, 0), (1, 1), (2, 0)),
            ((0, 1), (1, 0), (2, 1)),
        ),
    ),
    Interaction("cross5", (((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)),)),
    Interaction("x5", (((0, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)),)),
    # An L: a site, the site two steps along one axis and one step along the other, 8 images.
    _orbit("ell3", ((0, 0), (2, 0), (0, 1))),
    # Three of the four corners of a 3x3 square (plaquette3 at twice the distance).
    Interaction(
        "corners3",
        (
            ((0, 2), (2, 0), (2, 2)),
            ((0, 0), (2, 0), (2, 2)),
            ((0, 0), (0, 2), (2, 2)),
            ((0, 0), (0, 2), (2, 0)),
        ),
    ),
)


def _ordered(candidates: dict[str, Interaction], *names: str) -> tuple[Interaction, ...]:
    return tuple(candidates[name] for name in names)


#: Named orders of the even interactions (y_t). N_c = n uses the first n.
EVEN_SETS: dict[str, tuple[Interaction, ...]] = {
    # By span: the three interactions inside a 2x2 square first, then those of a 3x3 square. The
    # order rbmrg has always used (and, per issue 15, the order of the authors' public code).
    "span": _ordered(
        EVEN_CANDIDATES, "nn", "diag", "plaquette", "third", "knight", "diamond", "diag2"
    ),
    # Pairs by distance, then the four-spin terms: the order that fits the paper's printed
    # Table 1 (docs/results.md, results/interaction_order.py).
    "distance": _ordered(
        EVEN_CANDIDATES, "nn", "diag", "third", "knight", "diag2", "plaquette", "diamond"
    ),
}

#: Named orders of the odd interactions (y_h).
ODD_SETS: dict[str, tuple[Interaction, ...]] = {
    # By number of spins, then span: the magnetization, the 3-spin terms, the 5-spin terms.
    "size": _ordered(
        ODD_CANDIDATES, "magnetization", "plaquette3", "row3", "diag3", "vee3", "cross5", "x5"
    ),
}

#: The default sets (``mcrg.even_set: span``, ``mcrg.odd_set: size``).
EVEN: tuple[Interaction, ...] = EVEN_SETS["span"]
ODD: tuple[Interaction, ...] = ODD_SETS["size"]

#: Nearest-neighbour interaction of a periodic chain (the exactly solvable 1D check).
CHAIN_NN: tuple[Interaction, ...] = (Interaction("nn", (((0,), (1,)),)),)
#: The chain's next-nearest-neighbour pair (zero coupling in the nearest-neighbour chain).
CHAIN_NNN: tuple[Interaction, ...] = (Interaction("nnn", (((0,), (2,)),)),)


def interaction_names(interactions: Sequence[Interaction]) -> list[str]:
    return [interaction.name for interaction in interactions]


#: What :func:`interaction_set` looks names up in: parity -> (named sets, candidates).
Catalogue = dict[str, tuple[dict[str, tuple[Interaction, ...]], dict[str, Interaction]]]


def interaction_set(
    spec: str | Sequence[str],
    parity: str = "even",
    setting: str | None = None,
    catalogue: Catalogue | None = None,
) -> tuple[Interaction, ...]:
    """The ordered interaction set that a configuration value names.

    ``spec`` is the name of a set of ``EVEN_SETS`` / ``ODD_SETS`` (``"distance"``) or a list of
    candidate names in the order wanted (``["nn", "diag", "third"]``). ``parity`` is ``"even"`` or
    ``"odd"``. Errors name ``setting`` (default ``mcrg.<parity>_set``) and list what is valid.
    ``catalogue`` holds the sets and candidates (default: the square lattice's; the cubic
    lattice's is ``rbmrg.rg.interactions_3d.CATALOGUE_3D``, see ``interactions_3d.sets_for``).
    """
    if parity not in ("even", "odd"):
        raise ValueError(f"parity={parity!r}: must be 'even' or 'odd'")
    setting = setting or f"mcrg.{parity}_set"
    catalogue = catalogue or {
        "even": (EVEN_SETS, EVEN_CANDIDATES),
        "odd": (ODD_SETS, ODD_CANDIDATES),
    }
    sets, candidates = catalogue[parity]
    if isinstance(spec, str):
        if spec not in sets:
            raise ValueError(
                f"{setting}={spec!r}: unknown {parity} interaction set; choose one of "
                f"{sorted(sets)} or give a list of interaction names from {list(candidates)}"
            )
        return sets[spec]
    try:
        names = [str(name) for name in spec]
    except TypeError:
        raise ValueError(
            f"{setting}={spec!r}: must be a set name {sorted(sets)} or a list of interaction names"
        ) from None
    if not names:
        raise ValueError(f"{setting}=[]: give at least one interaction")
    unknown = [name for name in names if name not in candidates]
    if unknown:
        other = catalogue["odd" if parity == "even" else "even"][1]
        wrong_parity = [name for name in unknown if name in other]
        hint = f" ({wrong_parity} are not {parity})" if wrong_parity else ""
        raise ValueError(
            f"{setting}={names}: unknown {parity} interaction(s) {unknown}{hint}; "
            f"choose from {list(candidates)}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"{setting}={names}: {repeated} listed twice (MCRG's A matrix would be singular)"
        )
    return tuple(candidates[name] for name in names)


def _padded_views(spins: torch.Tensor, reach: int):
    """(padded spins, site_plus): ``site_plus(offset)`` is sigma_{r + offset} for every site r.

    The lattice is padded once with ``reach`` wrapped rows/columns on every side, so each shifted
    lattice is a strided *view* (no copy per offset; 3x faster than ``torch.roll`` for the 14
    interactions of EVEN + ODD at L = 32).
    """
    L = spins.shape[-1]
    wrapped = torch.arange(-reach, L + reach, device=spins.device) % L
    padded = spins.to(torch.float32)
    for axis in range(1, spins.ndim):
        padded = padded.index_select(axis, wrapped)

    def site_plus(offset: Offset) -> torch.Tensor:
        return padded[(slice(None),) + tuple(slice(reach + x, reach + x + L) for x in offset)]

    return padded, site_plus


def _reach(interactions: Sequence[Interaction]) -> int:
    return max(abs(x) for i in interactions for term in i.terms for o in term for x in o)


def measure(
    spins: torch.Tensor, interactions: Sequence[Interaction], chunk: int = 1024
) -> torch.Tensor:
    """Values of ``interactions`` on each configuration: shape (batch, n_interactions), float64.

    ``spins`` is (batch, L, ..., L) with values +1/-1, any dtype, one lattice axis per offset entry.
    Interactions that do not fit the lattice (see :meth:`Interaction.fits`) give NaN; callers decide
    how to report that. On the CPU the compiled kernel of :mod:`rbmrg.rg.kernels` measures them
    (the same integers; throughput in docs/performance.md); on other devices, or for values other
    than +-1, torch does.
    """
    batch, L = spins.shape[0], spins.shape[-1]
    lattice_axes = tuple(range(1, spins.ndim))
    out = torch.full(
        (batch, len(interactions)), float("nan"), dtype=torch.float64, device=spins.device
    )
    fitting = [i for i, interaction in enumerate(interactions) if interaction.fits(L)]
    if not fitting:
        return out
    reach = _reach([interactions[i] for i in fitting])
    if spins.device.type == "cpu":
        terms = [term for i in fitting for term in interactions[i].terms]
        owners = [column for column, i in enumerate(fitting) for _ in interactions[i].terms]
        sums = measure_pm1(spins, terms, owners, len(fitting), reach)
        if sums is not None:
            out[:, fitting] = torch.from_numpy(sums).to(torch.float64)
            return out
    for start in range(0, batch, chunk):
        padded, site_plus = _padded_views(spins[start : start + chunk], reach)
        for i in fitting:
            total = torch.zeros(padded.shape[0], dtype=torch.float64, device=spins.device)
            for term in interactions[i].terms:
                product = site_plus(term[0])
                for offset in term[1:]:
                    product = product * site_plus(offset)
                # Sums of +-1 over <= 2^24 sites are exact in float32.
                total += product.sum(lattice_axes).to(torch.float64)
            out[start : start + chunk, i] = total
    return out


def site_sums(spins: torch.Tensor, interactions: Sequence[Interaction]) -> torch.Tensor:
    """S_alpha,i = dS_alpha / dsigma_i for every site i: shape (batch, n_interactions, L, ..., L).

    For +-1 spins S_alpha = sigma_i S_alpha,i + (terms without site i), so S_alpha,i is the sum, over
    the translates of the terms that contain i, of the product of their *other* spins:

        S_alpha,i = sum_terms t sum_{p in t} prod_{q in t, q != p} sigma_{i + q - p}

    (a one-spin term contributes 1). In H = sum_alpha K_alpha S_alpha the local field on site i is
    h_i = sum_alpha K_alpha S_alpha,i. Values are integers of the parity of
    :attr:`Interaction.coordination`, in float32; every interaction must fit the lattice.
    """
    L = spins.shape[-1]
    unfit = [i.name for i in interactions if not i.fits(L)]
    if unfit:
        raise ValueError(f"interactions {unfit} do not fit the {L}-site periodic lattice")
    # sigma_{i + q - p}: the offsets of a term relative to one of its own sites reach up to span.
    padded, site_plus = _padded_views(spins, max(i.span for i in interactions))
    out = torch.zeros(
        (spins.shape[0], len(interactions), *spins.shape[1:]),
        dtype=torch.float32,
        device=spins.device,
    )
    for index, interaction in enumerate(interactions):
        for term in interaction.terms:
            for p, anchor in enumerate(term):
                others = [
                    site_plus(tuple(o - a for o, a in zip(offset, anchor, strict=True)))
                    for q, offset in enumerate(term)
                    if q != p
                ]
                if not others:  # a one-spin term: dS/dsigma_i = 1
                    out[:, index] += 1
                    continue
                product = others[0]
                for factor in others[1:]:
                    product = product * factor
                out[:, index] += product
    return out
