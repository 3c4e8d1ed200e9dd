"""The integers a :class:`~janus_kernels.masks.MaskDescriptor` is made of: column indices of
the per-sample ``params`` table, the mask kinds and tile classes (shared by ``masks.py`` and
``mask_checks.py``; ``csrc/include/janus/mask.h`` and ``triton/mask.py`` spell the same)."""
import enum

#: A window width meaning "no lower bound" (lo = hi - UNBOUNDED is below every key). Also the
#: bound on every size and window integer (see ``mask_checks``): with |OFF|, |HMIN|, WIDTH,
#: q_len, kv_len <= 2^30 no intermediate of the predicate (r + OFF, hi - WIDTH, j + WIDTH)
#: leaves int32.
UNBOUNDED = 1 << 30


class Field(enum.IntEnum):
    """Column index of each per-sample integer in ``MaskDescriptor.params``."""

    KV_LEN = 0   # real keys of the sample: keys j >= KV_LEN are padding
    PREFIX = 1   # keys j < PREFIX are visible to every valid row
    ROWS0 = 2    # real rows of stream 0
    OFF0 = 3     # stream 0 window: hi = max(r + OFF0, HMIN0)  (permutation: strictness)
    HMIN0 = 4
    WIDTH0 = 5   # stream 0 window: lo = hi - WIDTH0
    ROWS1 = 6    # same four for stream 1
    OFF1 = 7
    HMIN1 = 8
    WIDTH1 = 9
    KEY_START = 10  # keys j < KEY_START are padding too (left padding): valid keys are
                    # KEY_START <= j < KV_LEN, for every kind


NUM_FIELDS = len(Field)


class Kind(enum.IntEnum):
    WINDOW = 0       # the prefix + per-row window predicate
    PERMUTATION = 1  # rank[j] + OFF[s] <= rank[r]
    DOCUMENTS = 2    # the WINDOW predicate and q_doc[i] == k_doc[j] (packed sequences): the
                     # rank table is (B, q_len + kv_len), row docs then key docs, each run
                     # nondecreasing


class TileClass(enum.IntEnum):
    SKIP = 0     # no visible entry: the kernel never touches the tile
    PARTIAL = 1  # some visible entries: evaluate the predicate
    FULL = 2     # every entry visible: compute without the predicate
