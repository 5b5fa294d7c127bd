"""The fine-tuning loop a ``kind: finetune`` member calls (``stack fit NAME``): backbone + pooling + head per fold.

config (TrainConfig) -> model (Regressor) -> optim (LLRD, schedules) + regularizers (EMA, SWA, FGM, AWP)
-> loop (one fold) -> store (fold artifacts). stack.members.finetune runs all folds, resumes and writes the
cache. ``dist`` holds every rank/world-size decision.

    from stack.config import load_params
    from stack.members import fit_member
    fit_member("minilm-ft", load_params(), ["epochs=1"])
"""
