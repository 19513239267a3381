"""TOPLOC activation proofs, byte-compatible with the reference ``toploc`` package (0.1.6).

A prover splits the bf16 hidden states of its generated positions, a ``[rows, hidden]`` tensor,
into chunks of ``chunk`` rows (the last may be shorter) and writes one proof per chunk:

1. Flatten the chunk row-major and take the ``topk`` entries of largest absolute value with
   ``flat.abs().topk(topk)``, exactly as the reference does, so ties resolve the same way.
2. Reduce their flat indices modulo ``m``: the largest ``m <= 65497`` under which they stay
   distinct (the reference C++ search; always 65497 when the chunk has <= 65497 elements).
3. Use each entry's 16-bit bf16 pattern (sign, 8 exponent bits, 7 mantissa bits) as the value at
   ``index mod m`` and interpolate over GF(65497) (Newton divided differences, expanded to
   monomial form). Finite bf16 patterns are at most 0xFF7F = 65407 < 65497, so each value, sign
   bit included, is a field element and evaluating at the prover's points gives it back exactly.
4. Bytes: ``m`` as 2 bytes big-endian, then the ``topk`` coefficients c0, c1, ... in ascending
   degree, each 2 bytes big-endian: ``2 + 2 * topk`` bytes (258 for topk=128).

A verifier takes ITS OWN top-k indices of its own states for the chunk, evaluates the proof
polynomial at ``index mod m`` and compares with its own bf16 values as the reference C++
``verify_proofs_bytes`` does: exponent mismatches are counted; over the exponent-matching points
the mean and the upper median (``sorted[n // 2]``) of the absolute mantissa difference are
reported, or 2**64 for both when no exponent matches. A point the prover did not have evaluates
to an essentially random field element, so it almost always counts as an exponent mismatch.

Beyond the reference (deliberate; only inputs the reference mishandles behave differently):

- The sign bit is in the proof but the reference never compares it; :class:`ChunkCheck` also
  counts sign mismatches among exponent-matching points (negated states pass the reference).
- Malformed proofs and tensors raise :class:`~protocol.errors.ProofError` instead of crashing.
  Proofs no honest prover can produce are rejected too: a modulus out of range or not the largest
  injective one, coefficients >= 65497 (non-canonical encodings).
- A chunk with fewer than ``topk`` elements (a short last chunk of a tiny model) uses all its
  elements and pads the coefficients with zeros, which leaves the polynomial unchanged; the
  reference cannot build that proof at all.
- :func:`pooled_mant_err` optionally adds a submission-level check over all chunks.

Speed (docs/proof.md has the figures): the top-k of all chunks is one batched ``topk`` over int16
magnitude patterns on the CPU (exactly the reference's selection, see :func:`_top_points`), the
finiteness check reads each chunk's largest magnitude from it instead of a pass of its own, and
the field arithmetic runs on float64 tensors (exact below 2**53, with SIMD floors instead of int64
division), all chunks at once.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import torch

from flopnet.proof.measures import (
    NO_MATCH_ERROR,
    ChunkCheck,
    ToplocThresholds,
    failing_chunks,
    pooled_failure,
    pooled_mant_err,
)
from flopnet.protocol.errors import ProofError

__all__ = [
    "MAX_TOPK",
    "PRIME",
    "PROOF_BYTES_PER_CHUNK",
    "ChunkCheck",
    "ToplocThresholds",
    "build_proofs",
    "evaluate_polynomials",
    "failing_chunks",
    "gf_inverse",
    "injective_moduli",
    "newton_coefficients",
    "pooled_failure",
    "pooled_mant_err",
    "verify_proofs",
]

PRIME = 65497
"""The field GF(65497) of the reference (``MOD_N`` in its ``ndd.cpp``), also the top modulus."""

MAX_TOPK = 4096
"""Interpolation costs O(topk^2) per chunk; larger values are refused rather than run for hours."""

# The reference keeps indices in a C ``int``; larger chunks would wrap around there.
_MAX_CHUNK_ELEMENTS = 2**31 - 1
# int64 elements held at once by the [chunks, candidates, k] residue table of the modulus search.
_SEARCH_BUDGET = 1 << 22
# bf16 elements per batched top-k call (its int16 key copy is 8 MiB).
_TOPK_BLOCK_ELEMENTS = 1 << 22

_NOT_FINITE = "hidden states contain NaN or infinity"
_EXP_MASK = 0x7F80
_MANT_MASK = 0x007F


def PROOF_BYTES_PER_CHUNK(topk: int) -> int:
    """Size of one chunk's proof: 2 bytes of modulus and 2 bytes per coefficient."""
    return 2 + 2 * topk


# --------------------------------------------------------------------------------------------------
# GF(65497) arithmetic
#
# Field elements are held as integers in float64 tensors. A product of two elements is below 2**32,
# exact in float64, and float64 multiplies, floors and fused adds are SIMD operations on CPUs (int64
# division is not), which makes interpolation and evaluation several times faster than int64 with
# ``%``. The public helpers take and return int64.

_INV_P = math.nextafter(1.0 / PRIME, math.inf)  # >= 1/p, see _reduce_
_F64 = torch.float64

_INVERSE_TABLES: dict[torch.device, torch.Tensor] = {}


def _reduce_(x: torch.Tensor) -> torch.Tensor:
    """In place: integer-valued float64 ``x`` with |x| < 2**40 -> a representative in [0, p].

    ``q = floor(x * _INV_P)``: because ``_INV_P >= 1/p`` and x/p < 2**24, q is exactly
    floor(x / p) for x >= 0 (canonical result) and at most one below it for x < 0, where the
    result is then p instead of 0. p is congruent to 0, so [0, p] is a valid lazy range for
    further products (< 2**33); :func:`_canonical` maps p to 0 at the end.
    """
    q = torch.mul(x, _INV_P).floor_()
    return x.add_(q, alpha=-PRIME)


def _canonical(x: torch.Tensor) -> torch.Tensor:
    """Representatives in [0, p] -> int64 in [0, p)."""
    return x.masked_fill(x == PRIME, 0.0).to(torch.int64)


def gf_inverse(a: torch.Tensor) -> torch.Tensor:
    """Elementwise inverse in GF(65497) by Fermat, a**(p-2); 0 maps to 0. Input any int64 tensor."""
    base = a.to(torch.int64) % PRIME
    result = torch.ones_like(base)
    exponent = PRIME - 2
    while exponent:
        if exponent & 1:
            result = result * base % PRIME
        base = base * base % PRIME
        exponent >>= 1
    return result


def _inverse_table(device: torch.device) -> torch.Tensor:
    """float64 inverses of d - p for d in [0, 2p): index a difference x_i - x_l plus p directly."""
    # One table per device turns every division into a single gather, with no reduction first.
    table = _INVERSE_TABLES.get(device)
    if table is None:
        inverse = gf_inverse(torch.arange(PRIME, dtype=torch.int64, device=device))
        table = torch.cat([inverse, inverse]).to(_F64)
        _INVERSE_TABLES[device] = table
    return table


def newton_coefficients(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Monomial coefficients (ascending degree) of the polynomials through points (x, y) over GF(p).

    ``x`` and ``y`` are ``[batch, k]`` integer tensors; each row's x must be distinct mod p.
    Same result as the reference ``compute_newton_coefficients``: the interpolant of degree < k
    is unique, so the order of the points does not matter. Returns int64 in [0, p).
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ProofError(
            f"interpolation needs two equal [batch, k] tensors, got {x.shape}, {y.shape}"
        )
    batch, k = x.shape
    x = x.to(torch.int64) % PRIME
    y = y.to(torch.int64) % PRIME
    if k > 1 and bool((x.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise ProofError("interpolation points must be distinct modulo 65497")
    if batch == 0 or k <= 1:
        return y.clone()
    # Memory is O(batch * k); the k sequential levels are what costs, so one batch for all rows.
    dd = _divided_differences(x, y.to(_F64))
    return _canonical(_newton_to_monomial(x, dd))


def _divided_differences(x: torch.Tensor, dd: torch.Tensor) -> torch.Tensor:
    """Newton divided differences: level j sets dd_i <- (dd_i - dd_{i-1}) / (x_i - x_{i-j}).

    ``x`` int64 in [0, p), ``dd`` float64 (modified in place and returned).
    """
    k = x.shape[1]
    inverse = _inverse_table(x.device)
    for j in range(1, k):
        # 1/(x_i - x_{i-j}): the difference plus p indexes the table directly, no reduction.
        where = torch.sub(x[:, j:], x[:, :-j]).add_(PRIME)
        step = inverse.index_select(0, where.view(-1)).view(where.shape)
        level = torch.sub(dd[:, j:], dd[:, j - 1 : -1]).mul_(step)
        dd[:, j:] = _reduce_(level)
    return dd


def _newton_to_monomial(x: torch.Tensor, dd: torch.Tensor) -> torch.Tensor:
    # Horner on the Newton form, c <- c * (X - x_i) + dd_i for i = k-2 .. 0, on coefficient
    # vectors. c slides left through one buffer whose first k columns hold dd: before step i it
    # sits in columns i+1 .. k-1 (degree k-2-i), and column i already holds dd_i, so "shift up,
    # then add dd_i" is one slice of width k-i; the columns beyond stay zero and are never read.
    batch, k = x.shape
    buf = torch.zeros((batch, k + 1), dtype=_F64, device=x.device)
    buf[:, :k] = dd
    minus_x = (PRIME - x).to(_F64)
    for i in range(k - 2, -1, -1):
        step = torch.mul(buf[:, i + 1 : k + 1], minus_x[:, i : i + 1]).add_(buf[:, i:k])
        buf[:, i:k] = _reduce_(step)
    return buf[:, :k]


def evaluate_polynomials(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Evaluate row b's polynomial (``[batch, n]``, ascending) at its ``[batch, k]`` points."""
    if coeffs.dim() != 2 or x.dim() != 2 or coeffs.shape[0] != x.shape[0] or coeffs.shape[1] == 0:
        raise ProofError(f"cannot evaluate {tuple(coeffs.shape)} coefficients at {tuple(x.shape)}")
    c = (coeffs.to(torch.int64) % PRIME).to(_F64)
    points = (x.to(torch.int64) % PRIME).to(_F64)
    n = c.shape[1]
    result = c[:, n - 1 : n].expand_as(points).clone()
    for j in range(n - 2, -1, -1):
        result = _reduce_(result.mul_(points).add_(c[:, j : j + 1]))
    return _canonical(result)


def injective_moduli(x: torch.Tensor) -> torch.Tensor:
    """For each row of ``[batch, k]`` indices >= 0, the largest m <= 65497 keeping them distinct.

    Mirrors the reference C++ search (65497 downwards), testing blocks of candidates at once.
    """
    if x.dim() != 2:
        raise ProofError(f"modulus search needs [batch, k] indices, got {tuple(x.shape)}")
    batch, k = x.shape
    x = x.to(torch.int64)
    result = torch.zeros(batch, dtype=torch.int64, device=x.device)
    pending = torch.arange(batch, device=x.device)
    high = PRIME
    low = max(k, 1)  # fewer residues than points can never be injective
    width = 16  # an honest chunk almost always succeeds within the first few candidates
    while pending.numel() > 0 and high >= low:
        count = min(width, high - low + 1, max(1, _SEARCH_BUDGET // max(1, pending.numel() * k)))
        candidates = torch.arange(high, high - count, -1, dtype=torch.int64, device=x.device)
        residues = (x[pending][:, None, :] % candidates[None, :, None]).sort(dim=-1).values
        injective = (residues[..., 1:] != residues[..., :-1]).all(dim=-1)  # [pending, count]
        found = injective.any(dim=1)
        first = injective.to(torch.int8).argmax(dim=1)  # argmax returns the first maximum
        result[pending[found]] = candidates[first[found]]
        pending = pending[~found]
        high -= count
        width *= 8
    if pending.numel() > 0:
        raise ProofError("no modulus <= 65497 keeps the top-k indices distinct")
    return result


# --------------------------------------------------------------------------------------------------
# Input checks


def _check_params(chunk: object, topk: object) -> tuple[int, int]:
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk <= 0:
        raise ProofError(f"chunk must be a positive int, got {chunk!r}")
    if not isinstance(topk, int) or isinstance(topk, bool) or topk <= 0:
        raise ProofError(f"topk must be a positive int, got {topk!r}")
    if topk > MAX_TOPK:
        raise ProofError(f"topk {topk} exceeds the supported maximum {MAX_TOPK}")
    return chunk, topk


def _check_hidden(hidden: object, chunk: int, topk: int) -> torch.Tensor:
    if not isinstance(hidden, torch.Tensor):
        raise ProofError(f"hidden states must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dtype != torch.bfloat16:
        raise ProofError(f"hidden states must be bfloat16, got {hidden.dtype}")
    if hidden.dim() != 2:
        raise ProofError(
            f"hidden states must be 2-D [positions, hidden], got shape {tuple(hidden.shape)}"
        )
    rows, width = hidden.shape
    if rows == 0 or width == 0:
        raise ProofError(f"hidden states are empty (shape {tuple(hidden.shape)})")
    if topk > chunk * width:
        # Even a full chunk could not supply topk points: a configuration error, not data.
        raise ProofError(f"topk {topk} exceeds the {chunk * width} elements of a {chunk}-row chunk")
    if min(chunk, rows) * width > _MAX_CHUNK_ELEMENTS:
        raise ProofError(
            f"a chunk of {min(chunk, rows) * width} elements exceeds 2**31 - 1 indices"
        )
    # Finiteness is checked in _top_points, from each chunk's largest magnitude, for free.
    return hidden.detach().contiguous()


def _chunk_groups(rows: int, width: int, chunk: int, topk: int) -> list[tuple[int, int, int]]:
    """(first chunk, chunk count, points per chunk) for runs of chunks with equal point counts."""
    n_chunks = math.ceil(rows / chunk)
    last_k = min(topk, (rows - (n_chunks - 1) * chunk) * width)
    if last_k == topk:  # a short last chunk with enough elements batches with the full ones
        return [(0, n_chunks, topk)]
    groups = [(0, n_chunks - 1, topk)] if n_chunks > 1 else []
    return [*groups, (n_chunks - 1, 1, last_k)]


def _top_points(
    hidden: torch.Tensor, first: int, count: int, chunk: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat top-k indices and bf16 bit patterns of chunks first..first+count-1, as [count, k].

    The indices must be exactly the reference's ``flat.abs().topk(k).indices``, ties included,
    or the proof bytes change. On the CPU, torch's topk runs the same selection (a heap over
    (value, index) pairs) on every row of a batch as on a 1-D tensor, and the 15-bit magnitude
    pattern of a finite bf16 orders exactly like its absolute value, equal magnitudes included,
    so one batched topk over those int16 patterns picks the same indices (tested against the 1-D
    bf16 topk on tie-heavy data) at a fraction of the cost. Other devices have other kernels, so
    there each chunk gets the reference's own 1-D bf16 topk.
    """
    width = hidden.shape[1]
    full = min(count, hidden.shape[0] // chunk - first)  # chunks with all their rows
    indices: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    if hidden.device.type == "cpu" and full > 0:
        per_block = min(full, max(1, _TOPK_BLOCK_ELEMENTS // (chunk * width)))
        # One key buffer for all blocks: fresh large allocations cost a page fault per 4 KiB.
        buffer = torch.empty((per_block, chunk * width), dtype=torch.int16)
        for lo in range(first, first + full, per_block):
            hi = min(first + full, lo + per_block)
            raw = hidden[lo * chunk : hi * chunk].view(torch.int16).reshape(hi - lo, chunk * width)
            keys = torch.bitwise_and(raw, 0x7FFF, out=buffer[: hi - lo])
            top = keys.topk(k, dim=1)
            # The first (largest) magnitude pattern is >= 0x7F80 exactly when a chunk holds an
            # infinity or a NaN, which saves a separate pass over the states.
            if bool((top.values[:, 0] >= _EXP_MASK).any()):
                raise ProofError(_NOT_FINITE)
            idx = top.indices
            indices.append(idx)
            values.append(raw.gather(1, idx))
        done = full
    else:
        done = 0
    for c in range(first + done, first + count):
        flat = hidden[c * chunk : (c + 1) * chunk].reshape(-1)
        top = flat.abs().topk(k)
        if not bool(torch.isfinite(top.values[0])):  # topk puts NaN first, like infinity
            raise ProofError(_NOT_FINITE)
        idx = top.indices
        indices.append(idx[None])
        values.append(flat[idx].view(torch.int16)[None])
    return torch.cat(indices), torch.cat(values).to(torch.int64) & 0xFFFF


# --------------------------------------------------------------------------------------------------
# Public API


def build_proofs(hidden: torch.Tensor, chunk: int = 32, topk: int = 128) -> list[bytes]:
    """Build one ``2 + 2*topk``-byte proof per ``chunk`` rows of 2-D bf16 ``hidden`` states."""
    chunk, topk = _check_params(chunk, topk)
    hidden = _check_hidden(hidden, chunk, topk)
    rows, width = hidden.shape
    proofs: list[bytes] = []
    with torch.no_grad():
        for first, count, k in _chunk_groups(rows, width, chunk, topk):
            indices, values = _top_points(hidden, first, count, chunk, k)
            moduli = injective_moduli(indices)
            coeffs = newton_coefficients(indices % moduli[:, None], values)
            if k < topk:  # short chunk: zero high coefficients leave the polynomial unchanged
                coeffs = torch.nn.functional.pad(coeffs, (0, topk - k))
            words = torch.cat([moduli[:, None], coeffs], dim=1).cpu().tolist()
            proofs.extend(struct.pack(f">{topk + 1}H", *row) for row in words)
    return proofs


def build_proofs_many(
    hiddens: Sequence[torch.Tensor], chunk: int = 32, topk: int = 128
) -> list[list[bytes]]:
    """``[build_proofs(h) for h in hiddens]``, byte for byte, with one interpolation for all.

    The Newton interpolation costs ~5 ms a call on a CPU whatever the number of chunks (127
    sequential steps, each vectorised over chunks), so the rows of a batched generation are
    interpolated together: 8 rows of a tiny model, 41 ms one by one, a few ms together.
    """
    chunk, topk = _check_params(chunk, topk)
    pieces: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []  # row, indices, values, k
    with torch.no_grad():
        for row, raw in enumerate(hiddens):
            hidden = _check_hidden(raw, chunk, topk)
            rows, width = hidden.shape
            for first, count, k in _chunk_groups(rows, width, chunk, topk):
                indices, values = _top_points(hidden, first, count, chunk, k)
                pieces.append((row, indices, values, k))
        words: list[list[list[int]]] = [[] for _ in pieces]
        for k in sorted({piece[3] for piece in pieces}):
            members = [i for i, piece in enumerate(pieces) if piece[3] == k]
            indices = torch.cat([pieces[i][1] for i in members])
            values = torch.cat([pieces[i][2] for i in members])
            moduli = injective_moduli(indices)
            coeffs = newton_coefficients(indices % moduli[:, None], values)
            if k < topk:
                coeffs = torch.nn.functional.pad(coeffs, (0, topk - k))
            rows_of_words = torch.cat([moduli[:, None], coeffs], dim=1).cpu().tolist()
            at = 0
            for i in members:
                count = pieces[i][1].shape[0]
                words[i] = rows_of_words[at : at + count]
                at += count
    out: list[list[bytes]] = [[] for _ in hiddens]
    for (row, *_), piece_words in zip(pieces, words, strict=True):
        out[row].extend(struct.pack(f">{topk + 1}H", *w) for w in piece_words)
    return out


def _parse_proofs(proofs: object, n_chunks: int, topk: int) -> tuple[list[int], list[list[int]]]:
    if not isinstance(proofs, list | tuple):
        raise ProofError(f"proofs must be a list of bytes, got {type(proofs).__name__}")
    if len(proofs) != n_chunks:
        raise ProofError(f"expected {n_chunks} proofs for these hidden states, got {len(proofs)}")
    size = PROOF_BYTES_PER_CHUNK(topk)
    moduli: list[int] = []
    coeffs: list[list[int]] = []
    for i, proof in enumerate(proofs):
        if not isinstance(proof, bytes):
            raise ProofError(f"proof {i} must be bytes, got {type(proof).__name__}")
        if len(proof) != size:
            raise ProofError(f"proof {i} has {len(proof)} bytes, expected {size}")
        modulus, *words = struct.unpack(f">{topk + 1}H", proof)
        if max(words) >= PRIME:
            raise ProofError(
                f"proof {i} has a coefficient >= {PRIME} (not a canonical field element)"
            )
        moduli.append(modulus)
        coeffs.append(words)
    return moduli, coeffs


def verify_proofs(
    hidden: torch.Tensor, proofs: list[bytes], chunk: int = 32, topk: int = 128
) -> list[ChunkCheck]:
    """Compare each chunk's proof with the verifier's own bf16 ``hidden`` states.

    Raises :class:`ProofError` for unusable inputs; otherwise returns one :class:`ChunkCheck` per
    chunk with the reference's statistics (and the sign count), leaving the verdict to
    :func:`failing_chunks`.
    """
    chunk, topk = _check_params(chunk, topk)
    hidden = _check_hidden(hidden, chunk, topk)
    rows, width = hidden.shape
    n_chunks = math.ceil(rows / chunk)
    moduli, all_coeffs = _parse_proofs(proofs, n_chunks, topk)
    for c, m in enumerate(moduli):
        chunk_elements = min(chunk, rows - c * chunk) * width
        k = min(topk, chunk_elements)
        if m == 0 or m > PRIME:
            raise ProofError(f"proof {c} has modulus {m}, outside 1..{PRIME}")
        if m < k:
            raise ProofError(f"proof {c} has modulus {m}, too small to keep {k} indices distinct")
        if chunk_elements <= PRIME and m != PRIME:
            # Every index of such a chunk is below 65497, so the largest injective modulus is 65497.
            raise ProofError(
                f"proof {c} has modulus {m}; a {chunk_elements}-element chunk needs {PRIME}"
            )

    checks: list[ChunkCheck] = []
    with torch.no_grad():
        device = hidden.device
        for first, count, k in _chunk_groups(rows, width, chunk, topk):
            indices, own = _top_points(hidden, first, count, chunk, k)
            mod = torch.tensor(moduli[first : first + count], dtype=torch.int64, device=device)
            coeffs = torch.tensor(
                all_coeffs[first : first + count], dtype=torch.int64, device=device
            )
            claimed = evaluate_polynomials(coeffs, indices % mod[:, None])
            checks.extend(_compare(claimed, own))
    return checks


def _compare(claimed: torch.Tensor, own: torch.Tensor) -> list[ChunkCheck]:
    """Reference statistics per row of [chunks, k] bit patterns, plus our sign count."""
    exp_match = (claimed & _EXP_MASK) == (own & _EXP_MASK)
    matched = exp_match.sum(dim=1)
    mant_err = ((claimed & _MANT_MASK) - (own & _MANT_MASK)).abs()
    err_sum = torch.where(exp_match, mant_err, 0).sum(dim=1)
    # Upper median like the reference C++ (sorted[n // 2]); unmatched points sort past every error.
    ordered = torch.where(exp_match, mant_err, 1 << 20).sort(dim=1).values
    median = ordered.gather(1, (matched // 2).clamp(max=ordered.shape[1] - 1)[:, None])[:, 0]
    # Bit 15 is carried by the proof; +0 and -0 are one value, so a zero's sign is not compared.
    sign_diff = exp_match & (((claimed ^ own) >> 15) & 1 == 1) & ((own & 0x7FFF) != 0)
    sign = sign_diff.sum(dim=1)
    k = claimed.shape[1]
    rows = torch.stack([matched, err_sum, median, sign], dim=1).cpu().tolist()
    checks = []
    for n_match, total, med, n_sign in rows:
        if n_match == 0:
            checks.append(ChunkCheck(k, NO_MATCH_ERROR, NO_MATCH_ERROR, 0))
        else:
            checks.append(ChunkCheck(k - n_match, total / n_match, float(med), n_sign))
    return checks
