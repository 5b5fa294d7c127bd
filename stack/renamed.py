"""Everything that was renamed, in one place: old words a user may still type, and what replaced them. Each is
refused with one line naming the new word (stack.config for keys and sections, stack.paths for config folders,
stack.cli for verbs, stack.backbones.pooling for pooling names). Files saved by earlier versions that still load
(a blend or bundle saved before tasks: FB3) are read where they are decoded, with a comment naming this module.

    from stack.renamed import KEYS
    KEYS["FrozenConfig"]["dtype"]            # "'precision'"
"""

from pathlib import Path

# params.yaml sections of 0.1
SECTIONS = {"embed": "`embed.models` is now the top-level `members` list (names under configs/members/)",
            "train": "`train.models` is now the top-level `members` list (fine-tuned members have kind: finetune)"}

# config folders of 0.1
CONFIG_DIRS = {Path("configs/models"): "frozen members and backbones", Path("configs/train"): "fine-tuned members"}

# keys, by the config class that reads them
KEYS = {
    "FrozenConfig": {"dtype": "'precision'", "path": "'backbone.path' (in configs/backbones/)",
                     "packaged": "'backbone.packaged' (in configs/backbones/)"},
    "TrainConfig": {"amp": "'precision' (auto | bf16 | fp16 | fp32)"},
    "BackboneConfig": {"backbone": "'hub' (the Hugging Face id)"},
}

# pooling names
POOLINGS = {"weighted_layer": "`layer_mode: weighted` with `layers: []`",
            "concat_last4": "`layers: [-4, -3, -2, -1]` with `layer_mode: concat`"}

# CLI verbs of 0.1 and the member names they took
VERBS = {"embed": "frozen members", "train": "fine-tuned members"}
TRAIN_NAMES = {"deberta-v3-xsmall": "xsmall", "deberta-v3-small": "small", "deberta-v3-base": "base",
               "deberta-v3-large": "large", "deberta-v2-xlarge": "v2-xlarge"}
FROZEN_NAMES = {"xsmall": "xsmall-frozen", "small": "small-frozen", "base": "base-frozen", "large": "large-frozen",
                "v2-xlarge": "v2-xlarge-frozen"}


def verb_hint(verb: str, name: str) -> str:
    """The line for an old verb (``stack embed NAME`` / ``stack train NAME``)."""
    new = (TRAIN_NAMES if verb == "train" else FROZEN_NAMES).get(name, name)
    return f"`stack {verb}` is now `stack fit <member>` for {VERBS[verb]} too: run `stack fit {new}`"
