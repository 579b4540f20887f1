"""trm-kaggle: a pre-trained Tiny Recursive Model turned into an offline ARC Prize submission.

Stages, in the order the data flows:
    tasks -> encoding / augment -> model -> train -> vote -> submission,
with budget as the clock every stage obeys.
"""

__version__ = "0.1.0"
