"""Weight converters from PyTorch, run as ``jaxswin-convert timm|twin`` (or ``python -m
jaxswin.convert``; the repository's convert/timm_to_flax.py and convert/twin_to_flax.py are the
same commands). They need the [torch] extra and import torch (and timm) only when run:

- :mod:`jaxswin.convert.from_timm`: timm SwinV2 weights (hub, cache or a state-dict file) ->
  the encoder file ``--pretrained`` takes;
- :mod:`jaxswin.convert.from_twin`: a state dict of the PyTorch twin of the paper's model
  (experiments/torch_twin.py in the repository) -> a run folder jaxswin.predict reads. It maps
  names and layouts only; the twin's code itself is not needed.
"""
