"""Dropout masks as unknowns of block 0's span test (after GRAB, CCS 2024, which optimises them).

With dropout on, block 0 reads ``f(u * m / (1 - p))``: ``u`` the clean embedding row of a token at
a position, ``m`` an unknown 0/1 mask dropping about p of the coordinates, ``f`` the identity (BERT
drops after its norm) or the norm between the dropout and the attention (GPT-2's ``ln_1``, whose
centring and scaling add the norm's weight and bias as two free directions). A candidate token is
in the batch when some mask puts its row in the span, that is when the masked target
``w * m`` (``w = u``, times the norm's weight where there is one) has no part outside the span.

The fit is a greedy toggle over coordinates with known coefficients: the part outside the span of
``w * m`` is ``P w - sum_{j dropped} w_j P e_j``, so dropping (or restoring) coordinate j changes
its squared norm by a closed form, and each step takes the toggle that lowers it most. A true
token's residual falls to float rounding (about 1e-6) once its dropped coordinates are found; a
false one stays near its clean residual. Tested: MiniLM and random GPT-2 at p = 0.1, B = 2,
true tokens 1e-7 to 1e-4, the best false token 0.08 or more.

Greedy steps can be misled where the span also holds the same token's row at another position
(close to the target, so its dropped coordinates nearly explain the target's part outside the
span): about one MiniLM row in 100 at B = 4. :func:`fit_robustly` reads the mask off a
least-absolute-deviation fit instead (the sparsest drop pattern, relaxed), which such a row
does not mislead, at several times the cost; the scan uses it where block 0's rank says rows
are missing (:mod:`gradleak.attacks.dager.mask_scan`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from gradleak.attacks.dager.oracle import SpanOracle
from gradleak.models.dropout_site import DropoutSite, single_token_inputs
from gradleak.models.families.base import ArchitectureFamily

#: Lowest false residual / highest true residual observed is ~1e3; below this nothing was dropped
#: that mattered, so the toggles stop.
_TOGGLE_GAIN = 1e-14
#: A toggled row's residual above this (float rounding is ~1e-7) is pursued again.
_STALLED = 1e-4
#: Stalled rows of a position's shortlist pursued, surest (lowest clean residual) first. Few: a
#: true row stalls about once in 70, and one the pursuit misses is refitted robustly where the
#: rank says rows are missing (:mod:`gradleak.attacks.dager.mask_scan`).
PURSUED = 8
#: Reweighted least-squares rounds of :func:`fit_robustly` (5 fitted every stalled true row
#: measured on MiniLM, B = 4; more cost time, not rows).
_LAD_ROUNDS = 8
#: Smoothing of the reweighting (drops are 0 or 1, so 1e-2 separates them).
_LAD_EPSILON = 1e-2
#: Where a coordinate's fitted drop is read as a drop: 0.5 for a single row, lower for a blend
#: of several (the second-row search, where rows of the token are known to be there).
_LAD_CUTS = (0.5, 0.25)
_BLEND_CUTS = (0.5, 0.33, 0.25, 0.18, 0.12, 0.08, 0.05)
#: How much more dropping a coordinate costs where a known row of the token dropped it.
KNOWN_DROP_COST = 4.0


class _Stop(Exception):
    """Raised inside a forward pass once what was wanted has been seen."""


@dataclass(frozen=True)
class MaskModel:
    """How a dropout mask enters block 0's rows, for one model.

    Attributes:
        family: the architecture family.
        site: the dropout that masks block 0's input.
    """

    family: ArchitectureFamily
    site: DropoutSite

    @property
    def norm(self) -> nn.Module | None:
        """Returns the norm between the dropout and block 0's attention, or None."""
        name = self.site.norm_name
        return None if name is None else self.family.model.get_submodule(name)

    def unmasked(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Returns the rows the dropout receives for each token alone at ``position`` (n, d)."""
        module = self.family.model.get_submodule(self.site.module_name)
        seen: dict[str, torch.Tensor] = {}

        def hook(_: nn.Module, args: tuple) -> None:
            seen["rows"] = args[0]
            raise _Stop

        handle = module.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                self.family.base(**single_token_inputs(self.family, tokens, position))
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen["rows"][:, 0].float()

    def weight(self) -> torch.Tensor | None:
        """Returns the norm's per-coordinate weight, or None (no norm, or none with a weight)."""
        weight = getattr(self.norm, "weight", None)
        return weight.detach().double() if isinstance(weight, torch.Tensor) else None

    def free_directions(self) -> torch.Tensor:
        """Returns the directions the norm adds whatever the mask: its weight (centring) and
        bias, (k, d)."""
        norm = self.norm
        if norm is None:
            return torch.zeros(0, self.family.hidden_size(), dtype=torch.float64)
        found = [getattr(norm, name, None) for name in ("weight", "bias")]
        return torch.stack([t.detach().double() for t in found if isinstance(t, torch.Tensor)])

    def targets(self, unmasked: torch.Tensor) -> torch.Tensor:
        """Returns ``w``: the unmasked rows times the norm's weight, whose masked version must lie
        in the span widened by :meth:`free_directions`."""
        weight = self.weight()
        rows = unmasked.double()
        return rows * weight.to(rows.device) if weight is not None else rows

    def rows(self, unmasked: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Returns block 0's attention inputs for ``unmasked`` rows under masks ``keep``."""
        masked = unmasked.float() * keep.float() * self.site.scale
        norm = self.norm
        if norm is None:
            return masked
        with torch.no_grad():
            return norm(masked.to(self.family.embedding().weight.dtype)).float()

    def attention_outputs(
        self, ids: torch.Tensor, keep: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Returns block 0's attention outputs (the o projection's input, (S, L, d)) for
        sequences ``ids`` (S, L) whose embedding rows are masked by ``keep`` (S, L, d); the
        attention weights themselves are left unmasked."""
        dropout = self.family.model.get_submodule(self.site.module_name)
        output = self.family.model.get_submodule(self.family.linear_layer(0, "o").module_name)
        seen: dict[str, torch.Tensor] = {}
        scale = self.site.scale

        def masked(_: nn.Module, args: tuple, result: torch.Tensor) -> torch.Tensor:
            return args[0] * keep.to(args[0].device, args[0].dtype) * scale

        def capture(_: nn.Module, args: tuple) -> None:
            seen["rows"] = args[0]
            raise _Stop

        handles = [
            dropout.register_forward_hook(masked),
            output.register_forward_pre_hook(capture),
        ]
        device = self.family.embedding().weight.device
        inputs = {"input_ids": ids.to(device)}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(device)
        if self.family.token_types:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        try:
            with torch.no_grad():
                self.family.base(**inputs)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return seen["rows"].float()


@dataclass(frozen=True)
class MaskFit:
    """Masks fitted to rows.

    Attributes:
        residuals: each row's relative distance to the span under its mask.
        keep: the mask found per row (True: coordinate kept).
    """

    residuals: torch.Tensor
    keep: torch.Tensor


@dataclass(frozen=True)
class MaskSpace:
    """Block 0's span widened by the norm's free directions, in float64.

    Attributes:
        basis: (k, d) orthonormal rows spanning it.
        projector: (d, d) the projector onto its complement.
    """

    basis: torch.Tensor
    projector: torch.Tensor


def mask_space(oracle: SpanOracle, free: torch.Tensor) -> MaskSpace:
    """Returns the span of ``oracle`` plus the directions ``free`` (k, d)."""
    stacked = torch.cat([oracle.basis.basis.double().cpu(), free.cpu()])
    q, _ = torch.linalg.qr(stacked.T)
    return MaskSpace(q.T.contiguous(), torch.eye(stacked.shape[1], dtype=torch.float64) - q @ q.T)


def widened_complement(oracle: SpanOracle, free: torch.Tensor) -> torch.Tensor:
    """Returns the projector (d, d, float64) onto the complement of the span plus ``free``."""
    return mask_space(oracle, free).projector


def fit_masks(
    targets: torch.Tensor,
    projector: torch.Tensor,
    *,
    max_toggles: int,
    pursued: int | None = None,
) -> MaskFit:
    """Returns, per target row ``w``, a mask ``m`` that puts ``w * m`` in the span (``projector``
    onto its complement), and the relative size of the part left outside.

    Greedy toggles with the coefficients known fit most rows. A row whose toggles stall (one
    resembling another token's row in the span can mislead them) is pursued: its dropped
    coordinates are found by orthogonal matching pursuit on ``P w = sum_{j dropped} w_j P e_j``
    (free coefficients, refitted each step), read off where the fitted coefficient is nearer
    ``w_j`` than 0, and polished by toggles. Only the first ``pursued`` stalled rows are (all
    when None): callers order rows by how likely they are to fit.
    """
    with _one_thread():
        w = targets.double()
        fit = _toggle(w, projector, max_toggles, torch.ones_like(w, dtype=torch.bool))
        stalled = torch.nonzero(fit.residuals > _STALLED).flatten()[:pursued]
        if stalled.numel() == 0:
            return fit
        keep = _pursuit(w[stalled], projector, max_toggles)
        retried = _toggle(w[stalled], projector, max_toggles, keep)
        better = retried.residuals < fit.residuals[stalled]
        residuals, masks = fit.residuals.clone(), fit.keep.clone()
        residuals[stalled[better]] = retried.residuals[better]
        masks[stalled[better]] = retried.keep[better]
        return MaskFit(residuals, masks)


def _pursuit(w: torch.Tensor, projector: torch.Tensor, steps: int) -> torch.Tensor:
    """Returns the masks read off an orthogonal matching pursuit of ``steps`` coordinates."""
    n, d = w.shape
    steps = min(steps, d)
    outside = w @ projector
    norms = projector.diagonal().clamp_min(1e-30).sqrt()
    atoms = torch.zeros(n, steps, d, dtype=w.dtype)
    picked = torch.zeros(n, steps, dtype=torch.long)
    chosen = torch.zeros(n, d, dtype=torch.bool)
    rows = torch.arange(n)
    residual = outside.clone()
    for k in range(steps):
        coordinate = (residual.abs() / norms).masked_fill(chosen, -1.0).argmax(1)
        picked[:, k] = coordinate
        chosen[rows, coordinate] = True
        atom = projector[coordinate]
        overlap = torch.einsum("nkd,nd->nk", atoms[:, :k], atom)
        atom = atom - torch.einsum("nk,nkd->nd", overlap, atoms[:, :k])
        atom = atom / atom.norm(dim=1, keepdim=True).clamp_min(1e-30)
        atoms[:, k] = atom
        residual = residual - (atom * residual).sum(1, keepdim=True) * atom
    columns = projector[picked].transpose(1, 2)  # (n, d, steps): P e_j of the picked j
    coefficients = torch.linalg.lstsq(columns, outside[:, :, None]).solution[:, :, 0]
    dropped = (coefficients - w.gather(1, picked)).abs() < coefficients.abs()
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[rows[:, None].expand_as(picked)[dropped], picked[dropped]] = False
    return keep


def fit_robustly(
    targets: torch.Tensor,
    space: MaskSpace,
    *,
    max_toggles: int,
    known: torch.Tensor | None = None,
) -> MaskFit:
    """Returns, per target row ``w``, the mask of the sparsest drop pattern that puts ``w * m`` in
    the span, found as a least-absolute-deviation fit, polished by toggles.

    ``w - B c`` is zero on kept coordinates and ``w_j`` on dropped ones, so the coefficients
    ``c`` that minimise ``sum_j |w_j - (B c)_j| / |w_j|`` (the number of drops, relaxed) give
    the mask. Unlike the greedy steps of :func:`fit_masks`, this fit is not misled by a row of
    the same token at another position, which the span also holds and which nearly explains the
    target with that row's dropped coordinates. ``known`` (masks, one per row) makes dropping
    a coordinate those masks dropped cost :data:`KNOWN_DROP_COST` times more: the fit then
    looks for a second row of the token, with another mask. Iteratively reweighted least squares,
    batched over rows, in the span's coordinates.
    """
    with _one_thread():
        w = targets.double()
        scale = w.abs().amax(1, keepdim=True).clamp_min(1e-300)
        magnitude = w.abs().clamp_min(1e-9 * scale)
        # Uneven costs break ties between equally sparse solutions (several rows of one token),
        # which the reweighting would otherwise blend.
        generator = torch.Generator().manual_seed(0)
        cost = 1 + torch.rand(w.shape, generator=generator, dtype=w.dtype)
        if known is not None:
            cost = cost + (KNOWN_DROP_COST - 1) * (~known.cpu()).double()
        basis = space.basis
        coefficients = w @ basis.T
        for _ in range(_LAD_ROUNDS):
            drop = (w - coefficients @ basis).abs() / magnitude
            weight = cost / (magnitude.square() * (drop + _LAD_EPSILON))
            gram = (basis[None] * weight[:, None, :]) @ basis.T
            right = (weight * w) @ basis.T
            coefficients = torch.linalg.solve(gram, right[:, :, None])[:, :, 0]
        drops = (w - coefficients @ basis).abs() / magnitude
        # Several rows of one token let the fit blend their masks (each coordinate a fraction
        # dropped); from the union of the drops, restoring toggles reach one of them.
        cuts = _LAD_CUTS if known is None else _BLEND_CUTS
        fits = [_toggle(w, space.projector, max_toggles, drops < cut) for cut in cuts]
        # A cut that drops more than the toggles could ever fit proves nothing: most rows fit
        # the span once enough coordinates are gone.
        residuals = torch.stack(
            [f.residuals.masked_fill((~f.keep).sum(1) > max_toggles, 1.0) for f in fits]
        )
        best = residuals.argmin(0)
        rows = torch.arange(len(w))
        keep = torch.stack([f.keep for f in fits])[best, rows]
        return MaskFit(residuals[best, rows], keep)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Runs many small element-wise steps on one thread: under load, syncing threads per step
    cost ten times the work (measured on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _toggle(
    w: torch.Tensor,
    projector: torch.Tensor,
    max_toggles: int,
    keep: torch.Tensor,
    frozen: torch.Tensor | None = None,
) -> MaskFit:
    """Returns the masks that greedy toggles from ``keep`` reach (never toggling ``frozen``
    coordinates)."""
    keep = keep.clone()
    outside = (w * keep) @ projector  # P (w * m), kept current as coordinates toggle
    diagonal = projector.diagonal()
    squared = (outside * (w * keep)).sum(1)
    active = torch.arange(len(w))
    for _ in range(max_toggles):
        rows_w, rows_keep = w[active], keep[active]
        sign = rows_keep.double() * 2 - 1
        gain = 2 * sign * rows_w * outside[active] - rows_w * rows_w * diagonal
        if frozen is not None:
            gain = gain.masked_fill(frozen[active], -torch.inf)
        best_gain, best = gain.max(1)
        moving = best_gain > _TOGGLE_GAIN * squared[active].clamp_min(1e-300)
        if not moving.any():
            break
        active, best, best_gain = active[moving], best[moving], best_gain[moving]
        step = sign[moving, best] * w[active, best]
        outside[active] -= step[:, None] * projector[best]
        keep[active, best] = ~keep[active, best]
        squared[active] -= best_gain
    masked = w * keep
    residuals = ((masked @ projector) * masked).sum(1).clamp_min(0).sqrt()
    return MaskFit(residuals / masked.norm(dim=1).clamp_min(1e-300), keep)
