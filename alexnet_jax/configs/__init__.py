"""The shipped configs: `imagenet` (the paper), `digits` (the quick start), `paper/` (ablations).

Each is an ml_collections config file with `get_config()`. Every command that takes
`--config` accepts a shipped config by name, without a checkout: `--config=digits`,
`--config=paper/one_tower`, `--config=paper/digits:no_lrn` (core/cli.py resolves the name
to the file here). In a checkout, `configs/NAME.py` points at the same file.
"""
