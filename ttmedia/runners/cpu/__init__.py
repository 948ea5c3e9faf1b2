"""Real models on the CPU, through the runner SDK (the `cpu` extra: pip install 'ttmedia[cpu]').

Each module imports its heavy libraries (torch, CTranslate2, transformers) inside the runner's
methods: the server process imports these modules too, for `load_tokenizer` and the declared
attributes, and must not pay for torch to do so.
"""
