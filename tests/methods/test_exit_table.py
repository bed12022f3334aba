"""The exit table (geep/methods/exit_table.py) against plain-Python references."""

from __future__ import annotations

import itertools
import random
import sys
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geep.common.errors import GeepError
from geep.methods import exit_table
from geep.methods.exit_table import CUDA_SOURCE, EMPTY, GOLDEN, ExitTable, sample_keys

L = 4
EXTREME_KEYS = [0, 1, 2**31 - 1, 2**62, 2**63 - 1]


def py_home(key: int, capacity: int) -> int:
    """Fibonacci hashing in exact integer arithmetic."""
    bits = capacity.bit_length() - 1
    return ((key * GOLDEN) % 2**64) >> (64 - bits)


def pack(a: int, b: int) -> int:
    return (1 << 62) | (a << 31) | b


class Reference:
    """The table as a dict: key -> per-layer counts; amount 0 stores nothing."""

    def __init__(self) -> None:
        self.counts: dict[int, list[int]] = defaultdict(lambda: [0] * L)

    def add(self, keys: list[int], layers: list[int], amounts: list[int] | None = None) -> None:
        for key, layer, amount in zip(keys, layers, amounts or [1] * len(keys), strict=True):
            if amount:
                self.counts[key][layer - 1] += amount

    def row(self, key: int) -> list[int]:
        return self.counts[key] if key in self.counts else [0] * L


def assert_matches(table: ExitTable, ref: Reference, extra: list[int] = ()) -> None:
    """items(), len() and lookup() (stored, absent and negative keys) equal the reference."""
    keys, counts = table.items()
    assert keys.dtype == torch.int64 and counts.dtype == torch.int32
    assert keys.tolist() == sorted(ref.counts)
    assert counts.tolist() == [ref.counts[k] for k in sorted(ref.counts)]
    assert len(table) == len(ref.counts)
    queries = [*ref.counts, *extra, -1, -5, -(2**63), 123456789]
    random.Random(0).shuffle(queries)
    rows = table.lookup(torch.tensor(queries))
    assert rows.dtype == torch.int32 and rows.shape == (len(queries), L)
    assert rows.tolist() == [ref.row(k) for k in queries]


def keys_with_homes(wanted: dict[int, int], capacity: int, seed: int = 0) -> list[int]:
    """Random keys, ``wanted[slot]`` of them with home slot ``slot``."""
    rng = random.Random(seed)
    found: dict[int, list[int]] = {slot: [] for slot in wanted}
    while any(len(found[s]) < n for s, n in wanted.items()):
        key = rng.randrange(2**63)
        slot = py_home(key, capacity)
        if slot in found and len(found[slot]) < wanted[slot]:
            found[slot].append(key)
    return [k for slot in wanted for k in found[slot]]


# -- hashing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [16, 1024, 1 << 20])
def test_home_slots_equal_exact_integer_arithmetic(capacity: int) -> None:
    table = ExitTable(1, capacity=capacity)
    rng = random.Random(capacity)
    keys = EXTREME_KEYS + [rng.randrange(2**63) for _ in range(2000)] + list(range(100))
    homes = table.home_slots(torch.tensor(keys))
    assert homes.tolist() == [py_home(k, capacity) for k in keys]
    assert int(homes.min()) >= 0 and int(homes.max()) < capacity


def test_capacity_is_a_power_of_two_at_least_16() -> None:
    assert ExitTable(2, capacity=1).capacity == 16
    assert ExitTable(2, capacity=17).capacity == 32
    assert ExitTable(2, capacity=1024).capacity == 1024


# -- the table against a dict ------------------------------------------------------------------


def test_collisions_wraparound_repeats_and_amounts() -> None:
    # 8 keys in 16 slots: 4 share home 15 (their probes wrap to 0, 1, 2), 2 share home 0, 2 home 7.
    keys = keys_with_homes({15: 4, 0: 2, 7: 2}, 16)
    table = ExitTable(L, capacity=16)
    assert len(set(table.home_slots(torch.tensor(keys)).tolist())) == 3  # real collisions
    ref = Reference()
    rng = random.Random(1)
    for _ in range(5):
        batch = [rng.choice(keys) for _ in range(40)]  # repeated keys within and across batches
        layers = [rng.randint(1, L) for _ in batch]
        amounts = [rng.randint(0, 3) for _ in batch]
        dtype = rng.choice([torch.int32, torch.int64])
        table.add(torch.tensor(batch), torch.tensor(layers), torch.tensor(amounts, dtype=dtype))
        ref.add(batch, layers, amounts)
        assert_matches(table, ref, extra=keys_with_homes({15: 2, 0: 1}, 16, seed=9))
    assert table.capacity == 16 and len(table) == len(keys)


def test_default_amount_is_one_and_duplicates_accumulate() -> None:
    table = ExitTable(L)
    table.add(torch.tensor([5, 5, 5, 9]), torch.tensor([1, 1, 4, 2]))
    assert table.lookup(torch.tensor([5, 9, 7])).tolist() == [[2, 0, 0, 1], [0, 1, 0, 0], [0] * L]


def test_zero_amounts_store_nothing() -> None:
    table = ExitTable(L)
    table.add(torch.tensor([3, 4]), torch.tensor([1, 2]), torch.tensor([0, 2]))
    assert len(table) == 1 and table.items()[0].tolist() == [4]


def test_full_table_at_max_load_one_still_answers_absent_keys() -> None:
    table = ExitTable(L, capacity=16, max_load=1.0)
    ref = Reference()
    keys = list(range(1000, 1016))
    layers = [k % L + 1 for k in keys]
    table.add(torch.tensor(keys), torch.tensor(layers))
    ref.add(keys, layers)
    assert table.capacity == 16 and len(table) == 16
    assert_matches(table, ref, extra=[0, 7, 2**63 - 1])  # probes all 16 slots, then gives up


def test_growth_keeps_contents_and_load() -> None:
    table = ExitTable(L, capacity=16)
    ref = Reference()
    rng = random.Random(2)
    pool = EXTREME_KEYS + [rng.randrange(2**63) for _ in range(3000)] + list(range(1000))
    for size in [1, 7, 30, 200, 500, 1500, 3000]:
        batch = [rng.choice(pool) for _ in range(size)]
        layers = [rng.randint(1, L) for _ in batch]
        amounts = [rng.randint(1, 5) for _ in batch]
        table.add(torch.tensor(batch), torch.tensor(layers), torch.tensor(amounts))
        ref.add(batch, layers, amounts)
        assert len(table) <= table.max_load * table.capacity
        assert len(table) == len(ref.counts)
    assert table.capacity >= 4096
    assert_matches(table, ref)


def test_table_full_raises_and_leaves_table_unchanged() -> None:
    table = ExitTable(L, capacity=16, max_capacity=32)
    table.add(torch.arange(16), torch.ones(16, dtype=torch.int64))  # 16 keys fit 32 slots at 0.5
    before = table.items()
    with pytest.raises(GeepError, match=r"exit table full: 17 keys need 64 slots.*max_capacity"):
        table.add(torch.tensor([3, 100]), torch.tensor([2, 2]))
    after = table.items()
    assert table.capacity == 32 and len(table) == 16
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    table.add(torch.tensor([3]), torch.tensor([2]))  # known keys still add
    assert table.lookup(torch.tensor([3])).tolist() == [[1, 1, 0, 0]]


def test_capacity_above_max_capacity_raises() -> None:
    with pytest.raises(GeepError, match="max_capacity"):
        ExitTable(L, capacity=64, max_capacity=32)


@pytest.mark.parametrize(
    ("keys", "layers", "amounts", "message"),
    [
        ([1, -2], [1, 1], None, "keys must be >= 0"),
        ([1, 2], [0, 1], None, r"layers must be in 1\.\.4"),
        ([1, 2], [1, L + 1], None, r"layers must be in 1\.\.4"),
        ([1, 2], [1], None, "differ in length"),
        ([1, 2], [1, 1], [1], "differ in length"),
        ([1, 2], [1, 1], [1, -1], "amounts must be in"),
        ([1.0, 2.0], [1, 1], None, "keys must be a 1-D integer tensor"),
        ([[1, 2]], [[1, 1]], None, "keys must be a 1-D integer tensor"),
    ],
)
def test_bad_input_raises(keys: list, layers: list, amounts: list | None, message: str) -> None:
    table = ExitTable(L)
    table.add(torch.tensor([7]), torch.tensor([1]))
    amounts_t = None if amounts is None else torch.tensor(amounts)
    with pytest.raises(GeepError, match=message):
        table.add(torch.tensor(keys), torch.tensor(layers), amounts_t)
    assert table.items()[0].tolist() == [7] and len(table) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_layers": 0}, "num_layers"),
        ({"num_layers": L, "max_load": 0.0}, "max_load"),
        ({"num_layers": L, "max_load": 1.5}, "max_load"),
        ({"num_layers": L, "device": "meta"}, "device must be cpu or cuda"),
    ],
)
def test_bad_construction_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(GeepError, match=message):
        ExitTable(**kwargs)


def test_cuda_without_cupy_names_the_gpu_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    with pytest.raises(GeepError, match=r"pip install 'geep\[gpu\]'"):
        ExitTable(L, device="cuda")


KEYS = st.one_of(st.sampled_from(EXTREME_KEYS), st.integers(0, 40), st.integers(0, 2**63 - 1))
TRIPLES = st.lists(st.tuples(KEYS, st.integers(1, L), st.integers(0, 3)), min_size=0, max_size=60)


@settings(max_examples=50, deadline=None)
@given(batches=st.lists(TRIPLES, min_size=1, max_size=4))
def test_property_cpu_table_equals_dict(batches: list[list[tuple[int, int, int]]]) -> None:
    table = ExitTable(L, capacity=16)
    ref = Reference()
    for batch in batches:
        keys, layers, amounts = (
            (list(column) for column in zip(*batch, strict=True)) if batch else ([], [], [])
        )
        table.add(
            torch.tensor(keys, dtype=torch.int64),
            torch.tensor(layers, dtype=torch.int64),
            torch.tensor(amounts, dtype=torch.int64),
        )
        ref.add(keys, layers, amounts)
        assert len(table) <= table.max_load * table.capacity
    assert_matches(table, ref, extra=[0, 41, 2**62 + 1])


# -- sample keys and from_samples --------------------------------------------------------------

CLS, SEP, PAD = 2, 3, 0


def test_sample_keys_excludes_specials_and_padding_and_packs_bigrams() -> None:
    ids = torch.tensor([[CLS, 5, 6, 5, SEP, 9, 9], [CLS, 7, 7, 7, SEP, 8, SEP]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    assert sample_keys(ids, mask, [CLS, SEP, PAD]).tolist() == [[5, 6], [7, 8]]
    bigrams = sample_keys(ids, mask, [CLS, SEP, PAD], ngram=2)
    assert bigrams.dtype == torch.int64
    assert bigrams.tolist() == [
        [5, 6, pack(5, 6), pack(6, 5)],
        [7, 8, pack(7, 7), EMPTY],  # 7 [SEP] 8: not consecutive kept tokens
    ]


def test_sample_keys_matches_python_sets() -> None:
    rng = random.Random(3)
    n, t, specials = 30, 12, [0, 1, 2]
    ids = torch.tensor([[rng.randrange(12) for _ in range(t)] for _ in range(n)])
    mask = torch.tensor([[int(j < rng.randint(0, t)) for j in range(t)] for _ in range(n)])
    for ngram in (1, 2):
        got = sample_keys(ids, mask, specials, ngram=ngram)
        width = 0
        for row, tokens, real in zip(got.tolist(), ids.tolist(), mask.tolist(), strict=True):
            kept = [
                tok if m and tok not in specials else None
                for tok, m in zip(tokens, real, strict=True)
            ]
            want = {tok for tok in kept if tok is not None}
            if ngram == 2:
                want |= {
                    pack(a, b)
                    for a, b in itertools.pairwise(kept)
                    if a is not None and b is not None
                }
            keys = [k for k in row if k != EMPTY]
            assert keys == sorted(want) and row[len(keys) :] == [EMPTY] * (len(row) - len(keys))
            width = max(width, len(want))
        assert got.shape == (n, width)  # trimmed to the longest row


def test_bigram_packing_is_injective_at_the_limit() -> None:
    top = 2**31 - 1
    ids = torch.tensor([[top, 0, top, top, 1]])
    got = sample_keys(ids, torch.ones_like(ids), [], ngram=2)[0].tolist()
    assert got == sorted({0, 1, top, pack(top, 0), pack(0, top), pack(top, top), pack(top, 1)})
    assert all(k < 2**63 for k in got)


def test_sample_keys_bad_input_raises() -> None:
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(GeepError, match="ngram must be 1"):
        sample_keys(ids, torch.ones_like(ids), [], ngram=3)
    with pytest.raises(GeepError, match=r"\[N, T\]"):
        sample_keys(ids, torch.ones(1, 2), [])
    big = torch.tensor([[1, 2**31]])
    with pytest.raises(GeepError, match="token ids must be in"):
        sample_keys(big, torch.ones_like(big), [])


def test_from_samples_counts_each_sample_once_per_key() -> None:
    ids = torch.tensor([[CLS, 5, 5, 6, SEP], [CLS, 5, 7, SEP, PAD], [CLS, 6, 6, 6, SEP]])
    mask = (ids != PAD).long()
    keys = sample_keys(ids, mask, [CLS, SEP, PAD])
    table = ExitTable.from_samples(keys, torch.tensor([2, 2, 4]), L)
    got_keys, counts = table.items()
    assert got_keys.tolist() == [5, 6, 7]
    assert counts.tolist() == [[0, 2, 0, 0], [0, 1, 0, 1], [0, 1, 0, 0]]


def test_from_samples_equals_reference_and_never_grows() -> None:
    rng = random.Random(4)
    n, t = 400, 16
    ids = torch.tensor([[rng.randrange(3, 5000) for _ in range(t)] for _ in range(n)])
    keys = sample_keys(ids, torch.ones_like(ids), [CLS, SEP, PAD], ngram=2)
    exits = torch.tensor([rng.randint(1, L) for _ in range(n)])
    table = ExitTable.from_samples(keys, exits, L, capacity=16)
    ref = Reference()
    for row, layer in zip(keys.tolist(), exits.tolist(), strict=True):
        present = [k for k in row if k != EMPTY]
        ref.add(present, [layer] * len(present))
    assert_matches(table, ref)
    distinct = len(ref.counts)
    assert table.capacity == 1 << (2 * distinct - 1).bit_length()  # sized once, no doubling


def test_from_samples_rejects_repeated_keys_in_a_row() -> None:
    with pytest.raises(GeepError, match="repeats a key"):
        ExitTable.from_samples(torch.tensor([[4, 4, EMPTY]]), torch.tensor([1]), L)


# -- CUDA ----------------------------------------------------------------------------------------


def test_cuda_source_compiles_with_nvrtc() -> None:
    """Compile the kernels to PTX for compute_80; NVRTC needs no GPU or driver."""
    pytest.importorskip("cupy")
    from cupy_backends.cuda.libs import nvrtc

    try:
        nvrtc.getVersion()
    except Exception as e:  # the NVRTC library itself is missing
        pytest.skip(f"NVRTC unavailable: {e}")
    program = nvrtc.createProgram(CUDA_SOURCE, "exit_table.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(program, ("-arch=compute_80",))
        except nvrtc.NVRTCError:
            pytest.fail(nvrtc.getProgramLog(program))
        ptx = nvrtc.getPTX(program).decode()
    finally:
        nvrtc.destroyProgram(program)
    assert ".entry exit_table_insert(" in ptx and ".entry exit_table_lookup(" in ptx
    assert "atom.global.cas.b64" in ptx


class KernelStandIns:
    """Python versions of CUDA_SOURCE's kernels, same arguments, threads in random order."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.launches = {"insert": 0, "lookup": 0}

    def insert(
        self, keys, layers, amounts, n, table_keys, counts, capacity, bits, num_layers, overflow
    ):
        self.launches["insert"] += 1
        flat = counts.view(-1)
        for i in self.rng.sample(range(int(n)), int(n)):
            key, slot = int(keys[i]), py_home(int(keys[i]), int(capacity))
            assert slot == ((key * GOLDEN) % 2**64) >> (64 - int(bits))
            for _ in range(int(capacity)):
                if int(table_keys[slot]) in (EMPTY, key):
                    table_keys[slot] = key
                    flat[slot * int(num_layers) + int(layers[i]) - 1] += int(amounts[i])
                    break
                slot = (slot + 1) % int(capacity)
            else:
                overflow[0] = 1

    def lookup(self, keys, n, table_keys, capacity, bits, slots):
        self.launches["lookup"] += 1
        for i in range(int(n)):
            key, found = int(keys[i]), -1
            if key >= 0:
                slot = py_home(key, int(capacity))
                for _ in range(int(capacity)):
                    held = int(table_keys[slot])
                    if held == key:
                        found = slot
                    if held in (EMPTY, key):
                        break
                    slot = (slot + 1) % int(capacity)
            slots[i] = found


def test_cuda_backend_logic_with_kernel_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's growth, rehash and lookup, run on the CPU with Python kernels."""
    kernels = KernelStandIns(seed=6)
    monkeypatch.setattr(exit_table, "_cuda_kernels", lambda index: (kernels.insert, kernels.lookup))
    monkeypatch.setattr(ExitTable, "_launch", lambda self, kernel, n, *args: n and kernel(*args))
    table, cpu, ref = ExitTable(L, capacity=16), ExitTable(L, capacity=16), Reference()
    table.backend = "cuda"
    rng = random.Random(6)
    pool = keys_with_homes({15: 4, 0: 2}, 16) + EXTREME_KEYS + list(range(60))
    for size in [6, 20, 60, 150]:
        batch = [rng.choice(pool[:6] if size == 6 else pool) for _ in range(size)]
        layers = [rng.randint(1, L) for _ in batch]
        amounts = [rng.randint(0, 3) for _ in batch]
        args = (torch.tensor(batch), torch.tensor(layers), torch.tensor(amounts))
        table.add(*args)
        cpu.add(*args)
        ref.add(batch, layers, amounts)
        assert (len(table), table.capacity) == (len(cpu), cpu.capacity)
    assert table.capacity > 16 and kernels.launches["insert"] > 4  # grew: rehash by the kernel
    assert_matches(table, ref, extra=[61, 2**62 + 3])
    for mine, theirs in zip(table.items(), cpu.items(), strict=True):
        assert torch.equal(mine, theirs)


def _cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ready(), reason="needs CUDA and CuPy (pip install 'geep[gpu]')")
def test_cuda_table_equals_cpu_table() -> None:
    print(f"\nexit table on {torch.cuda.get_device_name()}")
    rng = random.Random(5)
    colliding = keys_with_homes({15: 5, 0: 3, 7: 4}, 16, seed=5)
    pool = colliding + EXTREME_KEYS + [rng.randrange(2**63) for _ in range(20000)]
    cpu = ExitTable(L, capacity=16)
    gpu = ExitTable(L, capacity=16, device="cuda")
    assert gpu.backend == "cuda"
    for size in [6, 50, 1000, 30000]:
        batch = [rng.choice(colliding if size == 6 else pool) for _ in range(size)]
        layers = [rng.randint(1, L) for _ in batch]
        amounts = [rng.randint(0, 4) for _ in batch]
        args = (torch.tensor(batch), torch.tensor(layers), torch.tensor(amounts))
        cpu.add(*args)
        gpu.add(*(a.cuda() for a in args))
        assert (len(gpu), gpu.capacity) == (len(cpu), cpu.capacity)
        for mine, theirs in zip(gpu.items(), cpu.items(), strict=True):
            assert torch.equal(mine, theirs)
    queries = torch.tensor([*pool[:5000], -1, -(2**63), 12345])
    rows = gpu.lookup(queries.cuda())
    assert rows.device.type == "cuda" and rows.dtype == torch.int32
    assert torch.equal(rows.cpu(), cpu.lookup(queries))
    keys = sample_keys(
        torch.tensor([[rng.randrange(3, 500) for _ in range(20)] for _ in range(300)]),
        torch.ones(300, 20),
        [CLS, SEP, PAD],
        ngram=2,
    )
    exits = torch.tensor([rng.randint(1, L) for _ in range(300)])
    built = ExitTable.from_samples(keys.cuda(), exits.cuda(), L, device="cuda")
    for mine, theirs in zip(
        built.items(), ExitTable.from_samples(keys, exits, L).items(), strict=True
    ):
        assert torch.equal(mine, theirs)
