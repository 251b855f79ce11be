"""python -m jaxswin.models summary [--preset NAME] [--set model.key=value ...]

Prints the model's parameters per top-level part (encoders, fusion, decoder, head, ...) and the
total on the last line. Shapes are traced abstractly, so full-size models cost no memory.
"""

from __future__ import annotations

import jax

from jaxswin import cli as cli_lib
from jaxswin import config, models
from jaxswin.errors import cli


# Top-level parts in data-flow order (with rgb_/aux_ prefixes where there are two).
PARTS = ("input_attention", "encoder", "fusion", "decoder", "head", "blend_logit")


def parameter_counts(model_cfg: config.ModelConfig) -> dict[str, int]:
    """Parameters per top-level submodule (or top-level parameter), in data-flow order."""
    module = models.build(model_cfg)
    shapes = jax.eval_shape(lambda key: models.init(module, model_cfg, key), jax.random.key(0))
    order = {name: [name.endswith(part) for part in PARTS].index(True) for name in shapes["params"]}
    return {
        name: sum(leaf.size for leaf in jax.tree.leaves(shapes["params"][name]))
        for name in sorted(order, key=lambda name: (order[name], not name.startswith("rgb_"), name))
    }


@cli
def main(argv=None):
    parser = cli_lib.parser("jaxswin.models", __doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="parameter count per part of the model")
    config.add_arguments(summary)
    args = parser.parse_args(argv)
    cfg = config.from_args(args)
    m = cfg.model
    counts = parameter_counts(m)
    print(f"{cfg.name}: arch {m.arch}, encoder {m.encoder}, fusion {m.fusion}, decoder {m.decoder}")
    width = max(map(len, counts))
    for name, count in counts.items():
        print(f"  {name:<{width}}  {count:>13,}")
    print(f"total {sum(counts.values()):,} parameters")


if __name__ == "__main__":
    main()
