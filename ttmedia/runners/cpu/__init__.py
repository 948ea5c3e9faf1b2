"""Real models on the CPU, through the runner SDK (the `cpu` extra: pip install 'ttmedia[cpu]').

Each module imports its heavy libraries (torch, CTranslate2, transformers) inside the runner's
methods: the server process imports these modules too, for `load_tokenizer` and the declared
attributes, and must not pay for torch to do so.

Each runner lists the import names it needs in `requires` (the SDK's way): a model whose
packages are missing is `failed` at start-up, and the default models fall back to a simulator.
"""
