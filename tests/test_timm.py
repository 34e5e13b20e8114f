"""timm models through taolu (`--model timm:NAME`): built untrained with timm's own head reset,
weights read from local files only, the weights' preprocessing from timm's pretrained_cfg,
checkpoints and exports rebuilt for predict, and the listing in `taolu models`. Tiny timm
models (resnet10t, test_vit, test_resnet) at 32 px and one epoch keep it to seconds."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from conftest import write_colour_folder

import taolu
from taolu.checkpoint import load_checkpoint
from taolu.errors import CheckpointError, ConfigError
from taolu.models import build_model, model_kind
from taolu.run.transfer import head_name
from taolu.train_options import build_train_config

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

# Fixed lr and fp32: no range test, and bf16 on a CPU is slower than fp32 for these nets.
FAST = dict(
    epochs=1,
    image_size=32,
    batch_size=8,
    lr=0.01,
    precision="fp32",
    verbose=False,
    progress=False,
    report=False,
)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Two classes of 24 px images, red against green, 10 of each."""
    return write_colour_folder(tmp_path_factory.mktemp("colours"), classes=2, size=24)


@pytest.fixture(scope="module")
def timm_run(colours, tmp_path_factory):
    return taolu.train(
        data=str(colours), model="timm:resnet10t", out=str(tmp_path_factory.mktemp("run")), **FAST
    )


@pytest.fixture(scope="module")
def resnet10t_file(tmp_path_factory):
    """timm's resnet10t state dict (random weights, its 1000-class head) as safetensors."""
    torch.manual_seed(1)
    model = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "resnet10t.safetensors"
    safetensors_torch.save_file(model.state_dict(), path)
    return path


def test_names_are_timm_models_not_factories():
    assert model_kind("timm:resnet10t") == "timm"
    assert model_kind("timm:resnet10t.c3_in1k") == "timm"  # a pretrained tag names a model too


def test_unknown_timm_name_suggests_one():
    with pytest.raises(ConfigError, match=r"did you mean timm:resnet10t\?"):
        model_kind("timm:resnet10")
    with pytest.raises(ConfigError, match="timm has no model"):
        build_model("timm:no_such_net", 3, (32, 32), 2)


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'taolu\[timm\]'"):
        model_kind("timm:resnet10t")


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("timm:mobilenetv3_small_050", "classifier"),
        ("timm:test_vit", "head"),
        ("timm:resnet10t", "fc"),
    ],
)
def test_head_is_reset_by_timm_for_the_classes(name, head):
    with torch.device("meta"):
        model = build_model(name, 3, (32, 32), 7)
    assert head_name(model) == head
    assert model.get_submodule(head).out_features == 7
    assert model.get_classifier() is model.get_submodule(head)


def test_one_channel_and_a_fixed_size_transformer_take_the_datas_shape():
    model = build_model("timm:test_vit", 1, (32, 32), 3).eval()
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.slow
def test_trains_and_predicts_from_checkpoint_and_exports(timm_run, colours):
    state = load_checkpoint(timm_run.best_checkpoint)
    assert state["model_name"] == "timm:resnet10t"
    assert len(timm_run.history) == 1
    images = sorted(colours.glob("*/*.png"))[::5]
    reference = taolu.predict(timm_run.run_dir, images, topk=2)
    for format in ("safetensors", "onnx"):
        exported = taolu.export(timm_run.run_dir, format=format)
        results = taolu.predict(exported.path, images, topk=2)
        for got, want in zip(results, reference, strict=True):
            got_top, want_top = got["predictions"], want["predictions"]
            assert [p["class"] for p in got_top] == [p["class"] for p in want_top]
            for p, q in zip(got_top, want_top, strict=True):
                assert abs(p["probability"] - q["probability"]) <= 1e-4


@pytest.mark.slow
def test_weights_file_is_loaded_and_the_frozen_backbone_kept(
    colours, resnet10t_file, tmp_path, offline
):
    result = taolu.train(
        data=str(colours),
        model="timm:resnet10t",
        weights=str(resnet10t_file),
        freeze="backbone",
        out=str(tmp_path),
        **FAST,
    )
    saved = safetensors_torch.load_file(resnet10t_file)
    trained = result.model.state_dict()
    assert torch.equal(trained["conv1.0.weight"], saved["conv1.0.weight"])
    assert torch.equal(trained["layer4.0.conv2.weight"], saved["layer4.0.conv2.weight"])
    assert trained["fc.weight"].shape == (2, 512)  # the 1000-class head was not loaded
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert (config["normalize"], config["resize_mode"], config["image_size"]) == (
        "imagenet",
        "crop",
        32,  # chosen, so kept
    )


@pytest.mark.parametrize(
    ("name", "size", "normalize"),
    [("timm:resnet10t", 176, "imagenet"), ("timm:test_vit", 160, "inception")],
)
def test_weights_bring_timm_pretrained_cfg_preprocessing(name, size, normalize, colours, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")  # only its existence matters before training
    config = build_train_config(
        None, {"data": str(colours), "model": name, "weights": str(weights)}
    )
    assert (config.image_size, config.normalize, config.channels) == (size, normalize, 3)
    assert config.resize_mode == "crop"


def test_every_common_timm_mean_and_std_has_a_normalize_name():
    from taolu.data.transforms import normalize_name

    assert normalize_name((0.5,) * 3, (0.5,) * 3) == "inception"
    assert normalize_name((0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)) == "clip"
    assert normalize_name((0.43, 0.411, 0.296), (0.213, 0.156, 0.143)) is None


def test_default_weights_come_from_the_local_hub_cache_only(
    colours, resnet10t_file, tmp_path, monkeypatch, offline
):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    from taolu.models.timm_zoo import weights_file

    with pytest.raises(
        CheckpointError,
        match="timm/resnet10t.c3_in1k.*never downloads|never downloads.*timm/resnet10t.c3_in1k",
    ):
        weights_file("timm:resnet10t", "DEFAULT")
    snapshot = cache / "models--timm--resnet10t.c3_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (cache / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
    (cache / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("abc123")
    (snapshot / "model.safetensors").write_bytes(resnet10t_file.read_bytes())
    assert weights_file("timm:resnet10t", "DEFAULT") == snapshot / "model.safetensors"


def test_missing_weights_file_is_named(tmp_path):
    from taolu.models.timm_zoo import weights_file

    with pytest.raises(CheckpointError, match="nothing.safetensors"):
        weights_file("timm:resnet10t", str(tmp_path / "nothing.safetensors"))


def test_rgb_weights_fit_a_one_channel_timm_model(resnet10t_file):
    from taolu.models.zoo import load_weights_file

    model = build_model("timm:resnet10t", 1, (32, 32), 2)
    load_weights_file(model, resnet10t_file, "timm:resnet10t", head="fc")
    rgb = safetensors_torch.load_file(resnet10t_file)["conv1.0.weight"]
    assert torch.allclose(model.conv1[0].weight, rgb.sum(dim=1, keepdim=True))


def test_models_lists_timm_under_its_own_heading(cli_main):
    code, out, _ = cli_main("models")
    assert code == 0
    heading = out.index("timm models")
    assert "timm:resnet10t" in out[heading:] and "timm:resnet10t" not in out[:heading]
    assert "taolu models --timm" in out[heading:]
    code, out, _ = cli_main("models", "--timm", "resnet10*")
    assert code == 0 and "timm:resnet10t " in out and "5,435,488" in out
    code, out, _ = cli_main("models", "--timm")
    assert code == 0 and f"{len(timm.list_models())} timm models" in out


def test_models_show_a_timm_model(cli_main):
    code, out, _ = cli_main("models", "show", "timm:test_vit", "--classes", "4")
    assert code == 0
    assert out.startswith("timm:test_vit at 3x160x160, 4 classes")
    assert "with a 4-class head" in out


@pytest.mark.slow
def test_eject_writes_timm_create_model(timm_run, tmp_path):
    script = taolu.eject(timm_run.run_dir, out=tmp_path / "eject.py").read_text()
    assert "import timm\n" in script
    assert 'model = timm.create_model("resnet10t", pretrained=False, in_chans=3)' in script
    assert "model.reset_classifier(2)" in script
    compile(script, "eject.py", "exec")
