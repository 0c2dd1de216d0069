"""CAM (written here) against Grad-CAM (pytorch-grad-cam): the known identity for a global-average-
pool + linear classifier, hook hygiene, and what the CAM trainable logs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from trainables.lab1.cam import ClassActivationMap, CamConfig, heat_maps, probability_drop, to_heat_maps, train
from trainables.config import ConfigError
from trainables.context import LocalContext
from trainables.models import cnn, resnet18_cifar

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _nets() -> dict[str, tuple[torch.nn.Module, int]]:
    """Random-weight nets and the input side (pixels) that leaves their last maps larger than 1x1."""
    torch.manual_seed(0)
    return {"cnn": (cnn(3, 6, width=8, depth=1, residual=True, mean=MEAN, std=STD, num_stages=2), 8),
            "resnet18": (resnet18_cifar(3, 6, MEAN, STD), 16)}


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_cam_equals_grad_cam_up_to_a_positive_scale_per_image(name):
    model, side = _nets()[name]
    model.eval()
    x = torch.rand(5, 3, side, side, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([0, 1, 2, 3, 5])
    with ClassActivationMap(model, model.stages[-1], model.head) as cam:
        raw_cam, logits = cam(x, classes)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with GradCAM(model=model, target_layers=[model.stages[-1]]) as grad_cam:
        scaled = grad_cam(input_tensor=x, targets=targets)
        acts = grad_cam.activations_and_grads.activations[0].numpy()
        grads = grad_cam.activations_and_grads.gradients[0].numpy()
        raw_grad = grad_cam.get_cam_image(x, model.stages[-1], targets, acts, grads)  # before ReLU and scaling
    c = raw_cam.numpy().reshape(len(x), -1)
    g = raw_grad.reshape(len(x), -1)
    assert np.abs(c).max() > 1e-3  # a real map, not zeros that match trivially
    scale = (g * c).sum(1) / (c * c).sum(1)  # least-squares factor, one per image
    assert (scale > 0).all()
    np.testing.assert_allclose(g, scale[:, None] * c, rtol=1e-4, atol=1e-6)
    h, w = raw_cam.shape[-2:]
    np.testing.assert_allclose(scale, 1.0 / (h * w), rtol=1e-4)  # Grad-CAM weights = w_c / (h*w)
    # And drawn the same way (ReLU, scaled to [0, 1], resized), the two heat maps coincide.
    np.testing.assert_allclose(to_heat_maps(raw_cam, (side, side)).numpy(), scaled, atol=1e-4)
    assert _hooks(model) == 0


def test_cam_spatial_mean_plus_bias_is_the_logit():
    model, side = _nets()["cnn"]
    x = torch.rand(4, 3, side, side)
    with ClassActivationMap(model, model.stages[-1], model.head) as cam:
        maps, logits = cam(x)  # the predicted classes
    pred = logits.argmax(1)
    torch.testing.assert_close(maps.mean((1, 2)) + model.head.bias[pred], logits.gather(1, pred[:, None])[:, 0],
                               rtol=1e-5, atol=1e-5)


def test_hooks_are_released_after_cam_and_grad_cam():
    model, side = _nets()["cnn"]
    x = torch.rand(3, 3, side, side)
    assert _hooks(model) == 0
    with ClassActivationMap(model, model.stages[-1], model.head) as cam:
        assert _hooks(model) == 1  # held while open
        cam(x)
    assert _hooks(model) == 0 and cam.handles == []
    for method, layer in [("cam", "last"), ("gradcam", "last"), ("gradcam", "previous"), ("gradcam++", "last")]:
        maps = heat_maps(model, method, layer, x, torch.tensor([0, 1, 2]))
        assert maps.shape == (3, side, side) and float(maps.min()) >= 0 and float(maps.max()) <= 1 + 1e-6
        assert _hooks(model) == 0, method


def test_hooks_are_released_when_the_forward_fails():
    model, _ = _nets()["cnn"]
    with pytest.raises(RuntimeError):
        with ClassActivationMap(model, model.stages[-1], model.head) as cam:
            cam(torch.rand(2, 5, 8, 8))  # wrong channel count
    assert _hooks(model) == 0


def test_cam_and_grad_cam_heat_maps_agree_on_the_last_layer_but_not_the_previous():
    model, side = _nets()["cnn"]
    x = torch.rand(6, 3, side, side, generator=torch.Generator().manual_seed(2))
    classes = torch.arange(6)
    cam = heat_maps(model, "cam", "last", x, classes)
    torch.testing.assert_close(heat_maps(model, "gradcam", "last", x, classes), cam, atol=1e-4, rtol=0)
    assert (heat_maps(model, "gradcam", "previous", x, classes) - cam).abs().max() > 0.05


def test_probability_drop_is_larger_for_the_pixels_the_model_uses():
    """A linear 'model' that only reads the top-left quarter: removing it (the true heat map)
    drops the probability, removing random pixels does so far less."""
    torch.manual_seed(0)

    class TopLeft(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x[:, 0, :4, :4].mean((1, 2)) * 20
            return torch.stack([s, -s], 1)

    x = torch.ones(8, 1, 8, 8)
    maps = torch.zeros(8, 8, 8)
    maps[:, :4, :4] = 1
    salient, random = probability_drop(TopLeft(), x, maps, 0.25, torch.zeros(1, 1, 1, 1), seed=0)
    assert salient > 0.4 and salient > 2 * random


def test_cam_on_the_previous_layer_is_rejected_with_the_key():
    with pytest.raises(ConfigError, match="^layer:"):
        CamConfig(method="cam", layer="previous")


QUICK = dict(source_width=16, source_num_stages=2, source_epochs=5, images_per_class=2, mistakes=4, max_eval=200)


@pytest.mark.slow
def test_cam_trial_logs_a_grid_per_class_and_the_mistakes_and_heat_maps_beat_random(one_torch_thread):
    ctx = LocalContext()
    metrics = train(CamConfig(method="gradcam", layer="last", **QUICK), ctx)
    assert len(ctx.reports) == 1 and "test_acc" in metrics
    figures = sorted(k for k in ctx.files if k.startswith("figures/cam/"))
    assert figures == [f"figures/cam/class_{c:02d}_{c}.png" for c in range(10)] + ["figures/cam/mistakes.png"]
    assert all(ctx.files[f][:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert metrics["test_mistakes"] > 0 and metrics["map_size"] == 4
    # The lab's point: removing the pixels a heat map points at hurts the prediction more than random pixels.
    assert metrics["val_drop/salient"] > metrics["val_drop/random"] + 0.05


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_first_five_cam_trials_cover_every_method_and_layer(seed):
    """The study's cells are enqueued (orchestrator.tuning.cell_points): its five trials are the five
    method/layer combinations, whatever the seed, with the searcher as Tune drives it."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.studies import get_study
    from orchestrator.tuning import PinnedSpace, cell_points

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = get_study("lab1", "cam")
    searcher = OptunaSearch(space=PinnedSpace(study.space, {}), metric="val_faithfulness", mode="max",
                            sampler=optuna.samplers.TPESampler(seed=seed), points_to_evaluate=cell_points(study, {}, 5))
    seen = []
    for i in range(5):
        config = searcher.suggest(f"t{i}")
        seen.append((config["method"], config.get("layer", "last")))
        searcher.on_trial_complete(f"t{i}", {"val_faithfulness": float(i)})
    assert sorted(seen) == sorted([("cam", "last"), ("gradcam", "last"), ("gradcam", "previous"),
                                   ("gradcam++", "last"), ("gradcam++", "previous")])


def test_cam_trials_that_start_together_train_the_source_cnn_once(tmp_path, monkeypatch):
    """Without a source model in MLflow, the study's trials share a folder (`source_cache`): the
    first trains the source CNN under the folder's lock, the others wait and load it."""
    import threading

    from trainables.lab1 import source

    calls = []
    real = source.train_source

    def counting(src, ctx):
        calls.append(1)
        return real(src, ctx)

    monkeypatch.setattr(source, "train_source", counting)
    monkeypatch.setattr(source, "_TRAINED", {})
    done = []
    threads = [threading.Thread(target=lambda m=m: done.append(source.obtain_source(
        CamConfig(**{**QUICK, "source_epochs": 1}, method=m, source_cache=str(tmp_path)), 0, LocalContext())))
        for m in ("cam", "gradcam", "cam")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(done) == 3 and len(calls) == 1
    states = [m.state_dict() for _, m, _ in done]
    assert all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in states[0])
