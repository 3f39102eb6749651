"""Space maps between releases: exact on known maps, chained, any dimensions, saved and read back."""

import numpy as np
import pytest

from embeddings.errors import InputError
from embeddings.space import SpaceMap, fit_space_map


def _rotation(dim: int, rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q


def test_a_rotated_and_shifted_space_is_mapped_back_exactly():
    rng = np.random.default_rng(0)
    old = rng.standard_normal((500, 16))
    new = old @ _rotation(16, rng) + 3.0  # a retrain: the same geometry, turned and moved
    for kind in ("orthogonal", "linear"):
        m = fit_space_map(new, old, "v2", "v1", kind, ridge=1e-9)
        np.testing.assert_allclose(m(new), old, atol=1e-4)


def test_maps_chain_and_change_dimension(tmp_path):
    rng = np.random.default_rng(1)
    v1 = rng.standard_normal((400, 16))
    v2 = np.hstack([v1 @ _rotation(16, rng), 0.01 * rng.standard_normal((400, 8))])  # a wider model
    v3 = v2 @ _rotation(24, rng) - 1.0
    m32 = fit_space_map(v3, v2, "v3", "v2")
    m21 = fit_space_map(v2, v1, "v2", "v1")
    chained = m32.then(m21)
    assert (chained.source, chained.target, chained.weight.shape) == ("v3", "v1", (24, 16))
    np.testing.assert_allclose(chained(v3), m21(m32(v3)), atol=1e-4)
    np.testing.assert_allclose(chained(v3), v1, atol=0.05)
    with pytest.raises(InputError, match="cannot chain"):
        m21.then(m32)
    path = chained.save(tmp_path / "map.npz")
    again = SpaceMap.load(path)
    assert (again.source, again.target) == ("v3", "v1")
    np.testing.assert_array_equal(again(v3), chained(v3))
    with pytest.raises(InputError, match="takes vectors of 24 floats"):
        again(v1)


def test_the_training_time_compatibility_loss_learns_a_map_onto_the_previous_release(tiny_week):
    """``TrainConfig.compat_weight`` with a ``compat_target``: the fit learns an aligner from the new model's item
    vectors onto the previous release's, which lands closer to them than the untrained aligner did."""
    import torch

    from embeddings.data.split import temporal_split
    from embeddings.models.sasrec import SASRecConfig, compat_target
    from embeddings.models.zoo import make_model
    from embeddings.training.config import TrainConfig

    listings, events, _ = tiny_week
    split = temporal_split(events, listings)
    cfg = SASRecConfig(item_encoder="id", max_len=20, dim=16)

    def fit(seed: int, weight: float = 0.0, target=None):
        model = make_model(
            "sasrec",
            split,
            None,
            sasrec=cfg,
            train=TrainConfig(epochs=3, batch_size=32, seed=seed, compat_weight=weight),
        )
        model.compat_target = target
        return model

    previous = fit(0).fit(split)
    assert previous.aligner is None
    target, known = compat_target(previous, split.item_ids)
    assert known.sum() == previous.scorable.sum() and not known[0]
    model = fit(1, 1.0, (target, known))
    torch.manual_seed(1)
    untrained = torch.nn.Linear(16, 16)
    model.fit(split)
    mine = model.item_table()[known]

    def gap(aligner) -> float:
        with torch.no_grad():
            return float(((aligner(mine) - target[known]) ** 2).sum(-1).mean() / (target[known] ** 2).sum(-1).mean())

    assert model.aligner is not None and gap(model.aligner) < 0.5 * gap(untrained)
