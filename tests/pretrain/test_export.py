"""Export folders: timm round trip (numerically equal outputs), band lookup, safe loading errors."""
import json
import subprocess
import sys

import pytest
import torch

from pretrain.export import (ExportError, band_wavelengths, export_timm, load_exported, load_timm,
                             model_card, to_timm)
from pretrain.models import build_backbone
from tests.conftest import ROOT

NORM = {"sentinel2_l2a": {"bands": ["B02", "B03", "B04", "B08"], "wavelengths_nm": [492.4, 559.8, 664.6, 832.8],
                          "mean": [0.06, 0.08, 0.09, 0.25], "std": [0.03, 0.04, 0.05, 0.09], "gsd_m": 10.0,
                          "units": "surface reflectance"}}


@pytest.fixture
def export_dir(tmp_path):
    """An export folder as eofm-export writes it (tiny ViT, trained-looking random weights)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = build_backbone("vit", "tiny", depth=2, patch_size=4, embed_dim=32, num_heads=2)
    with torch.no_grad():
        for p in model.parameters():   # move every weight off its init so a wrong copy shows
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path / "export"
    folder.mkdir()
    save_file(dict(model.state_dict()), str(folder / "model.safetensors"), metadata={"format": "eofm-export"})
    cfg = {"format": "eofm-export", "format_version": 1, "architecture": "eofm_vit", "arch": "vit",
           "model_args": model.arch_args, "patch_size": 4, "embed_dim": 32, "num_features": 32,
           "sensor": "sentinel2_l2a", "bands": NORM["sentinel2_l2a"]["bands"],
           "wavelengths_nm": NORM["sentinel2_l2a"]["wavelengths_nm"], "gsd_m": 10.0, "normalization": NORM,
           "objective": "mae", "objective_args": {}, "steps": 5, "samples_seen": 80, "data": "d",
           "data_manifest_sha256": "0" * 64, "checkpoint": "c"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "README.md").write_text(model_card(cfg))
    return folder


@pytest.mark.parametrize("bands, size, gsd", [(["B02", "B03", "B04", "B08"], 16, 10.0), (["B04", "B11"], 24, 20.0)])
def test_timm_round_trip_matches_backbone(export_dir, tmp_path, bands, size, gsd):
    timm = pytest.importorskip("timm")
    encoder, cfg = load_exported(export_dir)
    out = export_timm(export_dir, bands, size, gsd, tmp_path / "timm")
    meta = json.loads((out / "timm.json").read_text())
    assert meta["kwargs"]["in_chans"] == len(bands) and meta["format"] == "eofm-timm"
    # exactly what a user types: timm.create_model(..., pretrained=False, in_chans=C, ...) + load_state_dict
    from safetensors.torch import load_file
    model = timm.create_model(meta["model_name"], pretrained=False, **meta["kwargs"]).eval()
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    x = torch.randn(2, len(bands), size, size)
    ref = encoder.forward_features(x, torch.tensor(band_wavelengths(cfg, bands)), gsd)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert torch.allclose(tokens[:, 1:], ref["tokens"], atol=1e-5)
        assert torch.allclose(model(x), ref["cls"], atol=1e-5)
        assert torch.allclose(tokens[:, 1:].mean(1), ref["pooled"], atol=1e-5)
    again, _ = load_timm(out)
    assert torch.allclose(again(x), ref["cls"], atol=1e-5)


def test_band_wavelengths(export_dir):
    cfg = json.loads((export_dir / "config.json").read_text())
    assert band_wavelengths(cfg, ["B08", "B8A", "B10", "VV", "665nm"]) == pytest.approx(
        [832.8, 864.7, 1373.5, 40000.0, 665.0])
    with pytest.raises(ExportError, match="band 'red': unknown name"):
        band_wavelengths(cfg, ["red"])


def test_to_timm_refuses_odd_sizes(export_dir):
    encoder, _ = load_exported(export_dir)
    with pytest.raises(ExportError, match="not a multiple of the patch size 4"):
        to_timm(encoder, [665.0], 18, 10.0)


def test_cli_writes_timm_from_an_export(export_dir):
    r = subprocess.run([sys.executable, "-m", "pretrain.export", str(export_dir), str(export_dir),
                        "--timm-bands", "B02,B03,B04", "--timm-img-size", "32"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (export_dir / "timm" / "model.safetensors").is_file() and "timm VisionTransformer" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pretrain.export", str(export_dir), str(export_dir)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already an export" in r.stderr


def test_loading_is_safe_and_errors_are_clear(export_dir, tmp_path):
    encoder, cfg = load_exported(export_dir / "model.safetensors")      # a file inside the folder works too
    assert cfg["steps"] == 5 and not encoder.training
    # a pickle checkpoint is never unpickled: it is not an export
    pt = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(1)}, pt)
    with pytest.raises(ExportError, match="model.pt: not an eofm export"):
        load_exported(pt)
    # a damaged weights file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((export_dir / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ExportError, match="model.safetensors: not a readable safetensors file"):
        load_exported(bad)
    # weights of another architecture
    cfg["model_args"]["depth"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((export_dir / "model.safetensors").read_bytes())
    with pytest.raises(ExportError, match="weights do not match.*missing.*blocks.2"):
        load_exported(bad)
    # a config without the export's keys
    (bad / "config.json").write_text(json.dumps({"format": "eofm-export", "format_version": 1}))
    with pytest.raises(ExportError, match="no 'arch'"):
        load_exported(bad)


def test_model_card_documents_loading(export_dir):
    card = (export_dir / "README.md").read_text()
    for text in ("load_exported", "MultiLevelBackbone", "timm.create_model", "--timm-bands", "B08", "832.8"):
        assert text in card
