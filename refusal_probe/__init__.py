"""refusal-probe: find, measure and audit the refusal mechanism of language models.

The subpackages follow the data flow: model -> prompts -> activations -> direction ->
interventions -> scoring -> selection -> causal -> patching -> monitor -> stats (verdicts) ->
audit -> report, with the pytest plugin on top.

The names below load on first use (``lazy_loader``, from ``__init__.pyi``): ``python -m
refusal_probe``, the pytest plugin and ``import refusal_probe.errors`` no longer import torch,
TransformerLens and every subpackage first.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)

__version__ = "0.1.0"
