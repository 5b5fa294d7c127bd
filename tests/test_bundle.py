"""`stack export` bundles: scored anywhere like `stack predict` in the repository, refused when tampered with,
and never unpickled."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stack.cli import app
from stack.errors import StackError

from conftest import DATA, TARGETS, edit_yaml, make_project, ok

runner = CliRunner()
NEW = pd.DataFrame({"text_id": ["b", "a"], "full_text": ["I like school. It is fun.\n\nMy teacher are nice.",
                                                         "Dogs is good pet because they loyal."]})



@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_bert_dir):
    """A project fitted with a frozen, a fine-tuned, a TF-IDF and a statistics member, blended; the tiny encoder
    is a copy the test may delete."""
    root = tmp_path_factory.mktemp("bundle")
    encoder = shutil.copytree(tiny_bert_dir, root / "encoder")
    project = make_project(root / "project", encoder, members=("minilm", "minilm-ft", "tfidf", "features"))
    edit_yaml(project / "configs" / "members" / "tfidf.yaml", max_features=2000, min_df=1)
    edit_yaml(project / "configs" / "members" / "minilm-ft.yaml", epochs=1, max_len=64, precision="fp32")
    cwd = os.getcwd()
    os.chdir(project)
    try:
        ok("folds")
        for member in ("minilm", "minilm-ft", "tfidf", "features"):
            ok("fit", member)
        ok("blend")
        ok("predict", "--input", "data/fb3/test.csv", "--out", "repo_test.csv")
        NEW.to_csv("new.csv", index=False)
        ok("predict", "--input", "new.csv", "--out", "repo_new.csv")
        ok("export", str(root / "bundle"))
    finally:
        os.chdir(cwd)
    return root


def scores(path) -> np.ndarray:
    return pd.read_csv(path)[list(TARGETS)].to_numpy()


def test_bundle_scores_like_the_repository_in_a_fresh_process_without_it(fitted, tmp_path):
    away = shutil.copytree(fitted / "bundle", tmp_path / "elsewhere" / "bundle")
    NEW.to_csv(tmp_path / "elsewhere" / "new.csv", index=False)
    shutil.copy(DATA / "test.csv", tmp_path / "elsewhere" / "test.csv")
    gone = fitted / "encoder.moved"
    (fitted / "encoder").rename(gone)  # the weights the members were fitted from are no longer there
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
        stack = str(Path(sys.executable).parent / "stack")
        cli = subprocess.run([stack, "predict", "--bundle", "bundle", "--input", "new.csv", "--out", "cli.csv"],
                             cwd=away.parent, env=env, capture_output=True, text=True)
        assert cli.returncode == 0, cli.stderr
        code = ("from stack import Scorer; import pandas as pd; s = Scorer.load('bundle'); "
                "df = pd.read_csv('new.csv'); df['teacher'] = 'x'; s.score(df).to_csv('api_df.csv', index=False); "
                "s.score(df['full_text'].tolist()).to_csv('api_list.csv', index=False); "
                "s.score(pd.read_csv('test.csv')).to_csv('api_test.csv', index=False)")
        api = subprocess.run([sys.executable, "-c", code], cwd=away.parent, env=env, capture_output=True, text=True)
        assert api.returncode == 0, api.stderr
    finally:
        gone.rename(fitted / "encoder")
    here = away.parent
    np.testing.assert_allclose(scores(here / "cli.csv"), scores(fitted / "project" / "repo_new.csv"), atol=1e-6, rtol=0)
    np.testing.assert_allclose(scores(here / "api_df.csv"), scores(here / "cli.csv"), atol=1e-6, rtol=0)
    np.testing.assert_allclose(scores(here / "api_list.csv"), scores(here / "cli.csv"), atol=1e-6, rtol=0)
    assert list(pd.read_csv(here / "api_df.csv")["text_id"]) == ["b", "a"]
    assert list(pd.read_csv(here / "api_list.csv")["text_id"].astype(str)) == ["0", "1"]
    sub = pd.read_csv(fitted / "project" / "submission.csv").set_index("text_id")
    test = pd.read_csv(here / "api_test.csv").set_index("text_id").loc[sub.index]
    np.testing.assert_allclose(test.to_numpy(), sub.to_numpy(), atol=1e-6, rtol=0)


def test_slim_bundle_averages_linear_heads_and_keep_folds_keeps_them(fitted, monkeypatch, tmp_path):
    from stack.scorer import Scorer

    slim = json.loads((fitted / "bundle" / "members" / "minilm" / "heads.json").read_text())
    assert slim["info"]["folds"] == 1
    assert not list((fitted / "bundle" / "members" / "minilm-ft").glob("fold*/outputs.safetensors"))
    monkeypatch.chdir(fitted / "project")
    ok("export", str(tmp_path / "full"), "--keep-folds")
    full = json.loads((tmp_path / "full" / "members" / "minilm" / "heads.json").read_text())
    assert full["info"]["folds"] == 2
    assert len(list((tmp_path / "full" / "members" / "minilm-ft").glob("fold*/outputs.safetensors"))) == 2
    a, b = Scorer.load(fitted / "bundle").score(NEW), Scorer.load(tmp_path / "full").score(NEW)
    np.testing.assert_allclose(a[list(TARGETS)].to_numpy(), b[list(TARGETS)].to_numpy(), atol=1e-9, rtol=0)


@pytest.fixture
def copy(fitted, tmp_path):
    return Path(shutil.copytree(fitted / "bundle", tmp_path / "b"))


def refused(folder, match: str):
    from stack.scorer import Scorer

    with pytest.raises(StackError, match=match) as e:
        Scorer.load(folder)
    assert "\n" not in str(e.value)


def test_tampered_truncated_missing_and_planted_files_are_refused_by_name(copy):
    heads = copy / "members" / "minilm" / "heads.safetensors"
    data = heads.read_bytes()
    heads.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    refused(copy, r"members/minilm/heads.safetensors: differs from manifest.json")
    heads.write_bytes(data[: len(data) // 2])
    refused(copy, r"members/minilm/heads.safetensors: differs from manifest.json")
    heads.write_bytes(pickle.dumps({"heads": "a payload"}))
    refused(copy, r"members/minilm/heads.safetensors: differs from manifest.json")
    heads.write_bytes(data)
    (copy / "members" / "minilm" / "model.pkl").write_bytes(pickle.dumps(print))
    refused(copy, r"members/minilm/model.pkl: not part of this bundle")
    (copy / "members" / "minilm" / "model.pkl").unlink()
    shutil.rmtree(copy / "members" / "tfidf")
    refused(copy, r"members/tfidf/.*: missing \(listed in manifest.json\)")


def test_a_bundle_of_an_older_format_is_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "stack-bundle/0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    refused(copy, r"bundle format 'stack-bundle/0', this stack reads 'stack-bundle/1' and 'stack-bundle/2'; re-export")


def _as_made_before_tasks(folder: Path) -> None:
    """Rewrite a bundle as `stack export` wrote it before tasks: format 1, no task in the manifest, the blend saved
    in its format 2 (``round_to_grid``, a layout without prediction columns, no task), every hash updated."""
    from stack.cache import sha256

    blend = folder / "blend" / "blender.json"
    doc = json.loads(blend.read_text())
    saved = doc["tree"]["state"]
    grid = saved.pop("grid")
    saved.pop("thresholds"), saved.pop("task_record")
    saved["round_to_grid"], saved["format"] = grid == "round", 2
    saved["layout"]["state"].pop("pred_cols")
    blend.write_text(json.dumps(doc))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format"] = "stack-bundle/1"
    manifest.pop("task")
    manifest["files"]["blend/blender.json"] = {"sha256": sha256(blend), "bytes": blend.stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_bundle_made_before_tasks_still_loads_and_scores_as_fb3(copy, fitted):
    from stack.scorer import Scorer

    new = Scorer.load(fitted / "bundle").score(NEW)
    _as_made_before_tasks(copy)
    old = Scorer.load(copy)
    assert old.task.is_fb3() and old.blend.grid == "none"
    pd.testing.assert_frame_equal(old.score(NEW), new)


def test_loading_and_scoring_a_bundle_never_unpickles(copy, monkeypatch):
    import torch

    from stack.scorer import Scorer

    def no_pickle(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, no_pickle)
    out = Scorer.load(copy).score(NEW)
    assert list(out.columns) == ["text_id", *TARGETS] and np.isfinite(out[list(TARGETS)].to_numpy()).all()


@pytest.mark.parametrize("bad, match", [
    (NEW.drop(columns="full_text"), "missing column 'full_text'"),
    (pd.concat([NEW, NEW]), "duplicate text_id 'b'"),
    (NEW.assign(full_text=["  ", "x"]), r"row 1 \(text_id=b\) has an empty full_text"),
])
def test_scorer_validates_its_input_like_the_cli(fitted, bad, match):
    from stack.scorer import Scorer

    with pytest.raises(StackError, match=match):
        Scorer.load(fitted / "bundle").score(bad)


def test_scoring_no_essays_returns_an_empty_frame_and_a_header_only_csv_is_one_line(fitted, tmp_path):
    from stack.scorer import Scorer

    scorer = Scorer.load(fitted / "bundle")
    for nothing in ([], NEW.iloc[:0]):
        out = scorer.score(nothing)
        assert list(out.columns) == ["text_id", *TARGETS] and len(out) == 0
    NEW.iloc[:0].to_csv(tmp_path / "empty.csv", index=False)
    result = runner.invoke(app, ["predict", "--bundle", str(fitted / "bundle"), "--input", str(tmp_path / "empty.csv"),
                                 "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 2 and "empty.csv: no essays (a header and no rows)" in result.output
    assert not (tmp_path / "out.csv").exists()


def test_a_manifest_naming_files_outside_the_bundle_and_links_are_refused(copy, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    manifest = json.loads((copy / "manifest.json").read_text())
    for rel in ("../secret.txt", str(outside)):
        bad = {**manifest, "files": {**manifest["files"], rel: {"sha256": "0" * 64, "bytes": 1}}}
        (copy / "manifest.json").write_text(json.dumps(bad))
        refused(copy, "is outside the bundle")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    readme = copy / "README.md"
    readme.unlink()
    readme.symlink_to(outside)
    refused(copy, "README.md: a link, not a file of the bundle")


def test_a_bundled_member_never_reaches_the_hub_or_weights_outside_it(copy):
    member = copy / "members" / "minilm" / "member.json"
    meta = json.loads(member.read_text())
    meta["config_json"]["backbone"]["path"] = "/elsewhere/weights"
    member.write_text(json.dumps(meta))
    manifest = json.loads((copy / "manifest.json").read_text())
    from stack.cache import sha256

    manifest["files"]["members/minilm/member.json"] = {"sha256": sha256(member), "bytes": member.stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    refused(copy, "backbone path '/elsewhere/weights' is outside the bundle")


def test_intervals_survive_export_and_load(fitted, monkeypatch):
    from stack.scorer import Scorer

    monkeypatch.chdir(fitted / "project")
    ok("predict", "--input", "new.csv", "--out", "repo_iv.csv", "--interval", "0.8")
    repo = pd.read_csv(fitted / "project" / "repo_iv.csv", dtype={"text_id": str})
    away = Scorer.load(fitted / "bundle").score(NEW, interval=0.8)
    assert list(away.columns) == list(repo.columns) and "cohesion_lo" in away.columns
    np.testing.assert_allclose(away.drop(columns="text_id").to_numpy(), repo.drop(columns="text_id").to_numpy(),
                               atol=1e-6)
