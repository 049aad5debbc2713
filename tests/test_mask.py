import math
import os

import numpy as np
import pytest
import torch

from hf_wagle import WeightMask
from hf_wagle.mask import MASK_FILE, project_rows_columns
from hf_wagle.masking import select_top_k


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


def test_real_mask_round_trips_under_1_1_bits_per_weight(trained, world, tmp_path):
    from hf_wagle import compute_mask

    model, tokenizer = trained
    m = compute_mask(model, world["forget"].select(range(8)), world["retain"].select(range(8)), tokenizer,
                     ratio=0.8, progress=False)
    path = m.save(tmp_path)
    bits_per_weight = os.path.getsize(path) * 8 / m.num_total
    assert bits_per_weight <= 1.1, bits_per_weight
    loaded = WeightMask.load(tmp_path, model=model)
    assert loaded == m and loaded.metadata == m.metadata and loaded.num_selected == round(0.8 * m.num_total)
    assert m.nbytes <= m.num_total / 8 + len(m)  # held packed in memory too


def test_loading_onto_a_model_it_does_not_fit_is_a_clear_error(trained, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_wagle import compute_mask

    model, _ = trained
    compute_mask(model, None, None, method="magnitude", ratio=0.5).save(tmp_path)
    cfg = LlamaConfig(**{**model.config.to_dict(), "num_hidden_layers": model.config.num_hidden_layers - 1})
    smaller = LlamaForCausalLM(cfg)
    with pytest.raises(ValueError, match="does not fit"):
        WeightMask.load(tmp_path, model=smaller)
    reordered = WeightMask.load(tmp_path)
    reordered._packed = dict(reversed(list(reordered._packed.items())))  # same names/shapes, another order
    with pytest.raises(ValueError, match="fingerprint"):
        backwards = {"named_parameters": lambda self: reversed(list(model.named_parameters()))}
        reordered.check_model(type("M", (), backwards)())


def test_stats_per_layer_and_module_type(tmp_path):
    masks = {"model.embed_tokens.weight": torch.zeros(10, 4, dtype=torch.bool),
             "model.layers.0.self_attn.q_proj.weight": torch.ones(4, 4, dtype=torch.bool),
             "model.layers.0.mlp.up_proj.weight": torch.zeros(8, 4, dtype=torch.bool),
             "model.layers.1.self_attn.q_proj.weight": torch.tensor([[True, False]] * 8),
             "model.norm.weight": torch.ones(4, dtype=torch.bool)}
    m = WeightMask(masks, {"method": "x"})
    s = m.stats()
    assert (s["selected"], s["total"]) == (16 + 8 + 4, 40 + 16 + 32 + 16 + 4)
    assert s["per_layer"]["0"] == {"selected": 16, "total": 48, "fraction": 16 / 48}
    assert s["per_layer"]["1"]["fraction"] == 0.5 and s["per_layer"]["-"]["selected"] == 4
    assert list(s["per_layer"]) == ["0", "1", "-"]
    assert s["per_module"]["q_proj"] == {"selected": 24, "total": 32, "fraction": 0.75}
    assert s["per_module"]["embed_tokens"]["fraction"] == 0 and s["per_module"]["norm"]["fraction"] == 1
    assert s["per_layer_module"]["1"]["q_proj"]["fraction"] == 0.5
    assert "q_proj" in m.format_stats()
    rows, modules, grid = m.heatmap_grid()
    assert rows == ["0", "1", "outside"]
    assert modules == ["embed_tokens", "q_proj", "up_proj", "norm"]  # model order, embeddings and norms kept
    assert grid[2, 0] == 0 and grid[2, 3] == 1 and grid[1, 1] == 0.5 and np.isnan(grid[1, 2])
    png = m.plot_heatmap(tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_packed_construction_and_odd_sizes():
    from hf_wagle.mask import pack_bits

    g = torch.Generator().manual_seed(2)
    for n in (1, 7, 8, 9, 1001):
        t = torch.rand(n, generator=g) > 0.5
        m = WeightMask.from_packed({"w": (pack_bits(t), (n,))})
        assert torch.equal(m["w"], t) and m.num_selected == int(t.sum())
    bad = pack_bits(torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="packed"):
        WeightMask.from_packed({"w": (bad[:1], (9,))})
    junk = bad.copy()
    junk[-1] = 0xFF  # padding bits set: ignored
    assert WeightMask.from_packed({"w": (junk, (9,))}).num_selected == 9


def test_selection_ties_and_weights_on_large_chunked_tensors(monkeypatch):
    import hf_wagle.masking.selection as selection

    monkeypatch.setattr(selection, "CHUNK", 64)  # many chunks per tensor
    g = torch.Generator().manual_seed(3)
    scores = [torch.randint(0, 5, (50, 7), generator=g).float(), torch.randint(0, 5, (300,), generator=g).float()]
    flat = torch.cat([s.reshape(-1) for s in scores])
    for k in (0, 1, 100, 333, 650):
        got = torch.cat([m.reshape(-1) for m in select_top_k(scores, k)])
        want = torch.zeros_like(got)
        want[torch.sort(-flat, stable=True).indices[:k]] = True
        assert torch.equal(got, want), k
