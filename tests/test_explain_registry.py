"""The explanation-method registry: every method on every backbone, the fast paths against the libraries they
replace (pytorch-grad-cam's GradCAM, Captum's Occlusion), the model lock, and empty maps."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from engine.data.transforms import to_model_input
from engine.errors import ConfigError
from engine.explain import METHODS, attribute, cam_layer, get_method, heatmaps, is_empty, layer_choices
from engine.explain.occlusion import occlusion_attributions, occlusion_baseline
from engine.models.backbones import BACKBONES, N_BLOCKS, StagedNet
from engine.models.names import REGISTRY
from engine.models.weights import architecture

#: The 2-D torchvision backbones and Cheng's DPN-SE (volumes: tests/test_explain_volume.py; the other timm backbones'
#: CAM layers and Grad-CAM: tests/test_models_timm.py).
IMAGE_BACKBONES = [b for b in BACKBONES if REGISTRY[b].library == "torchvision"] + ["dpn92se"]

SIZE = 64

#: Cheap settings so that all 16 methods x 6 backbones run in the suite; the defaults are tested elsewhere.
CHEAP = {"integrated-gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 2}, "gradient-shap": {"n_samples": 2},
         "occlusion": {"window": 32, "stride": 32}, "lime": {"n_samples": 20, "n_segments": 8}}


def tiny(arch: str, seed: int = 0) -> StagedNet:
    torch.manual_seed(seed)
    width = 16 if arch in ("alexnet", "vgg16", "vgg19") else None
    return architecture(arch, 3, "scratch", head_width=width).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE)).astype(np.uint8)


def test_registry_describes_every_method():
    assert len(METHODS) >= 16
    for name, m in METHODS.items():
        assert m.name == name and m.label and m.citation and m.description
        assert m.kind in ("CAM", "gradient", "perturbation") and m.cost in ("fast", "medium", "slow")
        assert get_method(m.label) is m  # pages may pass labels
    with pytest.raises(ConfigError, match="choose one of gradcam"):
        get_method("gradcam-xl")


@pytest.mark.parametrize("arch", IMAGE_BACKBONES)
def test_every_method_runs_on_every_backbone(arch, images):
    model = tiny(arch)
    first_layer = layer_choices(model)[0][0]  # the channel-by-channel CAMs stay affordable on the first block
    for name, m in METHODS.items():
        params = dict(CHEAP.get(name, {}))
        if name in ("scorecam", "ablationcam"):
            params["layer"] = first_layer
        maps = heatmaps(model, images[:1], name, 1, **params)
        assert maps.shape == (1, SIZE, SIZE) and maps.dtype == np.float32, name
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, name


@pytest.mark.parametrize("arch", IMAGE_BACKBONES)
def test_cam_layers_are_rectified_and_named_by_block(arch):
    model = tiny(arch)
    choices = layer_choices(model)
    assert choices[-1][1].endswith(f"(block {N_BLOCKS})") and choices[0][1].endswith("(block 1)")
    x = to_model_input(np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE)).astype(np.uint8))
    seen = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, n=name: seen.setdefault(n, out))
             for name, _, module in (cam_layer(model, c[0]) for c in choices)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    # A^k after the ReLU: what Grad-CAM weights (DPN's last map comes from timm's ELU: it may dip below 0).
    rectified = [name for name, _ in choices if not (arch.startswith("dpn") and name == choices[-1][0])]
    assert all(seen[name].min() >= 0 for name in rectified)
    with pytest.raises(ConfigError, match="not a CAM layer"):
        cam_layer(model, "classifier")


@pytest.mark.parametrize("arch", ["alexnet", "resnet18", "densenet121"])
def test_gradcam_equals_pytorch_grad_cam(arch, images):
    model = tiny(arch, seed=4)
    x = to_model_input(images)
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    for layer_name, _ in (layer_choices(model)[-1], layer_choices(model)[2]):
        module = cam_layer(model, layer_name)[2]
        for targets in (predicted, [(t + 1) % 3 for t in predicted]):
            with GradCAM(model=model, target_layers=[module]) as cam:
                expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
            got = attribute(model, x, "gradcam", targets, layer=layer_name)
            np.testing.assert_allclose(got, expected, atol=1e-4)
    with GradCAM(model=model, target_layers=[cam_layer(model)[2]]) as cam:
        assert cam(input_tensor=x, targets=None).max() > 0  # not only a comparison of empty maps


def test_occlusion_equals_captum(images):
    model = tiny("alexnet", seed=5)
    x = to_model_input(images[:2])
    window, stride = 16, 8
    ours = occlusion_attributions(model, x, [0, 2], window=window, stride=stride, batch_size=40)
    occ = Occlusion(lambda z: torch.softmax(model(z), dim=1))
    ref = occ.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                        target=torch.tensor([0, 2]), baselines=occlusion_baseline(), perturbations_per_eval=64)
    np.testing.assert_allclose(ours.numpy(), ref[:, 0].numpy(), atol=1e-5)
    assert torch.allclose(ref[:, 0], ref[:, 2], atol=1e-6)  # the window spans all channels


def test_two_threads_explaining_one_model_get_the_sequential_result(images):
    model = tiny("alexnet", seed=6)
    x = to_model_input(images)
    expected = {m: attribute(model, x, m, 1) for m in ("gradcam", "guided-gradcam", "layercam")}
    results: dict[str, list[np.ndarray]] = {m: [] for m in expected}

    def work(method: str) -> None:
        for _ in range(3):
            results[method].append(attribute(model, x, method, 1))

    threads = [threading.Thread(target=work, args=(m,)) for m in expected for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for method, maps in results.items():
        assert len(maps) == 6
        for m in maps:
            np.testing.assert_allclose(m, expected[method], atol=1e-6)
    assert all(not mod._forward_hooks and not mod._backward_hooks for mod in model.modules())  # none left behind


def test_empty_maps_are_detected():
    maps = np.zeros((4, 8, 8), np.float32)
    maps[1] = 0.3  # constant: no pixel is singled out
    maps[2, 3, 3] = 1.0
    maps[3] = np.linspace(0, 1, 64).reshape(8, 8)
    np.testing.assert_array_equal(is_empty(maps), [True, True, False, False])


def test_unknown_parameters_are_refused_with_what_the_method_takes(images):
    model = tiny("alexnet")
    with pytest.raises(ConfigError, match="does not take n_steps; it takes"):
        heatmaps(model, images[:1], "gradcam", 0, n_steps=3)
    maps = heatmaps(model, images[:1], "saliency", 0, layer="conv3 (block 3)")  # a shared layer choice is ignored
    assert maps.shape == (1, SIZE, SIZE)
