"""Text normalisation and near-duplicate signatures for loop detection (private).

Loop detection compares a tool step with the step one period earlier. Raw
arguments and results differ in trivial ways between two calls that are, for
the agent, the same call: timestamps, request ids, whitespace, case. This
module turns text into things that can be compared in bulk:

* :func:`normalize_expr` -- a Polars expression that lowercases, masks ISO
  timestamps (``<ts>``), UUIDs, hex-like ids of 8+ characters (which
  includes plain numbers of 8+ digits, e.g. epoch times and numeric request
  ids) and generated ids of 16+ letters and digits (base36/base62, such as
  ``req_8kx2pqz1abcd9mnq``) as ``<id>``, and collapses whitespace.
* :func:`numbers_expr` -- the standalone numbers left after normalisation
  (``"page": 2``, ``"progress": 40``). Numbers are *content*: two texts whose
  numbers differ are never near-duplicates, so pagination and polling with
  changing progress are not mistaken for no-progress loops. So are positions:
  the value after a paging or polling key (``cursor``, ``page_token``,
  ``next_cursor``, ``offset``, ``after``, ``since``, ...) is kept unmasked at
  the end of the normalised text, so a cursor that is a UUID, an ``OFFSET
  12000000`` or an epoch-ms ``since`` still tells page from page.
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

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

#: ISO-8601 date-times with a time of day (a bare date is content, not noise).
TIMESTAMP_RE = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[t ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:z|[+-][0-9]{2}:?[0-9]{2})?"
)
#: UUIDs (any version), after lowercasing.
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: Hex-like ids and long numbers: a word made of 8 or more hex characters.
HEX_ID_RE = r"(?-u:\b)[0-9a-f]{8,}(?-u:\b)"
#: Generated ids in other alphabets (base36/base62: ``req_8kx2pqz1abcd9mnq``, ``chatcmpl-8f9d2kq0zz81mm``):
#: a run of 16 or more letters and digits with a digit among its first 16 characters (a long
#: word is not an id; the run's first character is kept as the boundary, group 1).
ALNUM_ID_RE = "(^|[^a-z0-9])(?:" + "|".join(f"[a-z]{{{i}}}[0-9][a-z0-9]{{{15 - i},}}" for i in range(16)) + ")"
#: Standalone numbers (not part of a word such as ``v2`` or ``it3a``).
NUMBER_RE = r"(?-u:\b)[0-9]+(?:\.[0-9]+)?(?-u:\b)"
#: Paging and polling keys (lowercased; ``_`` may be ``-`` or nothing, so ``nextPageToken``,
#: ``next-page-token`` and ``next_page_token`` are one key): their values are positions.
POSITION_KEYS = (
    "cursor", "next_cursor", "prev_cursor", "previous_cursor", "start_cursor", "end_cursor", "page_cursor",
    "next_page_cursor", "cursor_id", "page", "page_number", "page_num", "page_index", "page_no", "page_token",
    "next_page_token", "prev_page_token", "next_token", "continuation", "continuation_token",
    "next_continuation_token", "pagination_token", "$skiptoken", "skiptoken", "skip_token", "sync_token",
    "resume_token", "marker", "next_marker", "offset", "skip", "start_index", "after", "before", "starting_after",
    "ending_before", "start_after", "search_after", "since", "until", "since_id", "max_id", "min_id",
    "updated_since", "modified_since", "updated_after", "created_after", "exclusive_start_key",
    "last_evaluated_key", "scroll_id", "after_id",
)
_KEY_ALTERNATIVES = "|".join(
    sorted((k.replace("$", r"\$").replace("_", "[_-]?") for k in POSITION_KEYS), key=len, reverse=True)
)
#: A paging or polling key and its value, in lowercased text: ``"cursor": "3f2a..."``,
#: ``offset=12000000``, ``"since": 1764000000000``, ``"after": "2026-10-01 10:00:00"``, and
#: DynamoDB's ``"ExclusiveStartKey": {"pk": {"S": "order#7c9e..."}}`` (an object with what it
#: nests; a list up to its first closing bracket), ``--cursor=...``, OData's ``$skip=...`` and
#: SQL's ``OFFSET 12000000``. A key needs ``:`` or ``=`` after it (a command line's ``--key``,
#: SQL's ``offset``/``skip`` a space): prose ("try again after <time>") is no position. A key
#: before ``:`` must also not follow a word and a space on its line: "Retry after: <time>" is
#: prose, ``{after: 5}``, ``"after": 5``, a YAML line ``after: 5`` and list item ``- after: 5``
#: are keys.
POSITION_RE = (
    # (after a word's end or OData's "$", not "retry-after", a header's time; before ":" after
    # the line's start or punctuation and spaces only; a command line's "--cursor=x" or
    # "--cursor x"; SQL's "offset n")
    rf"(?:(?:^|[^a-z0-9_$-]|\$)(?:(?:{_KEY_ALTERNATIVES})[\"']?\s*=|(?:offset|skip)\s)"
    rf"|(?:^[ \t]*|[^a-z0-9_$ \t-][ \t]*|-[ \t]+|\$)(?:{_KEY_ALTERNATIVES})[\"']?\s*:"
    rf"|--(?:{_KEY_ALTERNATIVES})[=\s])\s*[\"']?"
    # (an object: its nested objects too, three deep; a list: up to its first end)
    rf"(?:{TIMESTAMP_RE}|\{{(?:[^{{}}]|\{{(?:[^{{}}]|\{{[^{{}}]*\}})*\}})*\}}?|\[[^\]]*|[^\"'\s,&;}}\])]+)"
)
#: Separates the normalised text from the positions appended to it (see :func:`normalize_expr`).
POSITION_SEP = "\x1f"
#: Runs of whitespace worth rewriting (single spaces are left alone: far fewer matches).
_WS_RE = r"\s{2,}|[^\S ]"

SHINGLE = 4


def normalize_expr(expr: pl.Expr, *, positions: bool = True) -> pl.Expr:
    """Normalise text for comparison: lowercase, mask volatile tokens, collapse whitespace.

    Nulls become the empty string, so "no arguments" equals "no arguments". The paging and
    polling positions of the text (:data:`POSITION_RE`) follow, unmasked, each after
    :data:`POSITION_SEP` (which the text's own ``\x1f`` characters become spaces to make room
    for); ``positions=False`` leaves them out (an LLM prompt pages nothing).
    """
    low = expr.fill_null("").str.to_lowercase().str.replace_all(POSITION_SEP, " ", literal=True)
    text = _mask_volatile(low).str.replace_all(_WS_RE, " ").str.strip_chars()
    return _with_positions(text, low) if positions else text


def _with_positions(text: pl.Expr, low: pl.Expr) -> pl.Expr:
    found = low.str.extract_all(POSITION_RE)
    # key and value only: ``offset=12``, ``"offset": 12`` and ``OFFSET 12`` read ``offset12``
    bare = pl.element().str.replace_all(r"[\s\"':=]", "").str.replace(r"^[^a-z0-9_]", "")
    joined = found.list.eval(pl.concat_str(pl.lit(POSITION_SEP), bare)).list.join("")
    return pl.when(found.list.len() > 0).then(pl.concat_str(text, joined)).otherwise(text)


def normalize(texts: pl.Series, *, positions: bool = True) -> pl.Series:
    """:func:`normalize_expr` for a Series, faster: the masks run only on texts that
    contain a digit (every masked token does) and the whitespace rewrite only on texts
    that may have a run of spaces or other whitespace. Same output."""
    raw = texts.fill_null("").str.to_lowercase().str.replace_all(POSITION_SEP, " ", literal=True)
    low = raw.clone()  # (scatter writes in place)
    for guard, rewrite in (
        (lambda t: t.str.contains("[0-9]"), _mask_volatile),
        (_may_have_whitespace_run, lambda e: e.str.replace_all(_WS_RE, " ")),
    ):
        idx = guard(low).arg_true()
        if idx.len():
            low = low.scatter(idx, low.gather(idx).to_frame("t").select(rewrite(pl.col("t"))).to_series())
    low = low.str.strip_chars()
    idx = raw.str.contains(POSITION_RE).arg_true() if positions else pl.Series(dtype=pl.UInt32)
    if idx.len():
        pos = pl.DataFrame({"t": low.gather(idx), "r": raw.gather(idx)}).select(_with_positions(pl.col("t"), pl.col("r")))
        low = low.scatter(idx, pos.to_series())
    return low.alias(texts.name)


def _may_have_whitespace_run(texts: pl.Series) -> pl.Series:
    r"""A superset of ``texts.str.contains(r"\s\s|[^\S ]")`` that is cheaper to compute: two
    spaces, another ASCII whitespace character, or any non-ASCII character."""
    return (
        texts.str.contains("  ", literal=True)
        | texts.str.contains("[\t\n\x0b\x0c\r]")
        | (texts.str.len_bytes() != texts.str.len_chars())
    )


def _mask_volatile(expr: pl.Expr) -> pl.Expr:
    return (
        expr.str.replace_all(TIMESTAMP_RE, "<ts>")
        .str.replace_all(UUID_RE, "<id>")
        .str.replace_all(HEX_ID_RE, "<id>")
        .str.replace_all(ALNUM_ID_RE, "${1}<id>")
    )


def numbers_expr(normalized: pl.Expr) -> pl.Expr:
    """The standalone numbers of an already normalised text, and its positions (see
    :func:`normalize_expr`), as a list of strings: what two near-duplicates must share."""
    return normalized.str.extract_all(f"{NUMBER_RE}|{POSITION_SEP}[^{POSITION_SEP}]*")


MAX_HASHES = 256

#: Byte map of ``words_only``: ASCII punctuation and whitespace become a space.
_WORDS_LUT = np.arange(256, dtype=np.uint8)
_WORDS_LUT[[c for c in range(33, 127) if not chr(c).isalnum()] + [9, 10, 11, 12, 13]] = 32
_WORDS_TABLE = _WORDS_LUT.tobytes()
#: Threads of :func:`minhash` and :func:`near_duplicates` (1 or 2), and the fewest texts per thread.
_THREADS = 2
_MIN_HALF = 20_000


def _affine_params(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, MAX_HASHES, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, MAX_HASHES, dtype=np.uint64).astype(np.uint32)
    return a, b


def minhash(
    texts: pl.Series,
    *,
    n_hashes: int = 64,
    first: int = 0,
    seed: int = 0,
    words_only: bool = True,
    max_bytes: int = 1 << 16,
    threads: int | None = None,
) -> np.ndarray:
    """MinHash signatures of character 4-gram shingles, one row per text.

    Each text is padded with three sentinel bytes on both sides, so every
    text (even an empty one) has at least one shingle. A shingle is 4
    consecutive bytes read as a ``uint32`` and mixed with the (bijective)
    murmur3 finaliser; hash function ``j`` is the affine permutation
    ``(x * a_j + b_j) mod 2**32`` with odd ``a_j``. Shingles are read for
    every byte of the concatenated buffer at once; the 3 that would straddle
    two texts are replaced by their text's first shingle, which changes no set.
    Texts are processed in blocks of about ``max_bytes`` bytes to bound memory,
    and many texts in two halves on two threads (numpy and Polars release the GIL).

    Parameters
    ----------
    texts : polars.Series
        Strings (nulls are treated as empty).
    n_hashes : int, default=64
        Signature length.
    first : int, default=0
        Index of the first hash function of the family to use: signatures
        computed with ``first=0, n_hashes=16`` and ``first=16, n_hashes=48``
        concatenate to the 64-hash signature (used for early rejection).
    seed : int, default=0
        Seed of the hash family (equal seeds give comparable signatures).
    words_only : bool, default=True
        Read ASCII punctuation as whitespace and collapse whitespace runs before
        shingling, so that ``for: refund`` and ``for refund`` share their shingles.
    max_bytes : int, default=65536
        Bytes per processing block (small enough for the working arrays to stay in cache).
    threads : int, optional
        1 for one thread; by default many texts are processed in two halves on two threads.

    Returns
    -------
    numpy.ndarray
        ``uint32`` array of shape ``(len(texts), n_hashes)``.
    """
    _check_hashes(first, n_hashes)
    sh = _Shingles(texts, words_only=words_only, max_bytes=max_bytes, threads=threads)
    return sh.signatures(first, n_hashes, seed=seed)


def _check_hashes(first: int, n_hashes: int) -> None:
    if first < 0 or n_hashes < 1 or first + n_hashes > MAX_HASHES:
        raise ValueError(f"hash functions [{first}, {first + n_hashes}) outside the family of {MAX_HASHES}")


class _Shingles:
    """The mixed 4-gram shingle values of many texts, computed once, for MinHash signatures
    in stages (each stage on fewer texts, from the same shingles).

    ``x[offs[t]:offs[t + 1]]`` are the shingle values of text ``t`` (3 of them repeat its
    first one, see :func:`minhash`). With two threads the texts are kept in two halves,
    each prepared and hashed on its own thread.
    """

    def __init__(self, texts: pl.Series, *, words_only: bool = True, max_bytes: int = 1 << 16,
                 threads: int | None = None) -> None:
        n = len(texts)
        self.n = n
        self.max_bytes = max_bytes
        half = n // 2 if _threads(threads) > 1 and n >= 2 * _MIN_HALF else n
        self.cuts = [0, half, n] if half < n else [0, n]

        def prep(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
            return _shingle_values(texts.slice(lo, hi - lo), words_only, max_bytes)

        self.parts = self._map(prep, list(zip(self.cuts[:-1], self.cuts[1:], strict=True)))

    def _map(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        if len(args) > 1:
            with ThreadPoolExecutor(max_workers=2) as pool:
                return list(pool.map(lambda a: fn(*a), args))
        return [fn(*a) for a in args]

    def signatures(self, first: int, n_hashes: int, idx: np.ndarray | None = None, *, seed: int = 0) -> np.ndarray:
        """MinHash signatures with hash functions ``[first, first + n_hashes)`` of the texts
        ``idx`` (sorted positions; all texts by default), one row per text."""
        _check_hashes(first, n_hashes)
        a, b = _affine_params(seed)
        a, b = a[first : first + n_hashes], b[first : first + n_hashes]
        if idx is None:
            sel = [None] * len(self.parts)
            out = np.empty((self.n, n_hashes), dtype=np.uint32)
            rows = [(lo, hi) for lo, hi in zip(self.cuts[:-1], self.cuts[1:], strict=True)]
        else:
            at = np.searchsorted(idx, self.cuts)
            sel = [idx[at[k] : at[k + 1]] - self.cuts[k] for k in range(len(self.parts))]
            out = np.empty((idx.size, n_hashes), dtype=np.uint32)
            rows = list(zip(at[:-1].tolist(), at[1:].tolist(), strict=True))

        def run(k: int) -> None:
            lo, hi = rows[k]
            if hi > lo:
                x, offs = self.parts[k]
                if sel[k] is not None:
                    x, offs = _gather_texts(x, offs, sel[k])
                _hash_blocks(x, offs, a, b, self.max_bytes, out[lo:hi])

        self._map(run, [(k,) for k in range(len(self.parts))])
        return out


def _shingle_values(texts: pl.Series, words_only: bool, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixed shingle values (``x``) of padded ``texts`` and each text's start in them (``offs``)."""
    n = len(texts)
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
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offs[0] : offs[-1]]
    offs = offs - offs[0]
    if words_only:
        data = np.frombuffer(data.tobytes().translate(_WORDS_TABLE), dtype=np.uint8)
        space = data == 32
        drop = np.flatnonzero(space[1:] & space[:-1]) + 1  # 2nd+ space of a run; pads (\x02) separate texts
        keep = np.ones(data.size, dtype=bool)
        keep[drop] = False
        data = data[keep]
        offs = offs - np.searchsorted(drop, offs)
    x = np.empty(data.size, dtype=np.uint32)
    # blocks of whole texts with about max_bytes bytes each (the working arrays stay in cache)
    for lo, hi in _blocks(offs, max_bytes):
        _block_shingles(data[offs[lo] : offs[hi]], offs[lo : hi + 1] - offs[lo], x[offs[lo] : offs[hi]])
    return x, offs


def _blocks(offs: np.ndarray, max_bytes: int) -> list[tuple[int, int]]:
    """Ranges of whole texts with about ``max_bytes`` bytes each."""
    n = offs.size - 1
    bounds = np.searchsorted(offs, np.arange(offs[0], offs[-1], max_bytes), side="right") - 1
    bounds = np.unique(np.concatenate([bounds, [n]]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _block_shingles(data: np.ndarray, offs: np.ndarray, x: np.ndarray) -> None:
    """The mixed shingle values (``x``) of the padded texts ``data[offs[t]:offs[t + 1]]``."""
    m = data.size
    buf = np.zeros(m + SHINGLE - 1, dtype=np.uint8)
    buf[:m] = data
    # x[p]: bytes p..p+3 read as a little-endian uint32 (an unaligned view with a 1-byte stride)
    x[:] = np.ndarray(shape=(m,), dtype="<u4", buffer=buf, strides=(1,))
    starts = offs[:-1]
    for k in range(1, SHINGLE):  # shingles straddling two texts -> the text's first shingle
        x[offs[1:] - k] = x[starts]
    # murmur3 fmix32
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)


def _gather_texts(x: np.ndarray, offs: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shingle values of texts ``idx`` only, end to end, and their starts."""
    wanted = np.zeros(offs.size - 1, dtype=bool)
    wanted[idx] = True
    new = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(offs[idx + 1] - offs[idx], out=new[1:])
    return x[np.repeat(wanted, np.diff(offs))], new


def _hash_blocks(x: np.ndarray, offs: np.ndarray, a: np.ndarray, b: np.ndarray, max_bytes: int,
                 out: np.ndarray) -> None:
    """MinHash (``out``) of the texts ``x[offs[t]:offs[t + 1]]`` with hash functions ``a, b``."""
    for lo, hi in _blocks(offs, max_bytes):
        xb = x[offs[lo] : offs[hi]]
        starts = offs[lo:hi] - offs[lo]
        h = np.empty_like(xb)
        for j in range(a.size):
            np.multiply(xb, a[j], out=h)
            h += b[j]
            out[lo:hi, j] = np.minimum.reduceat(h, starts)


#: MinHash in three stages, each on the pairs the one before left open: the first
#: ``STAGE_A_HASHES`` hashes (a pair with none equal is rejected), then up to
#: ``STAGE1_HASHES`` (at most ``STAGE1_REJECT`` equal: rejected), then all ``MINHASHES``.
MINHASHES = 64
STAGE_A_HASHES = 4
STAGE1_HASHES = 16
STAGE1_REJECT = 7


def _pair_index(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct positions used by pairs ``(i, j)`` and the pairs re-indexed into them."""
    size = int(max(i.max(initial=-1), j.max(initial=-1))) + 1
    used = np.zeros(size, dtype=bool)
    used[i] = True
    used[j] = True
    need = np.flatnonzero(used)
    where = np.cumsum(used) - 1
    return need, where[i], where[j]


def _numbers_hash(texts: pl.Series) -> pl.Series:
    """Hash of the standalone numbers and positions of every (normalised, non-null) text;
    texts without a digit or a position have none, so only the others are searched."""
    def found(t: pl.Series) -> pl.Series:
        return t.to_frame("t").select(numbers_expr(pl.col("t"))).to_series().hash(5)

    idx = texts.str.contains(f"[0-9{POSITION_SEP}]").arg_true()
    none = found(pl.Series([""])).item()
    out = pl.Series(np.full(len(texts), none, dtype=np.uint64))
    return out.scatter(idx, found(texts.gather(idx))) if idx.len() else out


def _threads(threads: int | None) -> int:
    return _THREADS if threads is None else threads


def _in_halves(fn: Callable[[pl.Series], pl.Series], texts: pl.Series, threads: int | None = None) -> pl.Series:
    """``fn(texts)`` for a row-wise ``fn``, on two threads for many texts (Polars releases the GIL)."""
    half = len(texts) // 2
    if _threads(threads) < 2 or half < _MIN_HALF:
        return fn(texts)
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(fn, [texts.head(half), texts.tail(len(texts) - half)]))
    return pl.concat(parts, rechunk=True)


def near_duplicates(
    texts: pl.Series, i: np.ndarray, j: np.ndarray, *, similarity: float = 0.8, threads: int | None = None
) -> np.ndarray:
    """Are ``texts[i]`` and ``texts[j]`` near-duplicates, pair by pair?

    Two texts are near-duplicates when their normalised forms
    (:func:`normalize_expr`) are equal, or when they have the same standalone
    numbers (:func:`numbers_expr`) and the MinHash estimate of the Jaccard
    similarity of their 4-gram shingle sets (punctuation read as spaces) is at
    least ``similarity``. Each
    check runs only on the pairs the previous one left open, and only the texts
    of those pairs are processed. The texts are shingled once and MinHash runs
    in three stages, each hashing only the texts of the pairs still open: 4
    hashes first, and pairs with none equal are rejected (probability 0.0016
    when the true similarity is 0.8); then 12 more, and pairs with at most 7 of
    16 equal are rejected (0.0015); the others get 48 more hashes and are
    judged on all 64.

    Parameters
    ----------
    texts : polars.Series
        Raw strings (nulls count as empty).
    i, j : numpy.ndarray
        Integer positions in ``texts`` of the two sides of every pair.
    similarity : float, default=0.8
        Jaccard threshold.
    threads : int, optional
        1 for one thread; by default many pairs are judged in two halves (by the position
        of their first text) on two threads, every pair on its own as with one.

    Returns
    -------
    numpy.ndarray
        Boolean, one per pair.

    Examples
    --------
    >>> import numpy as np, polars as pl
    >>> t = pl.Series(['{"q": "refund", "at": "2026-10-01T10:00:00Z"}', '{"q":  "Refund", "at": "2026-10-01T10:05:09Z"}',
    ...                '{"page": 2}', '{"page": 3}'])
    >>> near_duplicates(t, np.array([0, 2]), np.array([1, 3])).tolist()
    [True, False]
    """
    if i.size == 0:
        return np.zeros(0, dtype=bool)
    if _threads(threads) > 1 and i.size >= 4 * _MIN_HALF:
        # two halves of the pairs, each with its own (mostly distinct) texts, end to end on
        # two threads: the Python glue between the stages overlaps too
        low = np.minimum(i, j) < len(texts) // 2
        halves = [np.flatnonzero(low), np.flatnonzero(~low)]

        def half(sel: np.ndarray) -> np.ndarray:
            need, a, b = _pair_index(i[sel], j[sel])
            return near_duplicates(texts.gather(need), a, b, similarity=similarity, threads=1)

        with ThreadPoolExecutor(max_workers=2) as pool:
            parts = list(pool.map(half, halves))
        out = np.empty(i.size, dtype=bool)
        for sel, part in zip(halves, parts, strict=True):
            out[sel] = part
        return out
    need, li, lj = _pair_index(i, j)
    norm = _in_halves(normalize, texts if need.size == len(texts) else texts.gather(need), threads)
    nh = norm.hash(3).to_numpy()
    same = nh[li] == nh[lj]
    rest = np.flatnonzero(~same)
    if rest.size == 0:
        return same
    need, ri, rj = _pair_index(li[rest], lj[rest])
    sub = norm.gather(need)
    nums = _in_halves(_numbers_hash, sub, threads).to_numpy()
    keep = nums[ri] == nums[rj]
    rest, ri, rj = rest[keep], ri[keep], rj[keep]
    if rest.size == 0:
        return same
    need, si, sj = _pair_index(ri, rj)
    sh = _Shingles(sub.gather(need), threads=threads)  # shingled once, hashed in stages
    sig = sh.signatures(0, STAGE_A_HASHES)
    hits = (sig[si] == sig[sj]).sum(axis=1)
    texts_of = np.arange(need.size)  # pair index space -> text of ``sh``
    for lo, hi, reject in ((STAGE_A_HASHES, STAGE1_HASHES, 0), (STAGE1_HASHES, MINHASHES, STAGE1_REJECT)):
        alive = hits > reject
        rest, si, sj, hits = rest[alive], si[alive], sj[alive], hits[alive]
        if rest.size == 0:
            return same
        used, si, sj = _pair_index(si, sj)  # only the texts of the open pairs are hashed
        texts_of = texts_of[used]
        sig = sh.signatures(lo, hi - lo, texts_of)
        hits = hits + (sig[si] == sig[sj]).sum(axis=1)
    same[rest] = hits / MINHASHES >= similarity
    return same


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard estimate: the fraction of equal MinHash components."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signature shapes differ: {sig_a.shape} vs {sig_b.shape}")
    if sig_a.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return (sig_a == sig_b).mean(axis=1)


__all__ = [
    "ALNUM_ID_RE",
    "HEX_ID_RE",
    "NUMBER_RE",
    "TIMESTAMP_RE",
    "UUID_RE",
    "estimated_jaccard",
    "minhash",
    "near_duplicates",
    "normalize",
    "normalize_expr",
    "numbers_expr",
]
