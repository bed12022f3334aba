"""GEEP's exit table: token key -> how many training samples exited at each layer.

GEEP (Li et al., 2024; docs/methods.md, "geep"): after training, each training sample gets an
exit layer in 1..L; for every key (token id, or packed bigram) the table counts the training samples
that contain the key (once per sample) and exited at layer l. Test samples look up their keys.

The table is open addressing with linear probing and Fibonacci hashing. Two backends build the
same table (same ``items()``): vectorised torch on the CPU, and CuPy raw kernels on CUDA (atomic
insert and increment, one batched lookup kernel) over torch tensors shared zero-copy.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geep.common.errors import GeepError

EMPTY: int = -1  # marks a free slot (and pads sample_keys rows); valid keys are >= 0
GOLDEN: int = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, odd: Fibonacci hashing's multiplier
BIGRAM_FLAG: int = 1 << 62  # set in packed bigram keys, so they never equal a token id (< 2**31)
TOKEN_LIMIT: int = 1 << 31  # token ids must be below this to pack into a bigram key
INT32_MAX: int = (1 << 31) - 1
_GOLDEN_SIGNED = GOLDEN - (1 << 64)  # the same 64 bits as a torch int64
_INT64_MAX = (1 << 63) - 1
_THREADS = 256  # CUDA threads per block
_OVERFLOW = (
    "exit table: insert probed all {capacity} slots without a free one "
    "(internal error: the load limit should prevent this)"
)

CUDA_SOURCE = r"""
#define EMPTY_KEY 0xFFFFFFFFFFFFFFFFULL

// Fibonacci hashing: the top `bits` bits of key * 2**64/phi (mod 2**64).
__device__ __forceinline__ long long home_slot(unsigned long long key, int bits) {
    return (long long)((key * 0x9E3779B97F4A7C15ULL) >> (64 - bits));
}

// One thread per (key, layer, amount): claim or find the key's slot with atomicCAS, then
// atomicAdd the amount to counts[slot, layer - 1]. No free slot after `capacity` probes
// sets *overflow.
extern "C" __global__ void exit_table_insert(
    const long long* keys, const long long* layers, const int* amounts, long long n,
    unsigned long long* table_keys, int* counts, long long capacity, int bits,
    int num_layers, int* overflow) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long key = (unsigned long long)keys[i];
    long long slot = home_slot(key, bits);
    for (long long probe = 0; probe < capacity; ++probe) {
        unsigned long long held = atomicCAS(&table_keys[slot], EMPTY_KEY, key);
        if (held == EMPTY_KEY || held == key) {
            atomicAdd(&counts[slot * num_layers + layers[i] - 1], amounts[i]);
            return;
        }
        slot = (slot + 1) & (capacity - 1);
    }
    atomicExch(overflow, 1);
}

// One thread per query key: its slot, or -1 when absent (negative keys are always absent).
extern "C" __global__ void exit_table_lookup(
    const long long* keys, long long n, const unsigned long long* table_keys,
    long long capacity, int bits, long long* slots) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long found = -1;
    if (keys[i] >= 0) {
        unsigned long long key = (unsigned long long)keys[i];
        long long slot = home_slot(key, bits);
        for (long long probe = 0; probe < capacity; ++probe) {
            unsigned long long held = table_keys[slot];
            if (held == key) {
                found = slot;
                break;
            }
            if (held == EMPTY_KEY) break;
            slot = (slot + 1) & (capacity - 1);
        }
    }
    slots[i] = found;
}
"""


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _vector(name: str, values: Any) -> torch.Tensor:
    """``values`` as a 1-D integer tensor, or a GeepError naming ``name``."""
    t = torch.as_tensor(values)
    if t.dim() != 1 or not _is_integer(t):
        raise GeepError(
            f"exit table: {name} must be a 1-D integer tensor, got {t.dtype} {list(t.shape)}"
        )
    return t


@functools.cache
def _cuda_kernels(device_index: int) -> tuple[Any, Any]:
    """(insert, lookup) kernels of CUDA_SOURCE compiled for one device (once per process)."""
    import cupy

    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=CUDA_SOURCE)
        return module.get_function("exit_table_insert"), module.get_function("exit_table_lookup")


class ExitTable:
    """Token key -> per-layer exit counts: open addressing with linear probing.

    ``counts[key][l - 1]`` is the number of training samples that contain ``key`` and exit at
    layer ``l`` (GEEP, Li et al., 2024; docs/methods.md). Slots are found by Fibonacci hashing
    (:meth:`home_slots`) and probed slot, slot + 1, ... mod capacity. The table doubles (rehash)
    before an insert would take it above ``max_load``. CPU backend (vectorised torch) and CUDA
    backend (CuPy RawKernel, atomic insert/increment, one batched lookup kernel) give identical
    tables; slot layouts may differ, :meth:`items` does not.
    """

    def __init__(
        self,
        num_layers: int,
        capacity: int = 1024,
        device: str | torch.device = "cpu",
        max_load: float = 0.5,
        max_capacity: int = 1 << 26,
    ) -> None:
        if num_layers < 1:
            raise GeepError(f"exit table: num_layers must be >= 1, got {num_layers}")
        if not 0.0 < max_load <= 1.0:
            raise GeepError(f"exit table: max_load must be in (0, 1], got {max_load}")
        capacity = max(16, 1 << (max(int(capacity), 1) - 1).bit_length())  # power of two >= 16
        if capacity > max_capacity:
            raise GeepError(
                f"exit table: capacity {capacity} is above max_capacity {max_capacity}; "
                "raise max_capacity or lower capacity"
            )
        self.num_layers = num_layers
        self.max_load = max_load
        self.max_capacity = max_capacity
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self.backend = "cuda"
            self._check_cuda()
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        elif self.device.type == "cpu":
            self.backend = "cpu"
        else:
            raise GeepError(f"exit table: device must be cpu or cuda, got {self.device}")
        self._size = 0
        self.samples = 0  # training samples counted (from_samples); 0 when built by add()
        self._allocate(capacity)

    def _check_cuda(self) -> None:
        try:
            import cupy  # noqa: F401
        except ImportError as e:
            raise GeepError(
                "exit table on cuda needs CuPy: install the gpu extra: pip install 'geep[gpu]' "
                "for a CUDA 13 torch, 'geep[gpu-cuda12]' for CUDA 12"
            ) from e
        if not torch.cuda.is_available():
            raise GeepError(
                f"exit table: device {self.device} requested but torch sees no CUDA device; "
                "use device='cpu' or a CUDA build of torch"
            )

    def _allocate(self, capacity: int) -> None:
        """Empty arrays: keys [capacity] int64 (EMPTY), counts [capacity, L] int32."""
        self.capacity = capacity
        self._bits = capacity.bit_length() - 1
        self._keys = torch.full((capacity,), EMPTY, dtype=torch.int64, device=self.device)
        self._counts = torch.zeros(
            (capacity, self.num_layers), dtype=torch.int32, device=self.device
        )

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (
            f"ExitTable(num_layers={self.num_layers}, keys={self._size}, "
            f"capacity={self.capacity}, backend={self.backend!r})"
        )

    def home_slots(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [M] int64 -> first probe slots [M] int64 (same device as ``keys``).

        ``((key * 0x9E3779B97F4A7C15) mod 2**64) >> (64 - bits)``: torch's int64 product wraps
        to the same bits, and the arithmetic shift's sign bits are masked off.
        """
        keys = torch.as_tensor(keys).to(torch.int64)
        return ((keys * _GOLDEN_SIGNED) >> (64 - self._bits)) & (self.capacity - 1)

    # -- adding -------------------------------------------------------------------------------

    def add(
        self, keys: torch.Tensor, layers: torch.Tensor, amounts: torch.Tensor | None = None
    ) -> None:
        """``counts[keys[i]][layers[i] - 1] += amounts[i]`` for every i (duplicates accumulate).

        keys [M] int64 >= 0, layers [M] in 1..num_layers, amounts [M] >= 0 (default 1 each).
        Entries with amount 0 are no-ops: a key is stored once some count of it is positive.
        The table grows before inserting; a GeepError (bad input, or more keys than
        ``max_capacity`` allows) leaves it unchanged.
        """
        self._insert(*self._checked(keys, layers, amounts))

    def _checked(
        self, keys: Any, layers: Any, amounts: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validated (keys int64, layers int64, amounts int32) on the table's device, amount > 0."""
        keys, layers = _vector("keys", keys), _vector("layers", layers)
        amounts = torch.ones_like(keys) if amounts is None else _vector("amounts", amounts)
        if not keys.shape == layers.shape == amounts.shape:
            raise GeepError(
                f"exit table: keys, layers and amounts differ in length "
                f"({keys.numel()}, {layers.numel()}, {amounts.numel()})"
            )
        if keys.numel():
            if int(keys.min()) < 0:
                raise GeepError(f"exit table: keys must be >= 0, got {int(keys.min())}")
            low, high = int(layers.min()), int(layers.max())
            if low < 1 or high > self.num_layers:
                raise GeepError(
                    f"exit table: layers must be in 1..{self.num_layers}, got {low}..{high}"
                )
            if int(amounts.min()) < 0 or int(amounts.max()) > INT32_MAX:
                raise GeepError(
                    f"exit table: amounts must be in 0..{INT32_MAX}, "
                    f"got {int(amounts.min())}..{int(amounts.max())}"
                )
        positive = amounts > 0
        return (
            keys[positive].to(self.device, torch.int64).contiguous(),
            layers[positive].to(self.device, torch.int64).contiguous(),
            amounts[positive].to(self.device, torch.int32).contiguous(),
        )

    def _insert(self, keys: torch.Tensor, layers: torch.Tensor, amounts: torch.Tensor) -> None:
        """Add validated triples (see :meth:`_checked`): grow first, then insert."""
        unique, inverse = torch.unique(keys, return_inverse=True)  # [U], [M]
        slots = self._find(unique)  # [U], -1 = not stored yet
        absent = slots < 0  # [U], the same keys after a rehash
        new = int(absent.sum())
        grew = self._reserve(self._size + new)
        if self.backend == "cuda":
            self._cuda_insert(keys, layers, amounts)
        else:
            if grew:
                slots = self._find(unique)
            slots[absent] = self._claim(unique[absent])
            self._counts.index_put_((slots[inverse], layers - 1), amounts, accumulate=True)
        self._size += new

    def _reserve(self, num_keys: int) -> bool:
        """Double (rehash) until ``num_keys`` fit under max_load; True if the table grew.

        Raises GeepError, table unchanged, when that needs more than ``max_capacity`` slots.
        """
        capacity = self.capacity
        while num_keys > self.max_load * capacity:
            capacity *= 2
        if capacity == self.capacity:
            return False
        if capacity > self.max_capacity:
            raise GeepError(
                f"exit table full: {num_keys} keys need {capacity} slots at max_load "
                f"{self.max_load}, above max_capacity {self.max_capacity}; raise max_capacity"
            )
        held = self._keys != EMPTY  # [capacity]
        old_keys, old_counts = self._keys[held], self._counts[held]  # [S], [S, L]
        self._allocate(capacity)
        if self.backend == "cuda":
            rows, cols = old_counts.nonzero(as_tuple=True)  # every stored key has a positive count
            self._cuda_insert(old_keys[rows], cols + 1, old_counts[rows, cols])
        else:
            self._counts[self._claim(old_keys)] = old_counts
        return True

    def _claim(self, keys: torch.Tensor) -> torch.Tensor:
        """CPU: store unique absent keys [U] in free slots -> their slots [U].

        In each round every pending key looks at its current slot; among the keys that look at
        the same free slot the smallest claims it, the others (and keys at taken slots) move on.
        """
        slot = self.home_slots(keys)  # [U], current probe position of each key
        pending = torch.arange(keys.numel())  # indices into keys
        for _ in range(self.capacity):
            if not pending.numel():
                break
            at = slot[pending]
            free = self._keys[at] == EMPTY
            bidders, targets = pending[free], at[free]
            taken, which = torch.unique(targets, return_inverse=True)
            smallest = torch.full((taken.numel(),), _INT64_MAX, dtype=torch.int64)
            smallest.scatter_reduce_(0, which, keys[bidders], "amin")
            winners = bidders[smallest[which] == keys[bidders]]
            self._keys[slot[winners]] = keys[winners]
            pending = pending[self._keys[slot[pending]] != keys[pending]]
            slot[pending] = (slot[pending] + 1) & (self.capacity - 1)
        if pending.numel():
            raise GeepError(_OVERFLOW.format(capacity=self.capacity))
        return slot

    def _cuda_insert(self, keys: torch.Tensor, layers: torch.Tensor, amounts: torch.Tensor) -> None:
        """CUDA: one insert-kernel thread per (key, layer, amount) triple [M]."""
        overflow = torch.zeros(1, dtype=torch.int32, device=self.device)
        insert, _ = _cuda_kernels(self.device.index)
        self._launch(
            insert,
            keys.numel(),
            keys,
            layers,
            amounts,
            np.int64(keys.numel()),
            self._keys,
            self._counts,
            np.int64(self.capacity),
            np.int32(self._bits),
            np.int32(self.num_layers),
            overflow,
        )
        if int(overflow.item()):
            raise GeepError(_OVERFLOW.format(capacity=self.capacity))

    def _launch(self, kernel: Any, n: int, *args: Any) -> None:
        """Run ``kernel`` with ``n`` threads on torch's current stream.

        Tensor arguments (contiguous) are shared zero-copy through DLPack.
        """
        if n == 0:
            return
        import cupy

        stream = torch.cuda.current_stream(self.device).cuda_stream
        with cupy.cuda.Device(self.device.index), cupy.cuda.ExternalStream(stream):
            cuda_args = tuple(
                cupy.from_dlpack(a) if isinstance(a, torch.Tensor) else a for a in args
            )
            kernel(((n + _THREADS - 1) // _THREADS,), (_THREADS,), cuda_args)

    # -- looking up ---------------------------------------------------------------------------

    def _find(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [M] int64 on the table's device -> slots [M] int64, -1 where absent or < 0."""
        if self.backend == "cuda":
            slots = torch.empty_like(keys)
            _, lookup = _cuda_kernels(self.device.index)
            self._launch(
                lookup,
                keys.numel(),
                keys,
                np.int64(keys.numel()),
                self._keys,
                np.int64(self.capacity),
                np.int32(self._bits),
                slots,
            )
            return slots
        slots = torch.full_like(keys, -1)
        slot = self.home_slots(keys)  # [M], current probe position
        pending = (keys >= 0).nonzero().flatten()
        for _ in range(self.capacity):
            if not pending.numel():
                break
            held = self._keys[slot[pending]]
            hit = held == keys[pending]
            slots[pending[hit]] = slot[pending[hit]]
            pending = pending[~hit & (held != EMPTY)]
            slot[pending] = (slot[pending] + 1) & (self.capacity - 1)
        return slots

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [M] int64 (any value) -> counts [M, num_layers] int32 on the table's device.

        Absent keys and negative keys give a zero row.
        """
        keys = _vector("keys", keys).to(self.device, torch.int64).contiguous()
        if self.backend == "cuda":
            slots = self._find(keys)  # [M], one kernel thread per query
        else:
            unique, inverse = torch.unique(keys, return_inverse=True)
            slots = self._find(unique)[inverse]  # [M]
        found = slots >= 0
        out = torch.zeros((keys.numel(), self.num_layers), dtype=torch.int32, device=self.device)
        out[found] = self._counts[slots[found]]
        return out

    def items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys sorted ascending [S] int64, counts [S, num_layers] int32) on the CPU.

        Canonical: independent of the slot layout, so equal tables dump equal tensors.
        """
        held = self._keys != EMPTY
        keys, counts = self._keys[held], self._counts[held]
        order = torch.argsort(keys)
        return keys[order].cpu(), counts[order].cpu()

    @classmethod
    def from_samples(
        cls,
        sample_keys: torch.Tensor,
        exit_layers: torch.Tensor,
        num_layers: int,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> ExitTable:
        """Count each sample's keys once at its exit layer (GEEP; docs/methods.md).

        sample_keys [N, K] int64 (rows padded with EMPTY, keys unique per row, as
        :func:`sample_keys` returns), exit_layers [N] in 1..num_layers. The table is sized for
        the distinct keys up front, so the build never rehashes; ``kwargs`` go to the
        constructor (``capacity`` is then a lower bound).
        """
        sample_keys, exit_layers = torch.as_tensor(sample_keys), torch.as_tensor(exit_layers)
        if sample_keys.dim() != 2 or exit_layers.shape != sample_keys.shape[:1]:
            raise GeepError(
                f"exit table: sample_keys must be [N, K] and exit_layers [N], got "
                f"{list(sample_keys.shape)} and {list(exit_layers.shape)}"
            )
        ordered = sample_keys.sort(dim=1).values  # [N, K]
        if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != EMPTY)).any():
            raise GeepError(
                "exit table: a sample_keys row repeats a key; build the rows with sample_keys()"
            )
        present = sample_keys != EMPTY  # [N, K]
        table = cls(num_layers, device=device, **kwargs)
        keys, layers, amounts = table._checked(
            sample_keys[present], exit_layers[:, None].expand_as(sample_keys)[present], None
        )
        table._reserve(torch.unique(keys).numel())
        table._insert(keys, layers, amounts)
        table.samples = len(sample_keys)
        return table


def sample_keys(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: Sequence[int],
    ngram: int = 1,
) -> torch.Tensor:
    """input_ids, attention_mask [N, T] -> each sample's keys [N, K] int64, padded with EMPTY.

    GEEP (Li et al., 2024; docs/methods.md): the keys of a sample are the ids of its real
    tokens (attention_mask 1) that are not special ([CLS], [SEP], [PAD], ...); ngram=2 adds the
    bigrams of consecutive positions that are both kept, packed as
    ``(1 << 62) | (a << 31) | b`` (injective for ids < 2**31, never equal to a token id).
    Each row lists its keys once, ascending, then EMPTY; K is the longest row's key count.
    """
    if ngram not in (1, 2):
        raise GeepError(
            f"sample_keys: ngram must be 1 (tokens) or 2 (tokens + bigrams), got {ngram}"
        )
    input_ids, attention_mask = torch.as_tensor(input_ids), torch.as_tensor(attention_mask)
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise GeepError(
            f"sample_keys: input_ids and attention_mask must both be [N, T], got "
            f"{list(input_ids.shape)} and {list(attention_mask.shape)}"
        )
    ids = input_ids.to(torch.int64)
    specials = torch.tensor(list(special_ids), dtype=torch.int64, device=ids.device)
    keep = (attention_mask != 0) & ~torch.isin(ids, specials)  # [N, T]
    kept = ids[keep]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= TOKEN_LIMIT):
        raise GeepError(f"sample_keys: token ids must be in 0..{TOKEN_LIMIT - 1}")
    keys = torch.where(keep, ids, EMPTY)  # [N, T]
    if ngram == 2:
        pair = keep[:, :-1] & keep[:, 1:]  # [N, T - 1]
        bigrams = BIGRAM_FLAG | (ids[:, :-1] << 31) | ids[:, 1:]  # [N, T - 1]
        keys = torch.cat([keys, torch.where(pair, bigrams, EMPTY)], dim=1)  # [N, 2T - 1]
    keys = keys.sort(dim=1).values  # [N, W], W = T or 2T - 1
    drop = keys == EMPTY
    drop[:, 1:] |= keys[:, 1:] == keys[:, :-1]  # repeats
    order = drop.to(torch.uint8).sort(dim=1, stable=True).indices  # kept keys first, ascending
    keys, drop = keys.gather(1, order), drop.gather(1, order)
    width = int((~drop).sum(dim=1).max()) if drop.numel() else 0
    return keys.masked_fill(drop, EMPTY)[:, :width]
