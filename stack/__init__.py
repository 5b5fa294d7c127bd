"""stack: score English-language-learner essays on six analytic traits (FB3), stage one + stage two.

    make run            # folds -> embed@minilm -> blend -> submission.csv
    stack score submission.csv labels.csv
"""

__version__ = "0.1.0"
