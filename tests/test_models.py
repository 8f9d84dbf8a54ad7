"""Backbones as five blocks, fine-tuning depth, and every initialisation path."""
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from engine.errors import ConfigError, WeightsError
from engine.models.backbones import N_BLOCKS, set_depth, stage
from engine.models.weights import build_model, imagenet_file


@pytest.mark.parametrize("arch", ["alexnet", "vgg16", "resnet18", "densenet121"])
def test_staged_model_computes_what_torchvision_computes(arch):
    torch.manual_seed(0)
    tv = torchvision.models.get_model(arch, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = tv(x)
        staged = stage(tv, arch, 1000).eval()
        last = staged.classifier[-1] if isinstance(staged.classifier, torch.nn.Sequential) else staged.classifier
        original = tv.classifier[-1] if arch in ("alexnet", "vgg16") else (tv.fc if arch == "resnet18" else tv.classifier)
        last.load_state_dict(original.state_dict())
        assert len(staged.blocks) == N_BLOCKS
        torch.testing.assert_close(staged(x), expected)


def test_depth_freezes_leading_blocks_and_trains_head():
    model = stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 3)
    for depth in range(N_BLOCKS + 1):
        set_depth(model, depth)
        trainable = [any(p.requires_grad for p in b.parameters()) for b in model.blocks]
        assert trainable == [i >= N_BLOCKS - depth for i in range(N_BLOCKS)]
        assert all(p.requires_grad for p in model.classifier.parameters())
    with pytest.raises(ConfigError, match="0 and 5"):
        set_depth(model, 6)


def test_alexnet_deep_features_are_9216_d():
    model = stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 3, head_width=64)
    assert model.features(torch.zeros(1, 3, 128, 128)).shape == (1, 9216)
    assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 3)


def _offline(*_args, **_kwargs):
    raise urllib.error.URLError("no network")


def test_imagenet_missing_fails_at_once_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)  # offline, wherever the test runs
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth"):
        build_model("alexnet", 3, "imagenet")


def test_imagenet_loads_from_warm_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    reference = torchvision.models.get_model("alexnet", weights=None).state_dict()
    path = imagenet_file("alexnet")
    assert path.parent == tmp_path / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(reference, path)
    model, record = build_model("alexnet", 3, "imagenet")
    assert record["init"] == "imagenet"
    torch.testing.assert_close(model.blocks[0][0].weight, reference["features.0.weight"])
    torch.testing.assert_close(model.classifier[1].weight, reference["classifier.1.weight"])
    assert model.classifier[-1].out_features == 3


def test_local_torchvision_file_and_lunglens_safetensors(tmp_path):
    torch.manual_seed(2)
    tv_state = torchvision.models.get_model("resnet18", weights=None).state_dict()
    torch.save(tv_state, tmp_path / "r18.pth")
    model, record = build_model("resnet18", 2, str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.blocks[0][0].weight, tv_state["conv1.weight"])
    assert record["init"] == "file"

    torch.manual_seed(3)
    source = stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 4, head_width=32)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "src.safetensors"))
    model, record = build_model("alexnet", 3, "builtin", head_width=32, builtin_file=tmp_path / "src.safetensors")
    torch.testing.assert_close(model.blocks[4][0].weight, source.blocks[4][0].weight)
    torch.testing.assert_close(model.classifier[1].weight, source.classifier[1].weight)
    assert "classifier.6.weight" in record["not_loaded"]  # 4 source classes vs 3: the last layer starts fresh


def test_bad_weights_file_is_a_clear_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="Cannot read weights"):
        build_model("alexnet", 3, str(tmp_path / "junk.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("alexnet", 3, str(tmp_path / "missing.pth"))


def test_every_named_backbone_has_a_builder():
    from engine.models import backbones, names

    assert tuple(backbones._BUILDERS) == names.BACKBONES


def test_import_engine_and_a_config_load_without_torch():
    import subprocess
    import sys

    code = ("import sys, engine; engine.RunConfig(backbone='resnet18', depth=2); engine.preset('demo'); "
            "engine.BACKBONES; assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
