"""Vision-language model side of optim: backends, model lifecycle, prompts, proposal parsing, training.

Nothing here imports torch at module import time except `vlm.worker` and `vlm.train`, which run in
their own processes.
"""
