"""timm backbones (Cheng et al.'s bench): five blocks with the papers' strides, the same function as timm's own model,
fine-tuning depth, deep features, CAM layers, DPN-SE's squeeze-and-excitation, and ImageNet weights offline."""
from __future__ import annotations

import copy
import math

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from engine.errors import ConfigError, WeightsError
from engine.explain.attributions import guided_backprop
from engine.explain.gradcam import gradcam
from engine.models.backbones import cam_layers, conv_layers, last_conv_layer, set_depth, stage
from engine.models.names import ATTENTION_BACKBONES, TIMM_BACKBONES, backbone_spec
from engine.models.weights import architecture, build_model, imagenet_file, init_weights_cached

# Written out here, independently of the code under test: timm's model, the input side of the tests, the stride of
# each block's output, and which of timm's own modules make up each block.
TIMM_NAME = {"dpn68": "dpn68", "dpn92": "dpn92", "dpn92se": "dpn92", "seresnet50": "seresnet50",
             "efficientnet_b0": "efficientnet_b0", "inception_v4": "inception_v4"}
SIZE = {"inception_v4": 80}  # its unpadded stem needs 75 px; the others run at 64
STRIDES = {"dpn": (4, 4, 8, 16, 32), "resnet": (4, 4, 8, 16, 32), "efficientnet": (2, 4, 8, 16, 32),
           "inception": (2, 4, 8, 16, 32)}


def timm_groups(arch: str, model: nn.Module) -> list[list[str]]:
    """timm module names of each of the five blocks (Cheng's DPN stages; feature_info's reductions otherwise)."""
    if arch.startswith("dpn"):
        return [[f"features.{k}" for k, _ in model.features.named_children() if k.startswith(f"conv{s}_")]
                for s in range(1, 6)]
    if arch == "seresnet50":
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    if arch == "efficientnet_b0":
        return [["conv_stem", "bn1", "blocks.0"], ["blocks.1"], ["blocks.2"], ["blocks.3", "blocks.4"],
                ["blocks.5", "blocks.6", "conv_head", "bn2"]]
    return [[f"features.{i}" for i in range(a, b)] for a, b in ((0, 3), (3, 4), (4, 10), (10, 18), (18, 22))]


_MODELS: dict[str, tuple[nn.Module, nn.Module]] = {}


@pytest.fixture(scope="module")
def models():
    """One (timm model, staged model) per backbone, built once: the staged net shares timm's modules and gets a
    1000-class head holding timm's classifier weights."""
    def get(arch: str) -> tuple[nn.Module, nn.Module]:
        if arch not in _MODELS:
            torch.manual_seed(0)
            net = timm.create_model(TIMM_NAME[arch])
            if arch == "dpn92se":
                from engine.models.dpn_se import add_squeeze_excitation
                net = add_squeeze_excitation(net)
            net.eval()
            staged = stage(net, arch, 1000).eval()
            head = net.get_classifier()
            with torch.no_grad():
                staged.classifier.weight.copy_(head.weight.reshape(1000, -1))
                staged.classifier.bias.copy_(head.bias)
            _MODELS[arch] = net, staged
        return _MODELS[arch]
    yield get
    _MODELS.clear()


def _image(arch: str, n: int = 2) -> torch.Tensor:
    side = SIZE.get(arch, 64)
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(7))


def _outputs(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The model's output on ``x`` and the outputs of ``modules`` on the way (forward hooks)."""
    seen: list = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in modules]
    try:
        with torch.no_grad():
            return model(x), seen
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("arch", TIMM_BACKBONES)
def test_five_blocks_the_papers_strides_timms_function_and_deep_features(arch, models):
    net, staged = models(arch)
    x = _image(arch)
    assert len(staged.blocks) == 5 and arch in ATTENTION_BACKBONES and isinstance(staged.classifier, nn.Linear)
    logits, (*outputs, features) = _outputs(staged, [*staged.blocks, staged.pool], x)
    expected_logits, (pooled,) = _outputs(net, [net.global_pool], x)
    assert all(isinstance(h, torch.Tensor) for h in outputs)  # DPN: one tensor, not the (residual, dense) pair
    sides = [h.shape[-1] for h in outputs]
    if arch == "inception_v4":  # unpadded convolutions: compare with the maps timm taps at its reductions
        with torch.no_grad():
            expected = [t.shape[-1] for t in net.forward_intermediates(x, intermediates_only=True)]
    else:
        expected = [math.ceil(x.shape[-1] / s) for s in STRIDES[backbone_spec(arch).family]]
    assert sides == expected
    assert outputs[-1].shape[1] == net.num_features and features.shape == (2, net.num_features)
    torch.testing.assert_close(features, pooled.flatten(1))  # deep features: timm's pooled features
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)  # staging changed nothing


@pytest.mark.parametrize("arch", TIMM_BACKBONES)
def test_depth_trains_the_last_blocks_and_the_head(arch, models):
    net, staged = models(arch)
    modules = dict(net.named_modules())
    per_block = [sum(p.numel() for name in group for p in modules[name].parameters())
                 for group in timm_groups(arch, net)]
    head = sum(p.numel() for p in net.get_classifier().parameters())
    assert sum(per_block) + head == sum(p.numel() for p in net.parameters())  # the groups cover the whole model
    try:
        for depth in range(6):
            set_depth(staged, depth)
            trainable = sum(p.numel() for p in staged.parameters() if p.requires_grad)
            assert trainable == sum(per_block[5 - depth:]) + head, depth
    finally:
        staged.requires_grad_(True)


#: The least value of each family's activation: ReLU 0; EfficientNet's SiLU (times SE gates in (0, 1)) -0.2785.
LEAST = {"dpn": 0.0, "resnet": 0.0, "inception": 0.0, "efficientnet": -0.2785}


@pytest.mark.parametrize("arch", TIMM_BACKBONES)
def test_cam_and_conv_layers_and_no_inplace_activation(arch, models):
    _, staged = models(arch)
    layers = cam_layers(staged)
    blocks = [int(name.split(".")[1]) for name, _, _ in layers]
    assert blocks == sorted(blocks) and set(blocks) == set(range(5))
    assert len({label for _, label, _ in layers}) == len(layers)
    _, maps = _outputs(staged, [module for _, _, module in layers], _image(arch, 1))
    assert all(m.dim() == 4 for m in maps) and maps[-1].shape[1] == staged.classifier.in_features
    least = LEAST[backbone_spec(arch).family]
    if arch.startswith("dpn"):  # DPN's final BN-activation conv5_bn_ac is an ELU (timm): at least -1
        assert maps.pop().min() >= -1.0
    assert all(m.min() >= least for m in maps)  # activated maps A^k, what Grad-CAM weights
    assert not any(getattr(m, "inplace", False) for m in staged.modules())
    convs = [name for name, _ in conv_layers(staged)]
    assert convs[0].startswith("blocks.0.") and last_conv_layer(staged)[0] == convs[-1]
    assert not any(".se." in name for name in convs)  # SE's 1x1 layers act on pooled vectors


@pytest.mark.parametrize("arch", ["dpn68", "efficientnet_b0", "inception_v4"])
def test_gradcam_and_guided_backprop_run(arch, models):
    _, staged = models(arch)
    x = _image(arch, 1)
    maps = gradcam(staged, x)
    assert maps.shape == (1, *x.shape[-2:]) and np.isfinite(maps).all()
    grads = guided_backprop(staged, x)
    assert grads.shape[-2:] == x.shape[-2:] and np.abs(grads).sum() > 0


def test_dpn_se_has_se_in_every_dual_path_block_and_equals_dpn92_when_its_gates_are_open(models):
    plain, _ = models("dpn92")
    se_net, _ = models("dpn92se")
    units = [m for m in se_net.modules() if type(m).__name__ == "DualPathBlock"]
    assert len(units) == 3 + 4 + 20 + 3  # DPN-92's k_sec
    for unit in units:
        se = unit.c1x1_c.se
        assert type(se).__name__ == "SEModule" and se.fc1.in_channels == unit.c1x1_c.conv.out_channels
        assert se.fc1.out_channels == se.fc1.in_channels // 16 and se.fc2.out_channels == se.fc1.in_channels
    # DPN-92's weights load into DPN-SE by name: only the SE tensors are missing.
    missing = set(se_net.state_dict()) - set(plain.state_dict())
    assert missing and all(".c1x1_c.se." in k for k in missing)
    assert set(plain.state_dict()) <= set(se_net.state_dict())
    se_copy = copy.deepcopy(se_net)
    se_copy.load_state_dict(plain.state_dict(), strict=False)
    x = _image("dpn92", 1)
    with torch.no_grad():
        assert not torch.allclose(se_copy(x), plain(x), atol=1e-3)
        for unit in se_copy.modules():
            if type(unit).__name__ == "DualPathBlock":  # gates wide open: SE multiplies every channel by ~1
                unit.c1x1_c.se.fc2.weight.zero_()
                unit.c1x1_c.se.fc2.bias.fill_(30.0)
        torch.testing.assert_close(se_copy(x), plain(x), rtol=1e-4, atol=1e-5)


def test_inception_needs_75_px(models):
    _, staged = models("inception_v4")
    with pytest.raises(ConfigError, match="at least 75 px"):
        staged(torch.zeros(1, 3, 64, 64))


def test_folded_normalisation_gives_the_weights_the_input_they_were_trained_on(models):
    from engine.models.timm_backbones import fold_input_normalisation

    net, _ = models("inception_v4")
    folded = copy.deepcopy(net)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # LungLens's input normalisation (ImageNet)
    fold_input_normalisation(folded, "inception_v4", mean, std)
    gray = torch.rand(1, 1, 80, 80, generator=torch.Generator().manual_seed(3)).expand(1, 3, 80, 80)
    ours = (gray - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    theirs = (gray - 0.5) / 0.5  # Inception-v4's own (TensorFlow) normalisation
    with torch.no_grad():
        torch.testing.assert_close(folded(ours), net(theirs), rtol=1e-3, atol=1e-4)


def test_builtin_pretraining_on_the_source_corpus(tmp_path, monkeypatch):
    from engine import pretrain

    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path))
    for name, value in (("SOURCE_IMAGES", 24), ("SOURCE_EPOCHS", 1), ("SOURCE_BATCH", 8)):
        monkeypatch.setattr(pretrain, name, value)
    path = pretrain.builtin_backbone("efficientnet_b0", 32, None)
    assert pretrain.builtin_backbone_info(path)["size"] == 32
    model, record = build_model("efficientnet_b0", 3, "builtin", builtin_file=path)
    assert record["not_loaded"] == ["classifier.bias", "classifier.weight"]  # 12 source targets -> 3 classes
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, offline: nothing here may reach the network."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_imagenet_offline_without_cache_says_where_to_put_the_file(hf_cache):
    path = imagenet_file("dpn68")
    assert path == hf_cache / "models--timm--dpn68.mx_in1k" / "snapshots" / "main" / "model.safetensors"
    assert not init_weights_cached("dpn68", "imagenet")
    with pytest.raises(WeightsError) as err:
        build_model("dpn68", 3, "imagenet")
    assert str(path) in str(err.value)
    assert "https://huggingface.co/timm/dpn68.mx_in1k/resolve/main/model.safetensors" in str(err.value)


def test_dpn_se_imagenet_loads_dpn92s_file_leaving_only_se_untrained(hf_cache, models):
    plain, _ = models("dpn92")
    path = imagenet_file("dpn92se")
    assert path == imagenet_file("dpn92")
    path.parent.mkdir(parents=True)
    state = {k: v.clone().contiguous() for k, v in plain.state_dict().items()}
    state["features.conv4_7.c1x1_a.conv.weight"][0, 0, 0, 0] = 42.0
    save_file(state, str(path))
    assert init_weights_cached("dpn92se", "imagenet")
    torch.manual_seed(5)
    model, record = build_model("dpn92se", 4, "imagenet")
    after_build = torch.rand(1)
    torch.manual_seed(5)
    architecture("dpn92se", 4, "imagenet")
    assert torch.equal(torch.rand(1), after_build)  # the same random numbers as the weight-less architecture
    assert record["init"] == "imagenet" and record["file"] == str(path)
    assert record["not_loaded"] and all(".c1x1_c.se." in k for k in record["not_loaded"])
    assert model.blocks[3].conv4_7.c1x1_a.conv.weight[0, 0, 0, 0] == 42.0
    torch.testing.assert_close(model.blocks[4].conv5_3.c1x1_c.conv.weight, state["features.conv5_3.c1x1_c.conv.weight"])
    # The first layer absorbs DPN's MXNet input statistics (std 0.2348) against LungLens's ImageNet ones.
    ratio = model.blocks[0].conv1_1.conv.weight / state["features.conv1_1.conv.weight"]
    torch.testing.assert_close(ratio[0, :, 0, 0], torch.tensor([0.229, 0.224, 0.225]) / (1 / (0.0167 * 255)))
    assert model.classifier.out_features == 4
