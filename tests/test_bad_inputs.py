"""The catalogue of bad inputs: each gives one clear line naming the file/row/key, exit code 2, no
traceback, no partial output, and leaves every previously written file byte-identical.

A good pipeline is built once per module; each case runs in a fresh copy of it.
"""

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from stack.cli import app

from conftest import ROOT, edit_yaml, make_project, working_copy

runner = CliRunner()
OUTPUTS = ("cache/folds.parquet", "cache/minilm/train.parquet", "cache/minilm/test.parquet", "submission.csv",
           "metrics/cv.json", "models/minilm/member.json", "models/minilm/heads.json", "models/minilm/heads.safetensors",
           "models/blend/blender.json", "models/blend/blender.safetensors")


def invoke(*args):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert_dir):
    import os

    root = make_project(tmp_path_factory.mktemp("built"), tiny_bert_dir)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for args in (["folds"], ["fit", "minilm"], ["blend"]):
            assert invoke(*args).exit_code == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def proj(built, tmp_path, monkeypatch):
    return working_copy(built, tmp_path, monkeypatch)


def edit_csv(path, fn):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


TRAIN, TEST, SAMPLE = "data/fb3/train.csv", "data/fb3/test.csv", "data/fb3/sample_submission.csv"


def set_cell(col, row, value):
    def fn(df):
        df.loc[row, col] = value
        return df
    return fn


def truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def other_folds():
    edit_yaml("params.yaml", lambda p: p["folds"].update(seed=7))
    assert invoke("folds").exit_code == 0


def other_data():
    edit_csv(TRAIN, set_cell("full_text", 0, "A different essay."))
    assert invoke("folds").exit_code == 0


def no_weights(proj):
    weights = proj / "noweights"
    weights.mkdir()
    enc = Path(yaml.safe_load(Path(BACKBONE).read_text())["path"])
    shutil.copy(enc / "config.json", weights / "config.json")
    edit_yaml(BACKBONE, lambda c: c.update(path=str(weights)))


def old_layout(name):
    Path("configs/models").mkdir()
    Path(f"configs/models/{name}.yaml").write_text("backbone: roberta-base\nmax_len: 512\n")


MEMBER, BACKBONE, FT = "configs/members/minilm.yaml", "configs/backbones/minilm.yaml", "configs/members/minilm-ft.yaml"
PREDICT = ["predict", "--input", TEST, "--out", "scores.csv"]

# (case id, setup(proj), command, expected substring of the one-line error)
CASES = [
    ("missing-column", lambda p: edit_csv(TRAIN, lambda d: d.drop(columns=["grammar"])), ["folds"], "train.csv: missing column 'grammar'"),
    ("misspelled-column", lambda p: edit_csv(TRAIN, lambda d: d.rename(columns={"full_text": "fulltext"})), ["folds"], "missing column 'full_text'"),
    ("empty-essay", lambda p: edit_csv(TRAIN, set_cell("full_text", 3, "")), ["folds"], "row 4"),
    ("whitespace-essay", lambda p: edit_csv(TEST, set_cell("full_text", 1, "   \n ")), ["fit", "minilm"], "test.csv: row 2"),
    ("duplicate-id", lambda p: edit_csv(TRAIN, lambda d: pd.concat([d, d.iloc[:1]])), ["folds"], "duplicate text_id"),
    ("nan-score", lambda p: edit_csv(TRAIN, set_cell("syntax", 5, "")), ["folds"], "row 6"),
    ("score-out-of-range", lambda p: edit_csv(TRAIN, set_cell("conventions", 0, "6.0")), ["folds"], "conventions=6, outside [1, 5]"),
    ("non-utf8", lambda p: Path(TEST).write_bytes(Path(TEST).read_bytes().replace(b"the", b"th\xe9", 1)), ["fit", "minilm"], "test.csv: not UTF-8"),
    ("test-id-not-in-sample", lambda p: edit_csv(TEST, set_cell("text_id", 0, "NEWID")), ["blend"], "sample_submission.csv: text_id '0000C359D63E' is not in data/fb3/test.csv"),
    ("unknown-member", lambda p: None, ["fit", "robrta"], "unknown member 'robrta': no configs/members/robrta.yaml (known members: "),
    ("member-name-escapes", lambda p: None, ["fit", "../../etc/passwd"], "is not allowed"),
    ("unknown-blend-method", lambda p: None, ["blend", "--method", "ridgee"], "valid: "),
    ("config-typo-key", lambda p: edit_yaml(MEMBER, lambda c: c.update(polling="mean")), ["fit", "minilm"], "configs/members/minilm.yaml: unknown key 'polling'"),
    ("backbone-typo-key", lambda p: edit_yaml(BACKBONE, lambda c: c.update(hubb="org/m")), ["fit", "minilm"], "configs/backbones/minilm.yaml: unknown key 'hubb'"),
    ("set-backbone-typo-key", lambda p: None, ["fit", "minilm", "--set", "backbone.pth=/data/x"], "configs/backbones/minilm.yaml: unknown key 'pth'"),
    ("set-backbone-bad-folder", lambda p: None, ["fit", "minilm", "--set", "backbone.path=/nonexistent"], "configs/backbones/minilm.yaml: path '/nonexistent' has no config.json"),
    ("unknown-backbone", lambda p: edit_yaml(MEMBER, lambda c: c.update(backbone="robrta")), ["fit", "minilm"], "unknown backbone 'robrta'"),
    ("params-typo-key", lambda p: edit_yaml("params.yaml", lambda c: c["folds"].update(n_fold=3)), ["folds"], "unknown key 'n_fold'"),
    ("config-wrong-type", lambda p: edit_yaml(MEMBER, lambda c: c.update(batch_size="big")), ["fit", "minilm"], "key 'batch_size': expected int"),
    ("member-without-cache", lambda p: None, ["blend", "--models", "minilm,base"], "member 'base' has no cache"),
    ("cache-other-folds", lambda p: other_folds(), ["blend"], "cache/minilm: cache was written with other folds"),
    ("cache-other-data", lambda p: other_data(), ["blend"], "cache/minilm: cache was written with other essays"),
    ("truncated-parquet", lambda p: truncate("cache/minilm/train.parquet"), ["blend"], "cache/minilm/train.parquet: unreadable Parquet"),
    ("missing-weights", no_weights, ["fit", "minilm"], "cannot load"),
    ("missing-data-file", lambda p: Path(SAMPLE).unlink(), ["blend"], "sample_submission.csv: file not found"),
    ("unknown-features", lambda p: None, ["blend", "--features", "embeddings"], "unknown features 'embeddings'"),
    ("device-not-visible", lambda p: edit_yaml(MEMBER, lambda c: c.update(device="cuda:99")), ["fit", "minilm"], "minilm.yaml: device 'cuda:99', but"),
    ("fp16-on-the-cpu", lambda p: edit_yaml(MEMBER, lambda c: c.update(precision="fp16", device="cpu")), ["fit", "minilm"], "precision fp16 needs a CUDA device"),
    ("truncated-blender", lambda p: truncate("models/blend/blender.safetensors"), PREDICT, "models/blend/blender.safetensors: unreadable"),
    ("corrupt-blender-json", lambda p: Path("models/blend/blender.json").write_text("{"), PREDICT, "models/blend/blender.json: unreadable JSON; run `stack blend`"),
    ("truncated-heads", lambda p: truncate("models/minilm/heads.safetensors"), PREDICT, "models/minilm/heads.safetensors: unreadable"),
    # the task (params.yaml task:): its columns, scales and metric
    ("task-unknown-metric", lambda p: edit_yaml("params.yaml", lambda c: c["task"].update(metric="auc")), ["folds"], "params.yaml: task: metric 'auc' is not one of mcrmse, rmse, qwk"),
    ("task-keep-missing", lambda p: edit_yaml("params.yaml", lambda c: c["task"].update(keep=["grade"])), ["blend"], "train.csv: missing column 'grade' (task: keep)"),
    ("task-target-missing", lambda p: edit_yaml("params.yaml", lambda c: c["task"]["targets"].update(overall={"min": 1, "max": 5, "step": 0.5})), ["folds"], "train.csv: missing column 'overall'"),
    ("task-id-missing", lambda p: edit_yaml("params.yaml", lambda c: c["task"].update(id="essay_id")), ["folds"], "train.csv: missing column 'essay_id'"),
    ("task-non-numeric", lambda p: edit_csv(TRAIN, set_cell("cohesion", 2, "high")), ["folds"], "has a missing or non-numeric 'cohesion' score ('high')"),
    ("task-narrower-scale", lambda p: edit_yaml("params.yaml", lambda c: c["task"]["targets"]["syntax"].update(max=4)), ["folds"], "outside [1, 4] (the range params.yaml task: gives it)"),
    ("task-too-few-groups", lambda p: (edit_csv(TRAIN, lambda d: d.assign(prompt="p0")), edit_yaml("params.yaml", lambda c: c["folds"].update(group="prompt"))), ["folds"], "folds.group 'prompt' has 1 group, fewer than folds.n_folds=2; set n_folds to at most 1"),
    ("task-changed-since-fit", lambda p: (edit_yaml("params.yaml", lambda c: c["task"]["targets"]["syntax"].update(min=0)), invoke("folds")), ["blend"], "cache/minilm: cache was written with another task"),
    # names and files of earlier releases: one line naming what replaced them
    ("old-verb-embed", lambda p: None, ["embed", "minilm"], "`stack embed` is now `stack fit <member>` for frozen members too: run `stack fit minilm`"),
    ("old-verb-embed-deberta", lambda p: None, ["embed", "base", "--set", "batch_size=4"], "run `stack fit base-frozen`"),
    ("old-verb-train", lambda p: None, ["train", "deberta-v3-base"], "`stack train` is now `stack fit <member>` for fine-tuned members too: run `stack fit base`"),
    ("old-layout-config", lambda p: old_layout("roberta"), ["fit", "roberta"], "configs/models/roberta.yaml uses the old layout: frozen members and backbones now live in configs/members/"),
    ("params-embed-section", lambda p: edit_yaml("params.yaml", lambda c: c.update(embed={"models": ["minilm"]})), ["fit", "minilm"], "params.yaml: section 'embed' was renamed: `embed.models` is now the top-level `members` list"),
    ("params-train-section", lambda p: edit_yaml("params.yaml", lambda c: c.update(train={"models": ["base"]})), ["folds"], "section 'train' was renamed"),
    ("member-dtype-key", lambda p: edit_yaml(MEMBER, lambda c: c.update(dtype="fp32")), ["fit", "minilm"], "configs/members/minilm.yaml: key 'dtype' is now 'precision'"),
    ("member-amp-key", lambda p: edit_yaml(FT, lambda c: c.update(amp="fp32")), ["fit", "minilm-ft"], "configs/members/minilm-ft.yaml: key 'amp' is now 'precision'"),
]


@pytest.mark.parametrize("case, setup, command, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_damages_nothing(proj, case, setup, command, expected):
    setup(proj)
    before = {p: (proj / p).read_bytes() for p in OUTPUTS if (proj / p).exists()}
    result = invoke(*command)
    message = result.output.strip()
    assert result.exit_code == 2, message
    assert message.startswith("error: ") and "\n" not in message, message
    assert expected in message
    assert "Traceback" not in message
    assert before == {p: (proj / p).read_bytes() for p in before}
    leftovers = [p for p in proj.rglob(".*.tmp-*")]
    assert not leftovers and not (proj / "scores.csv").exists()


# members of earlier releases: configs/models/<name>.yaml (`stack embed`, the old kind) and configs/train/<name>.yaml
# (`stack train`, fine-tuned); the new command an old one names must fit a member of the same kind
OLD_EMBED = {"minilm": "frozen", "mpnet": "frozen", "tfidf": "tfidf", "features": "features", "grammar": "grammar",
             "xsmall": "frozen", "small": "frozen", "base": "frozen", "large": "frozen", "v2-xlarge": "frozen"}
OLD_TRAIN = ("minilm-ft", "deberta-v3-xsmall", "deberta-v3-small", "deberta-v3-base", "deberta-v3-large", "deberta-v2-xlarge")
OLD_COMMANDS = [("embed", name, kind) for name, kind in OLD_EMBED.items()] + [("train", name, "finetune") for name in OLD_TRAIN]


@pytest.mark.parametrize("verb, old, kind", OLD_COMMANDS)
def test_an_old_command_names_a_member_of_the_same_kind(verb, old, kind, monkeypatch):
    from stack.members.registry import load_member

    def read_kind(name):
        return load_member(name).kind.name

    monkeypatch.chdir(ROOT)  # the repository's own configs
    result = invoke(verb, old)
    assert result.exit_code == 2 and "\n" not in result.output.strip(), result.output
    new = re.search(r"run `stack fit ([^`]+)`", result.output).group(1)
    assert Path(f"configs/members/{new}.yaml").is_file(), f"`stack {verb} {old}` suggests `stack fit {new}`"
    assert read_kind(new) == kind, f"`stack {verb} {old}` suggests `stack fit {new}`, a {read_kind(new)} member"


def test_extra_columns_and_a_20000_token_essay_are_fine(proj):
    long_essay = " ".join(["The students learned many new words at school every day."] * 1800)
    edit_csv(TEST, lambda d: d.assign(extra="x"))
    edit_csv(TEST, set_cell("full_text", 0, long_essay))
    for command in (["fit", "minilm"], ["blend"]):
        result = invoke(*command)
        assert result.exit_code == 0, result.output
    sub = pd.read_csv("submission.csv")
    assert sub.notna().all().all() and len(sub) == 3


def test_off_grid_scores_are_kept_with_a_warning(proj):
    edit_csv(TRAIN, set_cell("grammar", 0, "3.25"))
    with pytest.warns(UserWarning, match="off the 0.5 grid"):
        result = invoke("folds")
    assert result.exit_code == 0
