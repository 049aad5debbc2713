import math
import os

import pytest
import torch

from hf_wagle import WeightMask
from hf_wagle.attribution import select_top_k
from hf_wagle.mask import MASK_FILE, project_rows_columns


def test_select_top_k_matches_a_full_sort():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(37, 11, generator=g), torch.rand(5, generator=g) * 3, torch.rand(64, 3, generator=g) / 7]
    flat = torch.cat([s.reshape(-1) for s in scores])
    for ratio in (0.0, 0.1, 0.3, 0.8, 1.0):
        k = round(ratio * flat.numel())
        got = torch.cat([m.reshape(-1) for m in select_top_k(scores, k)])
        want = torch.zeros_like(got)
        want[torch.topk(flat, k).indices] = True
        assert torch.equal(got, want)


def test_select_top_k_ties_go_to_earlier_parameters():
    scores = [torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 0.5])]
    masks = select_top_k(scores, 2)
    assert masks[0].tolist() == [False, True, True] and masks[1].tolist() == [False, False]
    masks = select_top_k(scores, 3)
    assert masks[1].tolist() == [True, False]


def test_save_load_is_exact_and_bit_packed(tmp_path):
    g = torch.Generator().manual_seed(1)
    m = WeightMask({"a.weight": torch.rand(33, 17, generator=g) > 0.3, "b.bias": torch.rand(5, generator=g) > 0.5},
                   {"method": "wagle", "ratio": 0.7})
    path = m.save(tmp_path)
    loaded = WeightMask.load(tmp_path)
    assert loaded.names() == m.names() and loaded.metadata == m.metadata
    for n in m.names():
        assert torch.equal(loaded[n], m[n]) and loaded[n].shape == m[n].shape
    n_weights = m.num_total
    payload = sum(math.ceil(t.numel() / 8) for _, t in m.items())
    assert payload * 8 <= n_weights + 16  # one bit per weight (plus byte padding per tensor)
    assert os.path.getsize(path) < payload + 1024
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=MASK_FILE):
        WeightMask.load(tmp_path)
    m = WeightMask({"a.weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not fit"):
        m.check_fits({"a.weight": (3, 2)})
    with pytest.raises(ValueError, match="absent"):
        m.check_fits({"b.weight": (2, 3)})


def test_row_column_projection_keeps_fraction_and_prefers_dense_lines():
    m = torch.zeros(8, 10, dtype=torch.bool)
    m[:4, :5] = True  # a 4 x 5 block: f = 0.25 -> 4 rows, 5 columns
    rows, cols = project_rows_columns(m)
    assert rows.tolist() == [True] * 4 + [False] * 4 and cols.tolist() == [True] * 5 + [False] * 5
    rows, cols = project_rows_columns(torch.zeros(3, 3, dtype=torch.bool))
    assert not rows.any() and not cols.any()
