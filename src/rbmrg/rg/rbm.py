"""The RG weight factor of Chung & Kao as a convolutional restricted Boltzmann machine.

Visible units are the original spins sigma (shape ``(batch, L, L)``, +1/-1), hidden units are the
block spins mu (shape ``(batch, L/b, L/b)``, +1/-1). One real filter W of size f x f is shared by every
hidden unit (translation symmetry); hidden unit (p, q) sees the f x f window whose top-left corner is
site (b p, b q), wrapped periodically. The same holds on the simple cubic lattice (``dim=3``): an
f x f x f filter, block spins of shape ``(batch, L/b, L/b, L/b)``. There are no biases, so the model keeps the Z2 symmetry of
the Ising model.

    P(mu | sigma) = exp(sum_ij W_ij sigma_i mu_j) / Y(sigma)             Eq. (3)
    Y(sigma)      = prod_j 2 cosh(h_j),   h_j = sum_i W_ij sigma_i        Eq. (4)

Training minimises D(p_Ising || Y / sum Y) (Eq. 8), which is maximum likelihood for the RBM whose
visible marginal is proportional to Y(sigma) = exp(-F(sigma)), F the free energy below.

The hidden field is a periodic convolution; the visible field g_i = sum_j W_ij mu_j is its adjoint, a
transposed convolution, computed as b^2 ordinary periodic convolutions (one per phase of the site
within its block) interleaved by pixel_shuffle.

:class:`ReplicaRBM` holds R independent filters, weight ``(R, f, ..., f)``, and evaluates them together
on a batch ``(R, batch, L, ..., L)`` whose replica r only ever meets filter r: the replicas are the
channels of one grouped convolution (``groups=R``), so R filters cost one call, not R.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rbmrg import checks


def validate_geometry(L: int, filter_size: int, stride: int) -> None:
    """Raise a ValueError naming the setting that makes (L, filter_size, stride) unusable.

    Every RG step needs b >= 2 (b = 1 maps the lattice onto itself: there is no scale factor and
    y = ln(lambda) / ln(b) is undefined), a filter that fits the lattice, and L divisible by b.
    """
    checks.integer("model.stride", stride, 2)
    checks.integer("model.filter_size", filter_size, 1)
    if filter_size > L:
        raise ValueError(f"model.filter_size={filter_size} is larger than the lattice data.L={L}")
    if L % stride:
        raise ValueError(f"data.L={L} is not divisible by model.stride={stride}")


def _conv(x: torch.Tensor, kernel: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    """conv2d or conv3d, by the number of lattice axes of ``x`` (batch, channels, L, ..., L)."""
    return (F.conv2d if x.ndim == 4 else F.conv3d)(x, kernel, stride=stride, groups=groups)


def hidden_field(spins: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """h_p = sum_u W_u sigma_(b p + u), indices mod L, per axis. Shape (batch, L/b, ..., L/b).

    The lattice dimension d is ``weight.ndim`` (2 or 3); in 2D: h_(p,q) = sum_(u,v) W_(u,v)
    sigma_(b p + u, b q + v).
    """
    f, dim = weight.shape[-1], weight.ndim
    x = spins.to(weight.dtype).unsqueeze(1)
    # Circular padding on the far side of every axis only: window p starts at b p.
    x = F.pad(x, (0, f - 1) * dim, mode="circular") if f > 1 else x
    return _conv(x, weight.view(1, 1, *weight.shape), stride).squeeze(1)


def visible_field(
    block_spins: torch.Tensor, weight: torch.Tensor, stride: int, L: int
) -> torch.Tensor:
    """g_i = sum_j W_ij mu_j, the adjoint of :func:`hidden_field`. Shape (batch, L, ..., L).

    Polyphase form: along each axis write the site as i = b m + r (0 <= r < b); it receives
    W[b d + r] mu[m - d] for d = 0..D-1, D = ceil(f / b), indices mod L/b. The b^d phases r are the
    output channels of one ordinary periodic convolution of mu, interleaved back (pixel_shuffle in
    2D). (On a CPU this is several times faster than a transposed convolution with the overhang folded.)
    """
    f, dim = weight.shape[-1], weight.ndim
    b = stride
    taps = -(-f // b)  # D
    if taps * b != f:  # zero taps so that every phase has D of them
        weight = F.pad(weight, (0, taps * b - f) * dim)
    mu = block_spins.to(weight.dtype).unsqueeze(1)
    if taps > 1:  # mu[m - d], d < D: periodic padding before the first block spin
        mu = F.pad(mu, (taps - 1, 0) * dim, mode="circular")
    if dim == 2:
        # kernel[r b + s, 0, k, l] = W[b (D-1-k) + r, b (D-1-l) + s]: flipped, since conv2d correlates.
        kernel = weight.view(taps, b, taps, b).flip(0, 2).permute(1, 3, 0, 2)
        kernel = kernel.reshape(b * b, 1, taps, taps)
        out = F.pixel_shuffle(F.conv2d(mu, kernel), b).squeeze(1)
    else:
        # The same in 3D: phases (r, s, t) as channels, then interleaved axis by axis.
        kernel = weight.view(taps, b, taps, b, taps, b).flip(0, 2, 4).permute(1, 3, 5, 0, 2, 4)
        kernel = kernel.reshape(b**3, 1, taps, taps, taps)
        phases = F.conv3d(mu, kernel)
        m = phases.shape[-1]
        out = phases.view(-1, b, b, b, m, m, m).permute(0, 4, 1, 5, 2, 6, 3)
        out = out.reshape(-1, m * b, m * b, m * b)
    if out.shape[-1] != L:
        raise ValueError(f"block spins of size {block_spins.shape[-1]} x stride {b} != L={L}")
    return out


def replica_hidden_field(spins: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """:func:`hidden_field` of every replica at once: ``out[r] = hidden_field(spins[r], weight[r])``.

    ``spins`` (R, batch, L, ..., L), ``weight`` (R, f, ..., f); one grouped convolution with the
    replicas as channels. Shape (R, batch, L/b, ..., L/b).
    """
    replicas, f, dim = weight.shape[0], weight.shape[-1], weight.ndim - 1
    x = spins.to(weight.dtype).transpose(0, 1)  # (batch, R, L, ...): replica r is channel r
    x = F.pad(x, (0, f - 1) * dim, mode="circular") if f > 1 else x
    return _conv(x, weight.unsqueeze(1), stride, groups=replicas).transpose(0, 1)


def replica_visible_field(
    block_spins: torch.Tensor, weight: torch.Tensor, stride: int, L: int
) -> torch.Tensor:
    """:func:`visible_field` of every replica at once: ``out[r] = visible_field(block_spins[r],
    weight[r])``, the same polyphase form with the b^d phases of replica r as its group of output
    channels. ``block_spins`` (R, batch, L/b, ...), ``weight`` (R, f, ...); shape (R, batch, L, ...)."""
    replicas, f, dim = weight.shape[0], weight.shape[-1], weight.ndim - 1
    b = stride
    taps = -(-f // b)
    if taps * b != f:
        weight = F.pad(weight, (0, taps * b - f) * dim)
    mu = block_spins.to(weight.dtype).transpose(0, 1)  # (batch, R, L/b, ...)
    if taps > 1:
        mu = F.pad(mu, (taps - 1, 0) * dim, mode="circular")
    if dim == 2:
        kernel = weight.view(replicas, taps, b, taps, b).flip(1, 3).permute(0, 2, 4, 1, 3)
        kernel = kernel.reshape(replicas * b * b, 1, taps, taps)
        # pixel_shuffle takes channels c b^2 .. c b^2 + b^2 - 1 to channel c: group r to replica r.
        out = F.pixel_shuffle(F.conv2d(mu, kernel, groups=replicas), b)
    else:
        kernel = weight.view(replicas, taps, b, taps, b, taps, b).flip(1, 3, 5)
        kernel = kernel.permute(0, 2, 4, 6, 1, 3, 5).reshape(replicas * b**3, 1, taps, taps, taps)
        phases = F.conv3d(mu, kernel, groups=replicas)
        m = phases.shape[-1]
        out = phases.view(-1, replicas, b, b, b, m, m, m).permute(0, 1, 5, 2, 6, 3, 7, 4)
        out = out.reshape(-1, replicas, m * b, m * b, m * b)
    if out.shape[-1] != L:
        raise ValueError(f"block spins of size {block_spins.shape[-1]} x stride {b} != L={L}")
    return out.transpose(0, 1)


def log_2cosh(x: torch.Tensor) -> torch.Tensor:
    """log(2 cosh x), stable for large |x|."""
    return torch.logaddexp(x, -x)


class _GibbsSampling(torch.nn.Module):
    """The conditionals and Gibbs sampling of Eq. (3), written in terms of the fields: shared by
    one filter (:class:`ConvRBM`) and R filters side by side (:class:`ReplicaRBM`)."""

    def hidden_field(self, spins: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def visible_field(self, block_spins: torch.Tensor, L: int) -> torch.Tensor:
        raise NotImplementedError

    def hidden_probability(self, spins: torch.Tensor) -> torch.Tensor:
        """P(mu_j = +1 | sigma) = sigmoid(2 h_j)."""
        return torch.sigmoid(2.0 * self.hidden_field(spins))

    def visible_probability(self, block_spins: torch.Tensor, L: int) -> torch.Tensor:
        """P(sigma_i = +1 | mu) = sigmoid(2 g_i)."""
        return torch.sigmoid(2.0 * self.visible_field(block_spins, L))

    @staticmethod
    def _draw(prob: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        uniform = torch.rand(prob.shape, generator=generator, device=prob.device, dtype=prob.dtype)
        return torch.where(uniform < prob, 1.0, -1.0).to(prob.dtype)

    def sample_hidden(
        self, spins: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw block spins mu ~ P(mu | sigma): the learned RG transformation."""
        return self._draw(self.hidden_probability(spins), generator)

    def sample_visible(
        self, block_spins: torch.Tensor, L: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self._draw(self.visible_probability(block_spins, L), generator)

    def gibbs(
        self, spins: torch.Tensor, k: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """k alternating Gibbs steps sigma -> mu -> sigma, starting from ``spins``."""
        L = spins.shape[-1]
        for _ in range(k):
            spins = self.sample_visible(self.sample_hidden(spins, generator), L, generator)
        return spins


class ConvRBM(_GibbsSampling):
    """Translation-invariant +1/-1 RBM without biases: the weight factor P(mu|sigma) of Eq. (3)-(4).

    Args:
        filter_size: f, side of the square (cubic) filter (default 8, the paper's Fig. 1).
        stride: b >= 2, the RG scale factor; L maps to L / b block spins (default 2).
        init_scale: W is drawn uniformly from [-init_scale, init_scale] ("uniformly around zero").
        dim: lattice dimension d (2 or 3); the filter has shape (f,) * d.
    """

    def __init__(
        self, filter_size: int = 8, stride: int = 2, init_scale: float = 0.01, dim: int = 2
    ):
        super().__init__()
        self.filter_size = checks.integer("model.filter_size", filter_size, 1)
        self.stride = checks.integer("model.stride", stride, 2)
        self.dim = checks.one_of("data.dim", dim, (2, 3))
        checks.number("model.init_scale", init_scale, 0.0)
        self.weight = torch.nn.Parameter(
            torch.empty((filter_size,) * dim).uniform_(-1, 1) * init_scale
        )

    def check_lattice(self, L: int) -> None:
        validate_geometry(L, self.filter_size, self.stride)

    def hidden_field(self, spins: torch.Tensor) -> torch.Tensor:
        return hidden_field(spins, self.weight, self.stride)

    def visible_field(self, block_spins: torch.Tensor, L: int) -> torch.Tensor:
        return visible_field(block_spins, self.weight, self.stride, L)

    def free_energy(self, spins: torch.Tensor) -> torch.Tensor:
        """F(sigma) = -log Y(sigma) = -sum_j log 2cosh(h_j), one value per configuration."""
        return -log_2cosh(self.hidden_field(spins)).flatten(1).sum(1)


class ReplicaRBM(_GibbsSampling):
    """R independent filters of :class:`ConvRBM`, evaluated together (``model.n_replicas=R``).

    ``weight`` has shape (R, f, ..., f), each filter its own uniform draw; every method takes and
    returns a leading replica axis: ``spins`` (R, batch, L, ..., L), ``free_energy`` (R, batch).
    Replica r meets only filter r (grouped convolutions), so its fields, free energy, conditionals
    and gradient are those of a ConvRBM with ``weight[r]``; its random draws are its own slice of
    one draw of shape (R, ...). :meth:`replica` hands out filter r as a plain ConvRBM.

    Not a ConvRBM: code that takes one filter takes :meth:`replica`. ``filter_size``, ``stride``,
    ``dim`` and :meth:`check_lattice` are those of every replica.
    """

    def __init__(
        self,
        n_replicas: int,
        filter_size: int = 8,
        stride: int = 2,
        init_scale: float = 0.01,
        dim: int = 2,
    ):
        super().__init__()
        self.n_replicas = checks.integer("model.n_replicas", n_replicas, 1)
        self.filter_size = checks.integer("model.filter_size", filter_size, 1)
        self.stride = checks.integer("model.stride", stride, 2)
        self.dim = checks.one_of("data.dim", dim, (2, 3))
        checks.number("model.init_scale", init_scale, 0.0)
        shape = (self.n_replicas,) + (self.filter_size,) * self.dim
        self.weight = torch.nn.Parameter(torch.empty(shape).uniform_(-1, 1) * init_scale)

    def hidden_field(self, spins: torch.Tensor) -> torch.Tensor:
        return replica_hidden_field(spins, self.weight, self.stride)

    def visible_field(self, block_spins: torch.Tensor, L: int) -> torch.Tensor:
        return replica_visible_field(block_spins, self.weight, self.stride, L)

    def free_energy(self, spins: torch.Tensor) -> torch.Tensor:
        """F_r(sigma) of every replica r and configuration: shape (R, batch)."""
        return -log_2cosh(self.hidden_field(spins)).flatten(2).sum(2)

    def check_lattice(self, L: int) -> None:
        validate_geometry(L, self.filter_size, self.stride)

    def replica(self, index: int) -> ConvRBM:
        """Filter ``index`` as a ConvRBM of its own: a copy, same device and dtype, in eval mode.

        Draws no random numbers from the global generators (the constructor's draw is forked off),
        so measuring a replica during training changes no update.
        """
        with torch.random.fork_rng(devices=[]):
            rbm = ConvRBM(self.filter_size, self.stride, init_scale=0.0, dim=self.dim)
        rbm = rbm.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            rbm.weight.copy_(self.weight[index].detach())
        return rbm.eval()

    def replicas(self) -> list[ConvRBM]:
        """Every filter as a ConvRBM (:meth:`replica`)."""
        return [self.replica(index) for index in range(self.n_replicas)]
