"""torchvision classifiers: new heads, offline weights (files and the hub cache), freezing.

Weight files are made in the test from untrained models; nothing is downloaded, and the tests
that name torchvision weights run with sockets refusing to connect.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from taolu.checkpoint import save_checkpoint
from taolu.errors import CheckpointError, ConfigError
from taolu.models import zoo

RESNET18_FILE = "resnet18-f37072fd.pth"  # the basename of ResNet18_Weights.IMAGENET1K_V1's URL
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

# One small model per family, run on 64x64 images; the ones below need their full input size.
LIGHT = [
    "resnet18",
    "vgg11",
    "alexnet",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "mnasnet0_5",
    "regnet_x_400mf",
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "densenet121",
    "googlenet",
    "convnext_tiny",
]
HEAVY = ["inception_v3", "swin_t", "vit_b_16", "maxvit_t"]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache: TORCH_HOME points into tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def imagenet_resnet18() -> dict[str, torch.Tensor]:
    """An untrained resnet18 as torchvision ships it: a 1000-class head."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _train_step(model: nn.Module, size: int, channels: int = 3) -> torch.Tensor:
    """One forward and backward pass in whatever mode `model` is in."""
    images = torch.randn(2, channels, size, size)
    outputs = model(images)
    nn.functional.cross_entropy(outputs, torch.tensor([0, 2])).backward()
    return outputs


def test_lists_classifiers_only():
    names = zoo.torchvision_classifiers()
    assert {"resnet18", "vit_b_16", "convnext_tiny", "inception_v3"} <= set(names)
    assert not any(name.startswith(("fasterrcnn", "raft", "r3d", "quantized")) for name in names)
    assert zoo.is_torchvision_model("resnet18")
    assert not zoo.is_torchvision_model("fastcnn")


def test_unknown_model_suggests_a_name():
    with pytest.raises(ConfigError, match="resnet18"):
        zoo.build_torchvision("resnet181", 3)


@pytest.mark.parametrize(
    "name", LIGHT + [pytest.param(name, marks=pytest.mark.slow) for name in HEAVY]
)
def test_family_trains_with_new_head(name):
    model = zoo.build_torchvision(name, 3).train()
    size = zoo.default_input_size(name) if name in HEAVY else 64
    assert _train_step(model, size).shape == (2, 3)
    head = model.get_submodule(zoo.head_path(model))
    assert head.weight.grad is not None and head.weight.shape[0] == 3
    first = model.get_submodule(zoo.first_conv_path(model))
    assert first.weight.grad is not None and first.in_channels == 3


def test_every_listed_classifier_has_a_known_head():
    """Built on the meta device (no memory, no init): each head is found and replaced. RegNet
    cannot be built there (it computes widths with real tensors); regnet_x_400mf runs above."""
    for name in zoo.torchvision_classifiers():
        if name.startswith("regnet"):
            continue
        with torch.device("meta"):
            model = zoo.build_torchvision(name, 5)
        head = model.get_submodule(zoo.head_path(model))
        outputs = head.out_channels if isinstance(head, nn.Conv2d) else head.out_features
        assert outputs == 5, name


def test_default_input_size():
    assert zoo.default_input_size("resnet18") == 224
    assert zoo.default_input_size("inception_v3") == 299


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_transfer_from_a_weights_file(tmp_path, imagenet_resnet18, suffix):
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(imagenet_resnet18, path)
    else:
        save_file(imagenet_resnet18, path)
    model = zoo.build_torchvision("resnet18", 3)
    head = zoo.head_path(model)
    assert head == "fc"
    report = zoo.load_weights(model, str(path), "resnet18", head=head)
    assert report.skipped_head == ["fc.weight", "fc.bias"]
    assert set(report.loaded) == set(imagenet_resnet18) - {"fc.weight", "fc.bias"}
    assert report.missing == report.unexpected == report.mismatched == []
    state = model.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        assert torch.equal(state[key], imagenet_resnet18[key])
    assert state["fc.weight"].shape == (3, 512)
    assert "loaded 120 tensors" in report.render() and "fc.weight" in report.render()


def test_frozen_backbone_stays_bit_identical(tmp_path, imagenet_resnet18):
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet_resnet18, path)
    model = zoo.build_torchvision("resnet18", 3)
    zoo.load_weights(model, str(path), "resnet18", head="fc")
    frozen = zoo.freeze(model, "backbone", "fc")
    assert "conv1.weight" in frozen and not any(key.startswith("fc.") for key in frozen)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    zoo.set_frozen_batchnorm_eval(model)
    _train_step(model, 64)
    optimizer.step()
    after = model.state_dict()
    for key in before:
        if key.startswith("fc."):
            assert not torch.equal(after[key], before[key]), key
        else:  # weights and BatchNorm running statistics alike
            assert torch.equal(after[key], before[key]), key
    assert not model.bn1.training and model.training


def test_freeze_counts_and_refuses_nonsense():
    model = zoo.build_torchvision("squeezenet1_1", 3)
    names = [name for name, _ in model.named_parameters()]
    assert zoo.freeze(model, "none", "classifier.1") == []
    assert zoo.freeze(model, "4", "classifier.1") == names[:4]
    assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * (len(names) - 4)
    for mode in ("all", "-1", str(len(names) + 1)):
        with pytest.raises(ConfigError, match="backbone"):
            zoo.freeze(model, mode, "classifier.1")


def test_named_weights_read_only_the_hub_cache(offline, hub, imagenet_resnet18):
    model = zoo.build_torchvision("resnet18", 3)
    with pytest.raises(CheckpointError) as caught:
        zoo.load_weights(model, "DEFAULT", "resnet18", head="fc")
    message = str(caught.value)
    assert RESNET18_FILE in message and str(hub) in message and "--weights" in message
    hub.mkdir(parents=True)
    torch.save(imagenet_resnet18, hub / RESNET18_FILE)
    for name in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        model = zoo.build_torchvision("resnet18", 3)
        report = zoo.load_weights(model, name, "resnet18", head="fc")
        assert report.skipped_head == ["fc.weight", "fc.bias"]
        assert torch.equal(model.conv1.weight, imagenet_resnet18["conv1.weight"])


def test_named_weights_must_belong_to_the_model(offline, hub):
    model = zoo.build_torchvision("resnet18", 3)
    with pytest.raises(ConfigError, match="ResNet18_Weights"):
        zoo.load_weights(model, "ResNet50_Weights.IMAGENET1K_V1", "resnet18", head="fc")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        zoo.load_weights(model, "IMAGENET1K_V9", "resnet18", head="fc")
    with pytest.raises(CheckpointError, match="not found"):
        zoo.load_weights(model, "no/such/file.pth", "resnet18", head="fc")


def test_weights_preprocessing_offline(offline):
    assert zoo.weights_preprocessing("resnet18", "DEFAULT") == {
        "size": 224,
        "resize": 256,
        **IMAGENET,
    }
    inception = zoo.weights_preprocessing("inception_v3", "IMAGENET1K_V1")
    assert (inception["size"], inception["resize"]) == (299, 342)
    from_file = zoo.weights_preprocessing("inception_v3", "my_weights.pth")
    assert from_file == {"size": 299, "resize": 342, **IMAGENET}


class _WritesAFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _WritesAFile(marker)}, path)
    model = zoo.build_torchvision("resnet18", 3)
    with pytest.raises(CheckpointError, match="refused"):
        zoo.load_weights(model, str(path), "resnet18", head="fc")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really carries code: an unsafe load runs it
    assert marker.exists()


def test_wrong_architecture_lists_the_keys(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model = zoo.build_torchvision("resnet18", 3)
    before = model.conv1.weight.clone()
    with pytest.raises(CheckpointError) as caught:
        zoo.load_weights(model, str(path), "resnet18", head="fc")
    message = str(caught.value)
    assert "shape differs: layer1.0.conv1.weight is (64, 64, 1, 1)" in message
    assert "layer1.0.conv3.weight" in message  # in the file but not in the model
    assert torch.equal(model.conv1.weight, before)  # nothing was half-loaded


def test_taolu_checkpoint_and_wrapped_files(tmp_path, imagenet_resnet18):
    trained = zoo.build_torchvision("resnet18", 3)
    state = {
        "model": trained.state_dict(),
        "config": {
            "data": "photos",
            "val_fraction": 0.2,
            "precision": "auto",
            "label_smoothing": 0.1,
        },
        "classes": ["a", "b", "c"],
        "preprocessing": {
            "channels": 3,
            "size": [224, 224],
            "resize_mode": "crop",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "epoch": 1,
        "model_class": "resnet18",
    }
    save_checkpoint(state, tmp_path / "best.pt")
    model = zoo.build_torchvision("resnet18", 3)
    report = zoo.load_weights(model, str(tmp_path / "best.pt"), "resnet18", head="fc")
    assert report.skipped_head == [] and "fc.weight" in report.loaded
    assert torch.equal(model.fc.weight, trained.fc.weight)
    wrapped = {f"module.{key}": value for key, value in imagenet_resnet18.items()}
    torch.save({"state_dict": wrapped}, tmp_path / "ddp.pth")
    report = zoo.load_weights(model, str(tmp_path / "ddp.pth"), "resnet18", head="fc")
    assert torch.equal(model.conv1.weight, imagenet_resnet18["conv1.weight"])


def test_one_channel_model_sums_rgb_kernels(tmp_path, imagenet_resnet18):
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet_resnet18, path)
    model = zoo.build_torchvision("resnet18", 3, channels=1).train()
    zoo.load_weights(model, str(path), "resnet18", head="fc")
    expected = imagenet_resnet18["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(model.conv1.weight, expected)
    assert _train_step(model, 64, channels=1).shape == (2, 3)


def test_auxiliary_heads_in_torchvision_files_are_ignored(tmp_path):
    """torchvision's googlenet files carry aux1/aux2, which taolu builds without."""
    path = tmp_path / "googlenet.pth"
    source = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    torch.save(source.state_dict(), path)
    model = zoo.build_torchvision("googlenet", 3)
    report = zoo.load_weights(model, str(path), "googlenet", head="fc")
    assert report.ignored and all(key.startswith(("aux1.", "aux2.")) for key in report.ignored)
    assert torch.equal(model.conv1.conv.weight, source.conv1.conv.weight)
