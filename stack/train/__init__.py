"""Fine-tuned stage one (``stack train NAME``): backbone + pooling + head trained per fold.

config (TrainConfig) -> model (Regressor) -> optim (LLRD, schedules) + regularizers (EMA, SWA, FGM, AWP)
-> loop (one fold) -> run (all folds, resume, cache). ``dist`` holds every rank/world-size decision.

    from stack.config import load_params
    from stack.train.run import run_train
    run_train("minilm-ft", load_params(), ["epochs=1"])
"""
