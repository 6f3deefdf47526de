"""The paper's ablations (sections 3 and 4), each one documented change from configs/imagenet.py.

Every module here has `apply(config)`, which makes its one change to any config,
and `get_config()`, the paper's recipe with that change. configs/paper/digits.py
applies the same changes to the digits quick start. docs/reproduce.md lists the
claim each one tests, the commands and the numbers.
"""

# Module names, in the order of docs/reproduce.md.
ABLATIONS = ('one_tower', 'no_lrn', 'non_overlapping_pool', 'no_augmentation', 'no_lighting',
             'no_dropout')
