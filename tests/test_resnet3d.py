"""The 3-D backbones (MONAI ResNet-18/34, Ouyang et al. §III-A) staged into five blocks like the 2-D ones."""
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from engine.errors import ConfigError, WeightsError
from engine.models.backbones import N_BLOCKS, cam_layers, conv_layers, last_conv_layer, set_depth, stage
from engine.models.resnet3d import monai_resnet3d
from engine.models.weights import build_model

UNITS = {"resnet3d18": [2, 2, 2, 2], "resnet3d34": [3, 4, 6, 3]}
WIDTHS = [64, 128, 256, 512]


def _conv3(cin: int, cout: int) -> int:
    return cin * cout * 27  # 3x3x3 kernel, no bias


def _bn(c: int) -> int:
    return 2 * c  # weight and bias


def _block_params(arch: str) -> list[int]:
    """Parameters of each of the five blocks, counted by hand from the architecture."""
    stem = 1 * 64 * 7 ** 3 + _bn(64)  # conv1 7x7x7 on one channel, bn1
    out, cin = [stem], 64
    for units, width in zip(UNITS[arch], WIDTHS):
        total = 0
        for u in range(units):
            first_in = cin if u == 0 else width
            total += _conv3(first_in, width) + _bn(width) + _conv3(width, width) + _bn(width)
            if u == 0 and first_in != width:  # shortcut B: 1x1x1 conv with bias, then batch norm
                total += first_in * width + width + _bn(width)
        out.append(total)
        cin = width
    return out


@pytest.fixture(scope="module", params=["resnet3d18", "resnet3d34"])
def staged(request):
    torch.manual_seed(0)
    return request.param, stage(monai_resnet3d(request.param), request.param, 2)


def test_five_blocks_with_the_last_stage_at_one_sixteenth(staged):
    _, model = staged
    assert len(model.blocks) == N_BLOCKS
    stem = model.blocks[0]
    assert [type(m) for m in stem] == [nn.Conv3d, nn.BatchNorm3d, nn.ReLU, nn.MaxPool3d]
    assert stem[0].stride == (2, 2, 2)
    x = torch.zeros(1, 1, 32, 48, 64)
    with torch.no_grad():
        f = model.forward_blocks(x.clone())
        assert f.shape == (1, 512, 2, 3, 4)  # 32/16, 48/16, 64/16
        assert model.features(x).shape == (1, 512)
        assert model(x).shape == (1, 2)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512


def test_depth_freezes_the_hand_counted_parameters(staged):
    arch, model = staged
    blocks = _block_params(arch)
    assert [sum(p.numel() for p in b.parameters()) for b in model.blocks] == blocks
    head = 512 * 2 + 2
    for depth in range(N_BLOCKS + 1):
        set_depth(model, depth)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == sum(blocks[N_BLOCKS - depth:]) + head


def test_cam_and_conv_layers_cover_the_3d_units(staged):
    arch, model = staged
    units = UNITS[arch]
    labels = [label for _, label, _ in cam_layers(model)]
    assert labels[0] == "stem conv1 (block 1)"
    assert labels[-1] == f"layer4 unit {units[-1]} (block 5)"
    assert len(labels) == 1 + sum(units)
    convs = conv_layers(model)
    assert all(isinstance(m, nn.Conv3d) for _, m in convs)
    assert len(convs) == 1 + 2 * sum(units) + 3  # stem, two per unit, three downsample shortcuts
    assert last_conv_layer(model)[0] == f"blocks.4.{units[-1] - 1}.conv2"


def test_2d_conv_layers_are_unchanged():
    model = stage(torchvision.models.get_model("resnet18", weights=None), "resnet18", 2)
    assert len(conv_layers(model)) == 1 + 16 + 3
    assert last_conv_layer(model)[0] == "blocks.4.1.conv2"


def test_imagenet_and_head_width_are_refused_for_3d():
    with pytest.raises(WeightsError, match="scratch"):
        build_model("resnet3d18", 2, "imagenet")
    with pytest.raises(ConfigError, match="head_width"):
        stage(monai_resnet3d("resnet3d18"), "resnet3d18", 2, head_width=64)


def test_a_monai_state_dict_loads_by_path_even_with_dataparallel_names(tmp_path):
    torch.manual_seed(3)
    source = monai_resnet3d("resnet3d18").state_dict()
    plain = tmp_path / "resnet3d18.safetensors"
    save_file({k: v.contiguous() for k, v in source.items()}, str(plain))
    wrapped = tmp_path / "medicalnet_style.pth"  # MedicalNet saves {"state_dict": {"module.conv1.weight": ...}}
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items() if not k.startswith("fc.")}}, wrapped)
    for path in (plain, wrapped):
        model, record = build_model("resnet3d18", 2, str(path))
        assert record["init"] == "file"
        torch.testing.assert_close(model.blocks[0][0].weight, source["conv1.weight"])
        torch.testing.assert_close(model.blocks[4][1].conv2.weight, source["layer4.1.conv2.weight"])
