"""The torch estimators on CUDA, against the same learning on the CPU.

Skipped where torch sees no GPU, as on CI. A GPU node runs them beside
``hepstream bench core`` (see docs/training.md, "GPUs").
"""

import copy

import numpy as np
import pytest
import torch

from hepstream.models.checks import published, synthetic_events, trained
from hepstream.models.metrics import multiclass_auc
from tests.models.test_contract import MODELS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")


@pytest.mark.parametrize("kind", ["mlp", "deepsets"])
def test_cuda_learns_what_the_cpu_learns(kind):
    cpu, cuda = trained(MODELS[kind], device="cpu"), trained(MODELS[kind], device="cuda")
    assert {p.device.type for p in cuda.estimator.module.parameters()} == {"cuda"}
    batch, _ = synthetic_events(np.random.default_rng(7), 300)
    on_cuda = cuda.estimator.predict_proba(cuda.features.transform(batch))
    np.testing.assert_allclose(on_cuda, cpu.estimator.predict_proba(cpu.features.transform(batch)), atol=2e-3)
    assert cuda.metrics.summary()["overall_auc"] == pytest.approx(cpu.metrics.summary()["overall_auc"], abs=0.01)


@pytest.mark.parametrize("kind", ["mlp", "deepsets"])
def test_mixed_precision_on_cuda_learns(kind):
    learner = trained(MODELS[kind], batches=6, device="cuda", mixed_precision=True)
    assert learner.estimator.scaler.is_enabled()
    batch, y = synthetic_events(np.random.default_rng(8), 400)
    scores = learner.estimator.predict_proba(learner.features.transform(batch))
    assert np.isfinite(scores).all()
    assert multiclass_auc(scores, y) > 0.7


def test_a_checkpoint_learned_on_cuda_serves_on_the_cpu(tmp_path):
    learner = trained(MODELS["mlp"], device="cuda")
    batch, _ = synthetic_events(np.random.default_rng(9), 200)
    served = published(learner, tmp_path).predict(batch)
    np.testing.assert_allclose(served, learner.estimator.predict_proba(learner.features.transform(batch)), atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "deepsets"])
def test_cuda_graphs_learn_what_eager_steps_learn(kind):
    """Full minibatches replay the captured step, the last one of each batch runs eagerly (400 = 6 x 64 + 16),
    and the loss is weighted: the model must end where eager steps take it, so capturing changed nothing."""
    eager, graphed = trained(MODELS[kind], device="cuda"), trained(MODELS[kind], device="cuda", cuda_graphs=True)
    assert graphed.estimator.cuda_graphs and graphed.estimator._graphs
    batch, _ = synthetic_events(np.random.default_rng(10), 300)
    np.testing.assert_allclose(graphed.estimator.predict_proba(graphed.features.transform(batch)),
                               eager.estimator.predict_proba(eager.features.transform(batch)), atol=1e-4)
    assert graphed.metrics.summary()["overall_auc"] == pytest.approx(eager.metrics.summary()["overall_auc"], abs=1e-3)


def test_cuda_graphs_capture_again_after_a_state_is_loaded():
    eager, graphed = trained(MODELS["mlp"], device="cuda"), trained(MODELS["mlp"], device="cuda", cuda_graphs=True)
    # A copy, as a checkpoint read from disk: load_state_dict would share the optimiser's tensors with `eager`.
    graphed.estimator.load_state_dict(copy.deepcopy(eager.estimator.state_dict()))
    assert not graphed.estimator._graphs
    batch, y = synthetic_events(np.random.default_rng(11), 400)
    for learner in (eager, graphed):
        learner.estimator.learn(learner.features.transform(batch), y, None)
    assert graphed.estimator._graphs
    probe, _ = synthetic_events(np.random.default_rng(12), 200)
    np.testing.assert_allclose(graphed.estimator.predict_proba(graphed.features.transform(probe)),
                               eager.estimator.predict_proba(eager.features.transform(probe)), atol=1e-4)
