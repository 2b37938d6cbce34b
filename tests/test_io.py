"""Safe loading and atomic writes."""

import os
import stat

import pytest
import torch

from scc_convert.io import ModelLoadError, atomic_write, load_model, save_model


def test_atomic_write_keeps_usual_permissions_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: open(tmp, "wb").write(b"ok"))
    finally:
        os.umask(old)
    assert target.read_bytes() == b"ok"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken, overwrite=True)
    assert target.read_bytes() == b"ok" and os.listdir(tmp_path) == ["out.bin"]
    with pytest.raises(FileExistsError, match="--force"):
        atomic_write(target, lambda tmp: None)


def test_load_model_formats(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    save_model(model, tmp_path / "full.pt")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
        load_model(tmp_path / "full.pt")
    assert isinstance(load_model(tmp_path / "full.pt", trust_pickle=True), torch.nn.Sequential)
    with pytest.raises(ModelLoadError, match="is a state_dict"):
        load_model(tmp_path / "sd.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a PyTorch file"):
        load_model(tmp_path / "text.pt")
