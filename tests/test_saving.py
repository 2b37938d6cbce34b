"""Weights-only files of converted models: scc_convert.save / scc_convert.load (and
io.load_model) round trips, the recipe they hold, and the errors when the architecture is
missing or wrong."""

import pytest
import torch
import torchvision
from torch import nn

import scc_convert
from scc_convert import DWSCCConv2d, SCCConv2d, SCCLinear, convert
from scc_convert.io import ModelLoadError, load_model, save_model
from scc_convert.saving import FORMAT, recipe

ARCH = "torchvision.models:mobilenet_v2"


def mixed_net():
    """Every kind of SCC layer: std (DWSCCConv2d), strided pw, dw_pw, linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.Conv2d(32, 64, 1),
        nn.Conv2d(64, 32, 1, stride=2), nn.Flatten(1), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    small, _ = convert(model, cg=4, init="energy", example_inputs=(1, 3, 32, 32))
    return model, small


def test_the_file_is_weights_only_and_holds_the_recipe(mobilenet, tmp_path):
    _, small = mobilenet
    path = scc_convert.save(small, tmp_path / "small.pt", arch=ARCH)
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == FORMAT and saved["format_version"] == 1
    assert saved["scc_convert_version"] == scc_convert.__version__ and saved["arch"] == ARCH
    layer = saved["layers"]["features.2.conv.0.0"]
    assert layer == {"type": "SCCConv2d", "in_channels": 16, "out_channels": 96, "cg": 4, "co": 0.5,
                     "window_of": list(small.get_submodule("features.2.conv.0.0").window_of), "bias": False, "stride": 1}
    assert len(saved["layers"]) == 34 and set(saved["state_dict"]) == set(small.state_dict())


def test_load_rebuilds_the_converted_model(mobilenet, tmp_path):
    original, small = mobilenet
    scc_convert.save(small, tmp_path / "small.pt", arch=ARCH)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = small(x)
        for rebuilt in (scc_convert.load(tmp_path / "small.pt"), scc_convert.load(tmp_path / "small.pt", ARCH),
                        scc_convert.load(tmp_path / "small.pt", original), load_model(tmp_path / "small.pt")):
            assert not rebuilt.training
            torch.testing.assert_close(rebuilt(x), want, atol=0, rtol=0)
            layer = rebuilt.get_submodule("features.2.conv.0.0")
            assert isinstance(layer, SCCConv2d) and layer.window_of == small.get_submodule("features.2.conv.0.0").window_of
    assert type(original.get_submodule("features.2.conv.0.0")) is nn.Conv2d  # the given model is not modified


def test_every_scc_layer_kind_round_trips(tmp_path):
    model = mixed_net()
    calib = torch.randn(8, 16, 8, 8)
    small, report = convert(model, cg=4, patterns=("dw_pw", "pw", "std", "linear"), include=["*"], init="lsq",
                            calib_data=calib)
    kinds = {name: spec["type"] for name, spec in recipe(small).items()}
    assert kinds == {"0": "DWSCCConv2d", "4": "SCCConv2d", "5": "SCCConv2d", "7": "SCCLinear", "9": "SCCLinear"}
    assert recipe(small)["5"]["stride"] == 2 and recipe(small)["0"]["padding"] == [1, 1]
    scc_convert.save(small, tmp_path / "m.pt")
    rebuilt = scc_convert.load(tmp_path / "m.pt", mixed_net())
    assert isinstance(rebuilt.get_submodule("0"), DWSCCConv2d) and isinstance(rebuilt.get_submodule("9"), SCCLinear)
    assert rebuilt.get_submodule("4").bias is not None  # lsq fitted a bias the original conv had not
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(calib), small(calib), atol=0, rtol=0)


def test_timm_models_record_their_architecture(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    small, _ = convert(timm.create_model("lcnet_050", pretrained=False).eval(), example_inputs=(1, 3, 64, 64))
    scc_convert.save(small, tmp_path / "lcnet.pt")
    assert torch.load(tmp_path / "lcnet.pt", weights_only=True)["arch"] == "timm.models:lcnet_050"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scc_convert.load(tmp_path / "lcnet.pt")(x), small(x), atol=0, rtol=0)


def test_load_without_an_architecture_says_what_to_pass(tmp_path):
    small, _ = convert(mixed_net(), example_inputs=(1, 16, 8, 8))
    scc_convert.save(small, tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match=r"does not record the architecture .*--arch package.module:factory, "
                                             r"or scc_convert.load\(path, original_model\)"):
        scc_convert.load(tmp_path / "m.pt")


def test_load_on_the_wrong_architecture_names_the_layer(mobilenet, tmp_path):
    _, small = mobilenet
    scc_convert.save(small, tmp_path / "small.pt", arch=ARCH)
    with pytest.raises(ModelLoadError, match=r"converts layer 'features.1.conv.1', which the model does not have"):
        scc_convert.load(tmp_path / "small.pt", "torchvision.models:resnet18")
    wide = torchvision.models.mobilenet_v2(width_mult=1.4)
    with pytest.raises(ModelLoadError, match=r"layer 'features.1.conv.1': the recipe has 32->16 channels, the model's layer 48->24"):
        scc_convert.load(tmp_path / "small.pt", wide)


def test_other_files_are_refused_with_the_reason(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="is not a weights-only file written by scc_convert.save"):
        scc_convert.load(tmp_path / "notes.txt", ARCH)
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(ModelLoadError, match="is not a converted model written by scc_convert.save"):
        scc_convert.load(tmp_path / "plain.pt", ARCH)
    save_model(nn.ReLU(), tmp_path / "pickled.pt")
    with pytest.raises(ModelLoadError, match="is not a weights-only file"):
        scc_convert.load(tmp_path / "pickled.pt", ARCH)
    with pytest.raises(FileNotFoundError):
        scc_convert.load(tmp_path / "missing.pt")


def test_a_newer_format_asks_for_an_upgrade(tmp_path):
    small, _ = convert(mixed_net(), example_inputs=(1, 16, 8, 8))
    scc_convert.save(small, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**saved, "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(ModelLoadError, match="format version 99.*upgrade scc_convert"):
        scc_convert.load(tmp_path / "new.pt", mixed_net())


def test_state_dict_mismatch_lists_the_first_keys(tmp_path):
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "state.pt")
    with pytest.raises(ModelLoadError) as info:
        load_model(tmp_path / "state.pt", arch="torchvision.models:resnet18")
    message = str(info.value)
    assert "does not fit --arch torchvision.models:resnet18: 122 keys missing from the file (first: conv1.weight, " in message
    assert "314 unexpected keys (first: features.0.0.weight, " in message and "\n" not in message
    torch.save(torchvision.models.mobilenet_v2(num_classes=10).state_dict(), tmp_path / "ten.pt")
    with pytest.raises(ModelLoadError, match=r"2 with another shape, file vs model \(first: classifier.1.weight "
                                             r"\(10, 1280\) vs \(1000, 1280\)"):
        load_model(tmp_path / "ten.pt", arch=ARCH)
