import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from embeddings.data.features import listing_features
from embeddings.data.split import temporal_split
from embeddings.errors import InputError
from embeddings.models.base import Popularity
from embeddings.models.lightfm_model import LightFMConfig
from embeddings.models.losses import (
    ROWS,
    chunk_rows,
    full_softmax_ce,
    log_inclusion,
    logq_softmax_ce,
    sampled_softmax_ce,
)
from embeddings.models.sasrec import (
    Block,
    SASRec,
    SASRecConfig,
    SASRecRecommender,
    dropout,
    dropout_bits,
    fit_frozen_transform,
    fixed_signs,
    load_checkpoint,
    rotary_table,
    rotate,
)
from embeddings.models.zoo import make_model
from embeddings.stages.evaluate import evaluate
from embeddings.training.config import TrainConfig
from embeddings.training.loop import lr_factor

FAST = TrainConfig(epochs=3, batch_size=32, patience=10, bf16=False)


@pytest.fixture(scope="module")
def split(tiny_week):
    listings, events, _ = tiny_week
    return temporal_split(events, listings)


@pytest.fixture(scope="module")
def features(tiny_week, split):
    return listing_features(tiny_week[0], split.item_ids, split.cutoff).smooth()[0]


@pytest.mark.parametrize(("positions", "layer"), [("learned", "sasrec"), ("rotary", "sasrec"), ("rotary", "ligr")])
def test_sasrec_shapes_and_causality(positions, layer):
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items=50, max_len=12, dim=16, n_blocks=2, n_heads=2, positions=positions, layer=layer)
    model = SASRec(cfg).eval()
    tokens = torch.randint(1, 51, (3, 12))
    hidden = model(tokens)
    assert hidden.shape == (3, 12, 16) and model.logits(hidden).shape == (3, 12, 50)
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] % 50) + 1
    after = model(changed)
    assert torch.equal(hidden[:, :7], after[:, :7])  # nothing before position 7 moves
    assert not torch.allclose(hidden[:, 7:], after[:, 7:])


def test_cpu_attention_is_scaled_dot_product_attention():
    torch.manual_seed(0)
    block = Block(SASRecConfig(n_items=5, max_len=12, dim=16, n_heads=2)).eval()
    x = torch.randn(3, 9, 16)
    b, t, d = x.shape
    q, k, v = (z.view(b, t, 2, 8).transpose(1, 2) for z in block.qkv(x).split(d, dim=2))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
    assert torch.allclose(block.attention(x), block.proj(ref), atol=1e-6)


def test_ligr_block_gates_each_residual_branch():
    torch.manual_seed(0)
    block = Block(SASRecConfig(n_items=5, max_len=12, dim=16, n_heads=2, layer="ligr", ffn_mult=2)).eval()
    x = torch.randn(3, 9, 16)
    x1 = x + torch.sigmoid(block.gate_attention(x)) * block.attention(block.ln1(x))
    gate, value = (block.ln2(x1) @ block.mlp.up.weight.T).chunk(2, dim=-1)
    want = x1 + torch.sigmoid(block.gate_mlp(x1)) * ((F.silu(gate) * value) @ block.mlp.down.weight.T)
    torch.testing.assert_close(block(x), want)
    assert block.mlp.up.weight.shape == (2 * 32, 16)  # hidden width ffn_mult x dim, gate and value


def test_dropout_keeps_one_minus_p_scaled_and_is_identity_in_eval():
    torch.manual_seed(0)
    x = torch.ones(200, 500, requires_grad=True)
    y = dropout(x, 0.2, dropout_bits(1, x.shape, x.device)[0])
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.8))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.8)  # the gradient flows through kept elements only
    assert dropout(x, 0.2, None) is x
    rows = dropout(torch.ones(4000, 7), 0.5, dropout_bits(1, (4000, 7), x.device)[0]) != 0  # every lane is random
    assert all(abs(rows[:, j].float().mean().item() - 0.5) < 0.03 for j in range(7))


def test_each_dropout_site_of_a_pass_gets_its_own_mask():
    """One draw gives every site its bits: the sites' masks are independent, and evaluation draws none."""
    torch.manual_seed(0)
    masks = (dropout_bits(5, (300, 64), torch.device("cpu")) & 0x7FFF) >= round(0.5 * 32768)
    assert masks.shape == (5, 300, 64)
    for i in range(5):
        assert abs(masks[i].float().mean().item() - 0.5) < 0.01
        for j in range(i):
            assert abs((masks[i] == masks[j]).float().mean().item() - 0.5) < 0.01
    model = SASRec(SASRecConfig(n_items=30, max_len=10, dim=16, dropout=0.5))
    tokens = torch.randint(1, 31, (4, 10))
    state = torch.random.get_rng_state()
    model.eval()(tokens)
    assert torch.equal(torch.random.get_rng_state(), state)  # no random draw outside training
    model.train()
    assert not torch.equal(model(tokens), model(tokens))


def test_compiled_training_steps_train_the_model_eager_steps_train(split):
    """``compile=True`` changes how a step runs, not what it computes: in float32 the losses and the weights after
    two epochs agree with the eager run's (the same dropout bits: drawn outside the compiled graph), and a second
    compiled run repeats the first bit for bit."""
    runs = []
    for compile_ in (False, True, True):
        cfg = TrainConfig(epochs=2, batch_size=32, patience=100, bf16=False, compile=compile_)
        runs.append(SASRecRecommender(SASRecConfig(max_len=20, dim=16, dropout=0.3), cfg).fit(split))
    eager, compiled, again = (r.model.state_dict() for r in runs)
    assert [h["loss"] for h in runs[1].history] == pytest.approx([h["loss"] for h in runs[0].history], rel=1e-4)
    for name, want in eager.items():
        torch.testing.assert_close(compiled[name], want, atol=1e-4, rtol=1e-3, msg=name)
        assert torch.equal(again[name], compiled[name]), name


def test_rotary_scores_depend_only_on_distance():
    table = rotary_table(30, 8)
    q, k = torch.randn(8).expand(30, 8), torch.randn(8).expand(30, 8)
    rq, rk = rotate(q, table), rotate(k, table)
    assert torch.allclose(rq[5] @ rk[3], rq[27] @ rk[25], atol=1e-5)
    assert not torch.allclose(rq[5] @ rk[3], rq[5] @ rk[1], atol=1e-3)
    assert torch.allclose(rq.norm(dim=1), q.norm(dim=1), atol=1e-5)  # a rotation


@pytest.mark.parametrize(("positions", "layer"), [("learned", "sasrec"), ("rotary", "sasrec"), ("learned", "ligr")])
def test_padding_does_not_change_real_positions(positions, layer):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=20, max_len=10, dim=8, positions=positions, layer=layer)).eval()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 0]])
    assert torch.allclose(model(short)[0], model(padded)[0, :3], atol=1e-6)


@pytest.mark.parametrize(("positions", "layer", "heads"), [("learned", "sasrec", 1), ("rotary", "ligr", 2)])
def test_last_position_alone_matches_the_full_pass(positions, layer, heads):
    """User vectors need only the state after each row's last item: the last block computes that one alone."""
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items=30, max_len=12, dim=16, n_blocks=2, n_heads=heads, positions=positions, layer=layer)
    model = SASRec(cfg).eval()
    tokens = torch.tensor([[3, 4, 5, 0, 0, 0, 0], [7, 1, 2, 9, 8, 6, 5], [11, 0, 0, 0, 0, 0, 0], [0] * 7])
    last = (tokens > 0).sum(1).clamp_min(1) - 1
    full = model(tokens)[torch.arange(4), last]
    alone = model(tokens, last_only=True)
    assert alone.shape == (4, 1, 16)
    assert torch.allclose(alone[:, 0], full, atol=1e-5)


@pytest.mark.parametrize("low_precision", [False, True])
def test_fused_softmax_matches_cross_entropy(low_precision):
    torch.manual_seed(0)
    h = torch.randn(37, 8, requires_grad=True)
    e = torch.randn(11, 8, requires_grad=True)
    y = torch.randint(0, 11, (37,))
    unavailable = torch.zeros(11, dtype=torch.bool)
    unavailable[[3, 5]] = True
    y[y == 3], y[y == 5] = 0, 0
    loss = full_softmax_ce(h, e, y, unavailable, low_precision=low_precision, chunk=10)
    loss.backward()
    h2, e2 = h.detach().clone().requires_grad_(), e.detach().clone().requires_grad_()
    ref = F.cross_entropy((h2 @ e2.T).masked_fill(unavailable, float("-inf")), y)
    ref.backward()
    tol = 3e-2 if low_precision else 1e-5
    assert loss.item() == pytest.approx(ref.item(), rel=tol)
    assert torch.allclose(h.grad, h2.grad, atol=tol) and torch.allclose(e.grad, e2.grad, atol=tol)
    assert torch.all(e.grad[[3, 5]] == 0)  # masked items get no gradient


def test_compile_without_a_cpp_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no compiler on PATH
    with pytest.raises(InputError, match="C\\+\\+ compiler"):
        TrainConfig(compile=True)
    assert not TrainConfig().compile


def test_softmax_chunks_bound_the_logits_and_do_not_change_the_loss():
    assert all(chunk_rows(n) % ROWS == 0 and chunk_rows(n) >= ROWS for n in (1, 500, 3416, 10**7))
    assert chunk_rows(3416) * 3416 <= 3 << 20 < (chunk_rows(3416) + ROWS) * 3416
    torch.manual_seed(3)
    h, e, y = torch.randn(300, 8), torch.randn(40, 8), torch.randint(0, 40, (300,))
    assert full_softmax_ce(h, e, y).item() == pytest.approx(full_softmax_ce(h, e, y, chunk=7).item(), rel=1e-6)


def test_fused_softmax_bias_is_added_to_every_row():
    """A bias per item (logQ's correction) shifts each logit before the softmax; it gets no gradient."""
    torch.manual_seed(1)
    h = torch.randn(70, 8, requires_grad=True)
    e = torch.randn(13, 8, requires_grad=True)
    y = torch.randint(0, 13, (70,))
    bias = torch.randn(13)
    loss = full_softmax_ce(h, e, y, chunk=32, bias=bias)
    loss.backward()
    h2, e2 = h.detach().clone().requires_grad_(), e.detach().clone().requires_grad_()
    F.cross_entropy(h2 @ e2.T + bias, y).backward()
    assert loss.item() == pytest.approx(F.cross_entropy(h2 @ e2.T + bias, y).item(), rel=1e-5)
    torch.testing.assert_close((h.grad, e.grad), (h2.grad, e2.grad), atol=1e-5, rtol=1e-5)


def test_logq_in_bfloat16_is_close_to_float32():
    torch.manual_seed(2)
    h = torch.randn(100, 16, requires_grad=True)
    v = torch.randn(300, 16, requires_grad=True)
    targets, extra, log_q = torch.randint(1, 300, (100,)), torch.randint(1, 300, (40,)), torch.rand(300).log()
    got = torch.autograd.functional.vjp(lambda h, v: logq_softmax_ce(h, v, targets, extra, log_q, True), (h, v))
    want = torch.autograd.functional.vjp(lambda h, v: logq_softmax_ce(h, v, targets, extra, log_q), (h, v))
    assert got[0].item() == pytest.approx(want[0].item(), rel=2e-2)
    for g, w in zip(got[1], want[1], strict=True):
        assert (g - w).abs().max() < 2e-2 * w.abs().max()


@pytest.mark.parametrize("loss", ["softmax", "sampled", "logq"])
def test_loss_falls_on_a_tiny_set(split, loss):
    cfg = TrainConfig(epochs=6, batch_size=32, lr=5e-3, loss=loss, n_negatives=32, patience=100, bf16=False)
    model = SASRecRecommender(SASRecConfig(max_len=20, dim=32), cfg).fit(split)
    losses = [h["loss"] for h in model.history]
    assert losses[-1] < 0.9 * losses[0]
    assert {h["loss_function"] for h in model.history} == {loss}


def test_frozen_vectors_are_bit_identical_after_training(split, features):
    model = SASRecRecommender(SASRecConfig(item_encoder="lst-frozen", max_len=20, dim=32), FAST, features)
    model.fit(split)
    before = SASRec(model.model.cfg, torch.as_tensor(features)).items.frozen
    assert torch.equal(model.model.items.frozen, before)
    assert not model.model.items.frozen.requires_grad
    assert all("frozen" not in n for n, _ in model.model.named_parameters())


def test_cold_start_only_with_lst_features(split, features):
    assert split.test.cold.any()
    cold_items = split.test.targets[split.test.cold]
    scores = {}
    for enc in ("id", "hybrid", "lst-frozen"):
        m = SASRecRecommender(SASRecConfig(item_encoder=enc, max_len=20, dim=32), FAST, features).fit(split)
        scores[enc] = m.score(split.test.users[:5], split.test.histories[:5])
    assert np.isneginf(scores["id"][:, cold_items]).all()
    assert np.isfinite(scores["hybrid"][:, cold_items]).all()
    assert np.isfinite(scores["lst-frozen"][:, cold_items]).all()


def test_checkpoint_round_trip(tmp_path, split, features):
    model = SASRecRecommender(SASRecConfig(item_encoder="hybrid", max_len=20, dim=32), FAST, features).fit(split)
    path = model.save(tmp_path / "m.pt", metrics={"note": "x"})
    loaded = SASRecRecommender.load(path)
    cases = split.test
    assert np.array_equal(model.score(cases.users, cases.histories), loaded.score(cases.users, cases.histories))
    assert loaded.metrics == {"note": "x"} and list(loaded.item_ids) == list(split.item_ids)
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_cannot_execute_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "lst-embeddings/sasrec/1", "x": Evil()}))
    with pytest.raises(InputError, match="refused, the file holds objects that would run code") as caught:
        load_checkpoint(path)
    assert "weights_only=False" not in str(caught.value)  # never advise the unsafe retry


def test_cosine_schedule_warms_up_then_decays_to_zero():
    f = [lr_factor("cosine", p, epochs=5) for p in (0.0, 0.5, 1.0, 3.0, 5.0)]
    assert f[0] < f[1] < f[2] == 1.0 and f[3] == pytest.approx(0.5) and f[4] == pytest.approx(0.0)
    assert lr_factor("constant", 3.7, epochs=5) == 1.0


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, split, schedule):
    cfg = TrainConfig(epochs=4, batch_size=32, patience=100, bf16=False, seed=1, lr_schedule=schedule)
    straight = SASRecRecommender(SASRecConfig(max_len=20, dim=16), cfg, checkpoint_dir=tmp_path / "a").fit(split)

    def interrupt(epoch, stats):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SASRecRecommender(
            SASRecConfig(max_len=20, dim=16), cfg, checkpoint_dir=tmp_path / "b", on_epoch_end=interrupt
        ).fit(split)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = SASRecRecommender(SASRecConfig(max_len=20, dim=16), cfg, checkpoint_dir=tmp_path / "b").fit(split)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_user_vectors_come_back_in_input_order_whatever_the_batching():
    """Histories are batched in order of length (less padding); each vector still belongs to its own history."""
    torch.manual_seed(0)
    rec = SASRecRecommender(SASRecConfig(max_len=12, dim=16, n_items=30))
    rec.model = SASRec(rec.config).eval()
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, 30, n) for n in (9, 1, 30, 0, 4, 12, 2, 7)]
    together = rec.user_vectors(histories, batch_size=3)
    alone = torch.cat([rec.user_vectors([h]) for h in histories])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert torch.all(together[3] == 0)  # an empty history


def test_every_model_shares_the_evaluation(split, tiny_week):
    listings = tiny_week[0]
    results = {}
    for name in ("popular", "lightfm", "lightfm+lst", "sasrec"):
        model = make_model(name, split, listings, lightfm=LightFMConfig(epochs=5), train=FAST).fit(split)
        scores = model.score(split.test.users[:4], split.test.histories[:4])
        assert scores.shape == (4, split.n_items)
        results[name] = evaluate(model, split.test)
        assert 0.0 <= results[name]["hr@10"] <= 1.0 and "cold_hr@10" in results[name]
    assert results["lightfm"]["cold_hr@10"] == 0.0  # no features: a listing never clicked cannot be scored
    assert isinstance(make_model("popular", split, None), Popularity)


def test_training_windows_cover_each_target_once():
    from embeddings.data.split import Sequences
    from embeddings.training.loop import training_windows

    seq = np.arange(23)
    last, _ = training_windows(Sequences.of([seq, np.arange(1)]), 5, "last")
    assert [w.tolist() for w in last] == [list(range(17, 23))]  # one window; a 1-item user has none
    every, lead = training_windows(Sequences.of([seq]), 5, "all")
    targets = np.concatenate([w[1:] for w in every])
    assert sorted(targets.tolist()) == list(range(1, 23))  # every item after the first, exactly once
    assert all(len(w) <= 6 for w in every) and not lead.any()


@pytest.mark.parametrize("length", [2, 6, 7, 8, 23, 24])
def test_overlapping_windows_train_each_target_once_with_half_a_window_before_it(length):
    """``overlap``: windows every max_len // 2 items; the targets each trains (those after its ``lead``) cover
    every item after the first exactly once, and each sees at least max_len // 2 items unless it is among the
    user's first max_len // 2; the batches give the lead targets as padding (no loss)."""
    from embeddings.data.split import Sequences
    from embeddings.training.loop import _batches, training_windows

    seq = np.arange(length)
    windows, lead = training_windows(Sequences.of([np.arange(3), seq]), 6, "overlap")
    assert all(len(w) <= 7 for w in windows)
    trained = [(w[0], w[1 + k :]) for w, k in zip(windows[1:], lead[1:], strict=True)]  # user 1: seq
    targets = np.concatenate([t for _, t in trained])
    assert sorted(targets.tolist()) == list(range(1, length))
    for first, t in trained:
        assert all(x - first >= 3 or x <= 3 for x in t)  # context: items from the window's first up to x - 1
    one, one_lead = training_windows(Sequences.of([seq]), 1, "overlap")  # a window of one input: stride 1
    assert not one_lead.any() and sorted(np.concatenate([w[1:] for w in one]).tolist()) == list(range(1, length))
    plan = [np.arange(len(windows))]
    ((inputs, out),) = _batches(windows, lead, 6, plan)
    for row, (w, k) in enumerate(zip(windows, lead, strict=True)):
        assert out[row].tolist() == [0] * k + (w[1 + k :] + 1).tolist() + [0] * (out.shape[1] - len(w) + 1)
        assert inputs[row, : len(w) - 1].tolist() == (w[:-1] + 1).tolist()


def _list_windows(train, max_len, every):
    """The list-of-arrays windows the trainer built before sequences became flat arrays (the reference)."""
    out = []
    for seq in train:
        end = len(seq)
        while end >= 2:
            out.append(seq[max(0, end - max_len - 1) : end])
            if not every:
                break
            end -= max_len
    return out


def _list_batches(windows, max_len, batch_size, rng):
    """The padded batches the trainer built from those windows with ``pad_right`` (the reference)."""
    from embeddings.models.sasrec import pad_right

    order = rng.permutation(len(windows))
    lengths = np.array([len(windows[i]) for i in order])
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk][np.argsort(-lengths[start : start + chunk], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    for b in rng.permutation(len(batches)):
        chosen = [windows[i] for i in batches[b]]
        x, y = pad_right([w[:-1] for w in chosen], max_len), pad_right([w[1:] for w in chosen], max_len)
        wide = min(max_len, -(-x.shape[1] // 8) * 8)  # widths rounded up to a multiple of 8
        yield F.pad(x, (0, wide - x.shape[1])), F.pad(y, (0, wide - y.shape[1]))


@pytest.mark.parametrize("every", [False, True])
def test_flat_sequences_give_the_batches_the_list_code_gave(tiny_week, every):
    """Sequences as one item array + bounds (no object per user or event) feed training the very same batches,
    in the same order, as the per-user arrays did; and the split built from them is the list-built one."""
    from embeddings.data.split import Sequences, temporal_split
    from embeddings.training.loop import _batches, batch_plan, training_windows

    listings, events, _ = tiny_week
    split = temporal_split(events, listings)
    assert isinstance(split.train, Sequences) and isinstance(split.valid.histories, Sequences)
    # the split's sequences, rebuilt the old way: sort, first touch of each (user, listing), group by user
    ev = events.sort_values(["user_id", "event_timestamp"], kind="stable")
    ev = ev[ev["event_timestamp"] < split.cutoff].drop_duplicates(["user_id", "item_id"])
    index = pd.Index(split.item_ids)
    by_user = {u: index.get_indexer(g["item_id"]) for u, g in ev.groupby("user_id", sort=True)}
    assert list(by_user) == list(split.user_ids)
    for u, s in zip(split.user_ids, split.train, strict=True):
        want = by_user[u][:-1] if len(by_user[u]) >= 2 else by_user[u]
        assert s.tolist() == want.tolist()
    lists = [np.array(s) for s in split.train]
    for max_len in (3, 8, 200):
        windows, lead = training_windows(split.train, max_len, "all" if every else "last")
        plan = batch_plan(windows, max_len, 16, np.random.default_rng(7))
        ours = list(_batches(windows, lead, max_len, plan))
        ref = list(_list_batches(_list_windows(lists, max_len, every), max_len, 16, np.random.default_rng(7)))
        assert len(ours) == len(ref) > 10
        for (x, y), (rx, ry) in zip(ours, ref, strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_batches_by_positions_hold_each_window_once_within_the_budget(split):
    from embeddings.training.config import WIDTH_STEP
    from embeddings.training.loop import _batches, batch_plan, training_windows

    windows, lead = training_windows(split.train, 20, "all")
    plan = batch_plan(windows, 20, 0, np.random.default_rng(0), batch_positions=200)
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(windows)))
    for batch, (inputs, targets) in zip(plan, _batches(windows, lead, 20, plan), strict=True):
        assert inputs.numel() <= 200 or len(batch) == 1  # padded positions within the budget
        longest = int((targets > 0).sum(1).max())
        assert inputs.shape[1] == min(20, -(-longest // WIDTH_STEP) * WIDTH_STEP)  # no wider than its rounding
    short = max(len(b) for b in plan)
    assert short > 16  # short windows: more of them a batch than batch_size would give


def test_logq_correction_by_hand():
    """Candidates {0, 2} (the target, and a uniform draw that repeats it); each logit minus its log q."""
    hidden = torch.tensor([[1.0, 0.0]])
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    log_q = torch.tensor([2.0, 1.0, 4.0]).log()
    loss = logq_softmax_ce(hidden, vectors, torch.tensor([0]), torch.tensor([2, 0]), log_q)
    e = math.e
    assert loss.item() == pytest.approx(-math.log((e / 2) / (e / 2 + e**2 / 4)), rel=1e-6)
    # without the correction the popular candidate 2 would win by more: the correction lowers the loss here
    plain = logq_softmax_ce(hidden, vectors, torch.tensor([0]), torch.tensor([2, 0]), torch.zeros(3))
    assert plain.item() == pytest.approx(-math.log(e / (e + e**2)), rel=1e-6)


def test_sampled_losses_match_their_plain_formulas():
    """Rows and candidates go through the matmuls padded (a fixed set of shapes): loss and gradients are
    those of the unpadded formulas."""
    torch.manual_seed(0)
    h = torch.randn(37, 8, requires_grad=True)
    v = torch.randn(50, 8, requires_grad=True)
    targets, extra = torch.randint(1, 50, (37,)), torch.randint(1, 50, (9,))
    log_q = torch.rand(50).log()
    candidates = torch.unique(torch.cat([targets, extra]))
    where = (targets[:, None] == candidates[None, :]).float().argmax(1)
    plain_logq = lambda h, v: F.cross_entropy(h @ v[candidates].T - log_q[candidates], where)  # noqa: E731
    pos = lambda h, v: (h * v[targets]).sum(-1, keepdim=True)  # noqa: E731
    neg = lambda h, v: (h @ v[extra].T).masked_fill(extra[None, :] == targets[:, None], float("-inf"))  # noqa: E731
    plain_sampled = lambda h, v: F.cross_entropy(torch.cat([pos(h, v), neg(h, v)], 1), torch.zeros(37).long())  # noqa: E731
    for ours, plain in (
        (lambda h, v: logq_softmax_ce(h, v, targets, extra, log_q), plain_logq),
        (lambda h, v: sampled_softmax_ce(h, v, targets, extra), plain_sampled),
    ):
        got = torch.autograd.functional.vjp(ours, (h, v))
        want = torch.autograd.functional.vjp(plain, (h, v))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_inclusion_probability_of_in_batch_and_uniform_sampling():
    """4 targets drawn by popularity (3:1) and 2 uniform draws over 3 available items, by hand."""
    popularity = torch.tensor([3, 1, 0, 0])
    available = torch.tensor([True, True, True, False])
    got = log_inclusion(popularity, positions=4, n_uniform=2, available=available).exp()
    miss_uniform = (2 / 3) ** 2
    want = torch.tensor([1 - 0.25**4 * miss_uniform, 1 - 0.75**4 * miss_uniform, 1 - miss_uniform, 0.0])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # rare items: the inclusion probability is the expected number of draws
    rare = log_inclusion(
        torch.tensor([1] + [0] * 9999), positions=1, n_uniform=1, available=torch.ones(10000, dtype=torch.bool)
    )
    assert rare[5].exp().item() == pytest.approx(1e-4, rel=1e-3)


def test_auto_loss_is_full_softmax_on_small_catalogues_and_logq_on_large_ones():
    from embeddings.training.config import AUTO_FULL_SOFTMAX_MAX_ITEMS
    from embeddings.training.loop import resolve_loss

    assert resolve_loss("auto", AUTO_FULL_SOFTMAX_MAX_ITEMS) == "softmax"
    assert resolve_loss("auto", AUTO_FULL_SOFTMAX_MAX_ITEMS + 1) == "logq"
    assert resolve_loss("sampled", 10**6) == "sampled"


def test_evaluation_batches_shrink_on_a_large_catalogue_with_the_same_ranks(split, monkeypatch):
    """With room for only a few users' scores at once, the evaluation takes smaller batches and ranks alike."""
    from embeddings.stages import evaluate as ev

    model = Popularity().fit(split)
    seen = []

    class Counting:
        name = "counting"

        def score(self, users, histories):
            seen.append(len(users))
            return model.score(users, histories)

    whole = ev.rank_cases(Counting(), split.test)[0]
    monkeypatch.setattr(ev, "SCORE_CELLS", 3 * split.n_items)
    seen.clear()
    small = ev.rank_cases(Counting(), split.test)[0]
    assert max(seen) == 3 and sum(seen) == len(split.test) + 1  # one probe row, then 3 users per batch
    np.testing.assert_array_equal(small, whole)


def test_auto_encoder_uses_lst_features_when_the_data_has_listings(split, tiny_week, features):
    from embeddings.models.sasrec import AUTO_HYBRID_MIN_CLICKS

    assert SASRecRecommender(SASRecConfig(), FAST, features).config.item_encoder == "lst-frozen"
    assert SASRecRecommender(SASRecConfig(), FAST).config.item_encoder == "id"
    assert split.train.lengths.sum() < AUTO_HYBRID_MIN_CLICKS
    assert make_model("sasrec", split, tiny_week[0], train=FAST).name == "sasrec[lst-frozen]"
    assert make_model("sasrec", split, None, train=FAST).name == "sasrec[id]"
    # enough clicks to learn a vector per listing on top of its features: hybrid; never without features
    assert SASRecConfig().resolve(True, train_clicks=AUTO_HYBRID_MIN_CLICKS).item_encoder == "hybrid"
    assert SASRecConfig().resolve(True, train_clicks=AUTO_HYBRID_MIN_CLICKS - 1).item_encoder == "lst-frozen"
    assert SASRecConfig().resolve(False, train_clicks=10 * AUTO_HYBRID_MIN_CLICKS).item_encoder == "id"
    assert SASRecConfig(item_encoder="id").resolve(True, train_clicks=10**9).item_encoder == "id"
    with pytest.raises(InputError, match="resolved when the data is known"):
        _ = SASRecConfig().encoder


def test_frozen_projection_has_one_sign_whatever_the_thread_count():
    """Principal components have no sign of their own and LAPACK's pick moved with the thread count (one training
    process against two gave other frozen vectors): each is flipped by the sign of its product with a fixed generic
    vector, so any sign LAPACK picks gives one projection, one-hot components whose largest entries tie included."""
    torch.manual_seed(0)
    features = torch.randn(500, 40) @ torch.randn(40, 40)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            runs.append(fit_frozen_transform(features, 16))
    finally:
        torch.set_num_threads(threads)
    (_, proj, _), (_, proj2, _) = runs
    torch.testing.assert_close(proj, proj2, atol=1e-5, rtol=1e-5)
    components = torch.linalg.svd(features.double() - features.double().mean(0), full_matrices=False)[2][:16]
    components[3] = torch.zeros(40, dtype=torch.float64).index_fill(0, torch.tensor([5, 9]), 0.5**0.5)
    components[3, 9] *= -1  # a component whose largest entries tie with opposite signs
    flips = torch.tensor([(-1.0) ** k for k in range(16)], dtype=torch.float64)[:, None]
    torch.testing.assert_close(fixed_signs(components), fixed_signs(components * flips))
    assert torch.equal(fixed_signs(components).abs(), components.abs())
