"""Text normalisation and near-duplicate signatures for loop detection (private).

Loop detection compares a tool step with the step one period earlier. Raw
arguments and results differ in trivial ways between two calls that are, for
the agent, the same call: timestamps, request ids, whitespace, case. This
module turns text into things that can be compared in bulk:

* :func:`normalize_expr` -- a Polars expression that lowercases, masks ISO
  timestamps (``<ts>``), UUIDs and hex-like ids of 8+ characters (which
  includes plain numbers of 8+ digits, e.g. epoch times and numeric request
  ids) as ``<id>``, and collapses whitespace.
* :func:`numbers_expr` -- the standalone numbers left after normalisation
  (``"page": 2``, ``"progress": 40``). Numbers are *content*: two texts whose
  numbers differ are never near-duplicates, so pagination and polling with
  changing progress are not mistaken for no-progress loops.
* :func:`minhash` -- MinHash signatures over hashed character 4-gram shingles,
  computed with numpy over the Arrow byte buffer (no Python loop over rows).
  The fraction of equal signature components estimates the Jaccard
  similarity of the two shingle sets (standard error ``sqrt(J(1-J)/n_hashes)``,
  about 0.05 at J = 0.8 with the default 64 hashes).

Examples
--------
>>> import polars as pl
>>> from driftwatch._signatures import normalize_expr, minhash, estimated_jaccard
>>> s = pl.DataFrame({"t": ['{"q": "Refund  status", "sent_at": "2026-10-01T07:29:54.393Z"}']})
>>> s.select(normalize_expr(pl.col("t"))).item()
'{"q": "refund status", "sent_at": "<ts>"}'
>>> sig = minhash(pl.Series(["refund status of order", "refund status of an order"]))
>>> bool(estimated_jaccard(sig[:1], sig[1:])[0] > 0.6)
True
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

#: ISO-8601 date-times with a time of day (a bare date is content, not noise).
TIMESTAMP_RE = r"\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:z|[+-]\d{2}:?\d{2})?"
#: UUIDs (any version), after lowercasing.
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: Hex-like ids and long numbers: a word made of 8 or more hex characters.
HEX_ID_RE = r"\b[0-9a-f]{8,}\b"
#: Standalone numbers (not part of a word such as ``v2`` or ``it3a``).
NUMBER_RE = r"\b\d+(?:\.\d+)?\b"

SHINGLE = 4


def normalize_expr(expr: pl.Expr) -> pl.Expr:
    """Normalise text for comparison: lowercase, mask volatile tokens, collapse whitespace.

    Nulls become the empty string, so "no arguments" equals "no arguments".
    """
    return (
        expr.fill_null("")
        .str.to_lowercase()
        .str.replace_all(TIMESTAMP_RE, "<ts>")
        .str.replace_all(UUID_RE, "<id>")
        .str.replace_all(HEX_ID_RE, "<id>")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def numbers_expr(normalized: pl.Expr) -> pl.Expr:
    """The standalone numbers of an already normalised text, joined by commas."""
    return normalized.str.extract_all(NUMBER_RE).list.join(",")


def _affine_params(n_hashes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, n_hashes, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, n_hashes, dtype=np.uint64).astype(np.uint32)
    return a, b


def minhash(
    texts: pl.Series,
    *,
    n_hashes: int = 64,
    seed: int = 0,
    max_grams: int = 4_000_000,
) -> np.ndarray:
    """MinHash signatures of character 4-gram shingles, one row per text.

    Each text is padded with three sentinel bytes on both sides, so every
    text (even an empty one) has at least one shingle. A shingle is the 4
    bytes read as a ``uint32``, mixed with the splitmix64 finaliser (high 32 bits kept);
    hash function ``j`` is the affine permutation ``(x * a_j + b_j) mod 2**32``
    with odd ``a_j``.
    Texts are processed in blocks of about ``max_grams`` shingles to bound
    memory.

    Parameters
    ----------
    texts : polars.Series
        Strings (nulls are treated as empty).
    n_hashes : int, default=64
        Signature length.
    seed : int, default=0
        Seed of the hash family (equal seeds give comparable signatures).
    max_grams : int, default=4_000_000
        Shingles per processing block.

    Returns
    -------
    numpy.ndarray
        ``uint32`` array of shape ``(len(texts), n_hashes)``.
    """
    n = len(texts)
    out = np.empty((n, n_hashes), dtype=np.uint32)
    if n == 0:
        return out
    pad = "\x02" * (SHINGLE - 1)
    padded = (
        pl.DataFrame({"t": texts.cast(pl.String)})
        .select(pl.concat_str(pl.lit(pad), pl.col("t").fill_null(""), pl.lit(pad)))
        .to_series()
    )
    arr = padded.to_arrow().cast(pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offs = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    lengths = np.diff(offs)
    grams_per = lengths - (SHINGLE - 1)  # >= SHINGLE - 1 >= 1 thanks to the padding
    a, b = _affine_params(n_hashes, seed)
    cum = np.concatenate([[0], np.cumsum(grams_per)])
    # blocks of whole texts with about max_grams shingles each
    bounds = np.searchsorted(cum, np.arange(0, cum[-1], max_grams), side="right") - 1
    bounds = np.unique(np.concatenate([bounds, [n]]))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        g_counts = grams_per[lo:hi]
        total = int(g_counts.sum())
        seg_starts = cum[lo:hi] - cum[lo]
        # byte position of every shingle start
        pos = np.arange(total, dtype=np.int64) + np.repeat(offs[lo:hi] - seg_starts, g_counts)
        x = data[pos].astype(np.uint64)
        for k in range(1, SHINGLE):
            x |= data[pos + k].astype(np.uint64) << np.uint64(8 * k)
        # splitmix64 finaliser so that similar shingles get unrelated hashes
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        x32 = (x >> np.uint64(32)).astype(np.uint32)
        del x
        starts = seg_starts.astype(np.int64)
        h = np.empty_like(x32)
        for j in range(n_hashes):
            np.multiply(x32, a[j], out=h)
            h += b[j]
            out[lo:hi, j] = np.minimum.reduceat(h, starts)
    return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard estimate: the fraction of equal MinHash components."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signature shapes differ: {sig_a.shape} vs {sig_b.shape}")
    if sig_a.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return (sig_a == sig_b).mean(axis=1)


__all__ = [
    "HEX_ID_RE",
    "NUMBER_RE",
    "TIMESTAMP_RE",
    "UUID_RE",
    "estimated_jaccard",
    "minhash",
    "normalize_expr",
    "numbers_expr",
]
