"""The built-in backbone: pretrained once on the multi-label source corpus, cached, verified and loaded into runs."""
import json

import pytest
import torch
from safetensors.torch import load_file

import engine.pretrain as pretrain
from engine.data.phantom import SOURCE_TARGETS
from engine.models.weights import build_model


@pytest.fixture()
def tiny_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path))
    monkeypatch.setattr(pretrain, "SOURCE_IMAGES", 40)
    monkeypatch.setattr(pretrain, "SOURCE_EPOCHS", 1)
    monkeypatch.setattr(pretrain, "SOURCE_BATCH", 8)
    return tmp_path


def test_pretraining_records_every_target_and_is_done_once(tiny_recipe, monkeypatch):
    phases = []
    path = pretrain.builtin_backbone("resnet18", 64, None, progress=lambda p: phases.append(p.phase))
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["targets"] == list(SOURCE_TARGETS) and record["size"] == 64 and record["images"] == 40
    assert set(record["held_out_auc"]) <= set(SOURCE_TARGETS)
    assert all(0.0 <= auc <= 1.0 for auc in record["held_out_auc"].values()) and record["seconds"] > 0
    assert phases and set(phases) == {"pretrain"}
    monkeypatch.setattr(pretrain, "pretrain", lambda *a, **k: pytest.fail("pretrained twice"))
    assert pretrain.builtin_backbone("resnet18", 64, None) == path


def test_a_run_starts_from_every_pretrained_block_and_a_new_head(tiny_recipe):
    path = pretrain.builtin_backbone("resnet18", 64, None)
    torch.manual_seed(0)
    model, record = build_model("resnet18", 3, "builtin", builtin_file=path)
    assert record["not_loaded"] == ["classifier.bias", "classifier.weight"]  # 12 source targets -> 3 classes
    saved = load_file(str(path))
    for name, tensor in model.state_dict().items():
        if name.startswith("blocks."):
            assert torch.equal(tensor, saved[name]), name


def test_the_cache_key_follows_the_recipe(tiny_recipe, monkeypatch):
    before = pretrain.builtin_backbone_path("resnet18", 128, None)
    assert pretrain.builtin_backbone_path("resnet18", 224, None) != before  # another input size
    monkeypatch.setattr(pretrain, "SOURCE_EPOCHS", 2)
    assert pretrain.builtin_backbone_path("resnet18", 128, None) != before
