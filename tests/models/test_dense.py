"""The fused scoring path of the dense layers gives the scores the layers give one by one."""

import pytest
import torch

from hepstream.models.deepsets import DeepSets
from hepstream.models.features import FeatureLayout
from hepstream.models.mlp import FUSED_MIN_ROWS, MLP, DenseStack, dense_layers, fused_linear_available

pytestmark = pytest.mark.skipif(not fused_linear_available(), reason="this torch build has no oneDNN")


def _layer_by_layer(stack: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for layer in stack:
        x = layer(x)
    return x


def test_big_batches_score_fused_and_match_the_layers_one_by_one():
    torch.manual_seed(0)
    stack = dense_layers([39, 64, 64, 1], dropout=0.1).eval()
    x = torch.randn(FUSED_MIN_ROWS + 1000, 39)
    with torch.no_grad():
        assert stack.scores_fused(x)
        fused = stack(x)
        expected = _layer_by_layer(stack, x)
    assert fused.shape == expected.shape == (len(x), 1)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert (expected[:, 0] != 0).all()  # ReLUs and biases did something worth comparing


def test_only_scoring_of_big_float32_cpu_batches_is_fused():
    stack = dense_layers([5, 8, 1]).eval()
    big = torch.randn(FUSED_MIN_ROWS, 5)
    with torch.no_grad():
        assert stack.scores_fused(big)
        assert not stack.scores_fused(big[:-1])  # too few rows
        assert not stack.scores_fused(big.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not stack.scores_fused(big)
        assert not stack.train().scores_fused(big)
    assert not stack.eval().scores_fused(big)  # gradients on: training


def test_fused_scores_follow_weights_changed_in_place():
    torch.manual_seed(1)
    model = MLP(7, [16, 16]).eval()
    x = torch.randn(FUSED_MIN_ROWS, 7)
    with torch.no_grad():
        before = model(x)
        for parameter in model.parameters():
            parameter.mul_(1.5)  # as an optimiser step does
        after = model(x)
        torch.testing.assert_close(after, _layer_by_layer(model.net, x).squeeze(-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_deep_sets_embeds_objects_fused_with_the_same_scores(monkeypatch):
    torch.manual_seed(2)
    layout = FeatureLayout(flat=3, collections=((4, 4), (3, 4)))
    model = DeepSets(layout, [32], [32]).eval()
    x = torch.randn(FUSED_MIN_ROWS, layout.n_features)
    x[:, layout.value_columns:] = (x[:, layout.value_columns:] > 0).float()  # masks are 0 or 1
    with torch.no_grad():
        assert all(phi.scores_fused(torch.zeros(len(x), 4, branches)) for phi, (_, branches) in
                   zip(model.phis, layout.collections))
        fused = model(x)
        monkeypatch.setattr(DenseStack, "scores_fused", lambda self, x: False)
        expected = model(x)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
