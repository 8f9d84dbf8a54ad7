"""Pretrained initialisations: ImageNet through torchvision's weights API and TorchXRayVision's chest X-ray
DenseNet-121: downloaded into their usual caches, loaded from them offline, a clear error when neither works."""
from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

import engine
from engine.config import RunConfig
from engine.errors import ConfigError, WeightsError
from engine.models.backbones import cam_layers
from engine.models.weights import architecture, build_model
from engine.models.xrv import XrvInput, xrv_densenet
from engine.runs import run_id

xrv = pytest.importorskip("torchxrayvision")

# Published locations, written out here rather than read from the code under test.
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
XRV_URL = ("https://github.com/mlmed/torchxrayvision/releases/download/v1/"
           "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt")


def _offline(*_args, **_kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def _sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture()
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture()
def xrv_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "xrv" / "models_data"
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(folder) + "/")
    return folder


def _resnet18_file(folder: Path, value: float = 123.0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision ResNet-18 state dict with conv1[0, 0, 0, 0] = ``value``, where the hub cache keeps it."""
    torch.manual_seed(3)
    state = torchvision.models.get_model("resnet18", weights=None).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = value
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "resnet18-f37072fd.pth")
    return folder / "resnet18-f37072fd.pth", state


def _xrv_net() -> nn.Module:
    """A fresh xrv DenseNet-121 with two known weights."""
    torch.manual_seed(4)
    net = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        net.features.conv0.weight[0, 0, 0, 0] = 7.0
        net.features.denseblock4.denselayer16.conv2.weight[1, 2, 0, 1] = -5.0
    return net


# ---- ImageNet --------------------------------------------------------------------------------------------------

def test_imagenet_offline_without_cache_names_the_file_the_folder_and_the_url(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(WeightsError) as err:
        build_model("resnet18", 2, "imagenet")
    message = str(err.value)
    assert str(torch_home / "resnet18-f37072fd.pth") in message and RESNET18_URL in message
    assert "here" not in message and not torch_home.joinpath("resnet18-f37072fd.pth").exists()


def test_imagenet_download_is_hash_checked_with_progress_on_stderr_only(torch_home, monkeypatch, capsys):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix, progress))
        _resnet18_file(Path(dst).parent, 9.0)
        os.replace(Path(dst).parent / "resnet18-f37072fd.pth", dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model, _ = build_model("resnet18", 2, "imagenet")
    assert calls == [(RESNET18_URL, "f37072fd", True)]
    assert model.blocks[0][0].weight[0, 0, 0, 0].item() == 9.0
    out = capsys.readouterr()
    assert out.out == "" and RESNET18_URL in out.err  # stdout stays clean for --json


def test_imagenet_loads_a_cached_file(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)  # it must not be needed
    path, state = _resnet18_file(torch_home)
    model, record = build_model("resnet18", 2, "imagenet")
    torch.testing.assert_close(model.blocks[0][0].weight, state["conv1.weight"])
    assert model.blocks[0][0].weight[0, 0, 0, 0].item() == 123.0
    torch.testing.assert_close(model.blocks[4][1].conv2.weight, state["layer4.1.conv2.weight"])
    assert record == {"init": "imagenet", "file": str(path), "sha256": _sha16(path)}


def test_a_damaged_cached_imagenet_file_says_to_delete_it(torch_home):
    torch_home.mkdir(parents=True)
    (torch_home / "resnet18-f37072fd.pth").write_bytes(b"<html>not weights</html>")
    with pytest.raises(WeightsError, match="Delete it so it is downloaded again"):
        build_model("resnet18", 2, "imagenet")


def test_imagenet_run_reloads_and_its_key_follows_the_weights_file(tiny_folder, torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    path, state = _resnet18_file(torch_home)
    cfg = RunConfig(data=str(tiny_folder), backbone="resnet18", init="imagenet", image_size=64, epochs=1, depth=1,
                    patience=0, batch_size=16, test_fraction=0.25, val_fraction=0.2)
    run = engine.train_run(cfg)
    loaded = engine.load_run(run.id)
    model = loaded.load_model()
    saved = load_file(str(run.dir / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])
    torch.testing.assert_close(loaded.initial_model().blocks[0][0].weight, state["conv1.weight"])
    assert loaded.meta["init"]["sha256"] == _sha16(path)
    key = run.id
    _resnet18_file(torch_home, 124.0)  # other weights in the same file name
    assert run_id(cfg, loaded.dataset()) != key


# ---- TorchXRayVision -------------------------------------------------------------------------------------------

def test_xrv_offline_without_cache_names_the_file_the_folder_and_the_url(xrv_cache, monkeypatch):
    monkeypatch.setattr(xrv.utils, "download", _offline)
    with pytest.raises(WeightsError) as err:
        build_model("densenet121", 2, "xrv-densenet121")
    assert str(xrv_cache / Path(XRV_URL).name) in str(err.value) and XRV_URL in str(err.value)


@pytest.mark.parametrize("whole_model", [True, False], ids=["pickled-model", "state-dict"])
def test_xrv_loads_a_cached_file(xrv_cache, monkeypatch, whole_model):
    monkeypatch.setattr(xrv.utils, "download", _offline)
    net = _xrv_net()
    xrv_cache.mkdir(parents=True)
    path = xrv_cache / Path(XRV_URL).name
    torch.save(net if whole_model else net.state_dict(), path)  # xrv publishes the whole pickled model
    model, record = build_model("densenet121", 2, "xrv-densenet121")
    conv0 = model.blocks[0][0][1]
    assert conv0.in_channels == 1 and conv0.weight[0, 0, 0, 0].item() == 7.0
    torch.testing.assert_close(conv0.weight, net.features.conv0.weight)
    assert model.blocks[4][0].denselayer16.conv2.weight[1, 2, 0, 1].item() == -5.0
    torch.testing.assert_close(model.blocks[4][1].running_var, net.features.norm5.running_var)
    assert record["sha256"] == _sha16(path) and record["not_loaded"] == []
    assert model.classifier.out_features == 2


def test_xrv_file_that_would_run_code_is_refused_and_not_run(xrv_cache, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    xrv_cache.mkdir(parents=True)
    torch.save({"features.conv0.weight": Evil()}, xrv_cache / Path(XRV_URL).name)
    with pytest.raises(WeightsError, match="system"):
        build_model("densenet121", 2, "xrv-densenet121")
    assert not marker.exists()


def test_xrv_init_needs_densenet121():
    with pytest.raises(ConfigError, match="backbone=densenet121"):
        RunConfig(backbone="resnet18", init="xrv-densenet121")
    assert RunConfig(backbone="densenet121", init="xrv-densenet121").init == "xrv-densenet121"


def test_gray_input_adapter_undoes_the_normalisation_into_xrv_range():
    gray = torch.tensor([0.0, 0.2, 0.5, 1.0]).view(1, 1, 2, 2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = XrvInput()((gray.repeat(1, 3, 1, 1) - mean) / std)
    # (2 g - 1) * 1024: 0 -> -1024, 0.2 -> -614.4, 0.5 -> 0, 1 -> 1024
    torch.testing.assert_close(out, torch.tensor([-1024.0, -614.4, 0.0, 1024.0]).view(1, 1, 2, 2), atol=1e-3, rtol=0)


def test_xrv_staged_net_runs_and_its_cam_layers_are_the_rectified_stage_outputs():
    torch.manual_seed(0)
    model = xrv_densenet(2)[0].eval()
    layers = cam_layers(model)
    assert [name for name, _, _ in layers] == ["blocks.0.2", "blocks.1.1.relu", "blocks.2.1.relu", "blocks.3.1.relu",
                                               "blocks.4.2"]
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o)) for _, _, m in layers]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert logits.shape == (2, 2)
    assert [tuple(o.shape[1:]) for o in outputs] == [(64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4),
                                                     (1024, 2, 2)]
    assert all(bool((o >= 0).all()) for o in outputs)
    assert not any(getattr(m, "inplace", False) for m in model.modules())  # hooks of Grad-CAM need that


def test_a_saved_xrv_run_rebuilds_the_same_architecture_without_the_weights_file(xrv_cache, monkeypatch):
    monkeypatch.setattr(xrv.utils, "download", _offline)
    xrv_cache.mkdir(parents=True)
    torch.save(_xrv_net(), xrv_cache / Path(XRV_URL).name)
    trained, _ = build_model("densenet121", 3, "xrv-densenet121")
    (xrv_cache / Path(XRV_URL).name).unlink()
    blank = architecture("densenet121", 3, "xrv-densenet121")  # what Run.load_model builds
    blank.load_state_dict(trained.state_dict())  # strict: same names and shapes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(blank.eval()(x).numpy(), trained.eval()(x).numpy(), rtol=1e-5, atol=1e-5)


def test_looking_up_a_run_never_downloads_weights(tiny_folder, tmp_path, monkeypatch):
    from engine.runs import get_run

    def _never_download(*_args, **_kwargs):
        raise AssertionError("a lookup tried to download weights")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _never_download)
    assert get_run(RunConfig(data=str(tiny_folder), init="imagenet", image_size=64)) is None
